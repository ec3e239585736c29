"""Synthetic persons and their registrations at institutions.

A *person* is one human (demographics, names, 身份证号, contact details); a
*registration* is that person's patient record at one institution (its own
MRN and FHIR id). About 2% of persons are registered at two institutions with
the same 身份证号 and name, as happens in real regional data, so record
linkage has something to find.

Chinese names come from a small table of characters paired with pinyin
(Faker's zh_CN names carry no romanisation, and a Chinese patient at an
international clinic has both forms); English names, streets, phones and
e-mail domains come from seeded Faker instances.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta

import numpy as np
from faker import Faker

from medllm_pipelines.lib.synth.determinism import child_seed, random_uuid
from medllm_pipelines.lib.synth.institutions import INSTITUTIONS, Institution

# Ages are computed against this date, never against the clock.
REFERENCE_DATE = date(2026, 1, 1)

# (province, city, district, 6-digit administrative division code): the first
# six digits of a 身份证号. Weighted towards Hubei, where the hospitals are.
REGIONS: tuple[tuple[str, str, str, str], ...] = (
    ("湖北省", "武汉市", "江岸区", "420102"),
    ("湖北省", "武汉市", "江汉区", "420103"),
    ("湖北省", "武汉市", "硚口区", "420104"),
    ("湖北省", "武汉市", "汉阳区", "420105"),
    ("湖北省", "武汉市", "武昌区", "420106"),
    ("湖北省", "武汉市", "洪山区", "420111"),
    ("湖北省", "黄石市", "黄石港区", "420202"),
    ("湖北省", "宜昌市", "西陵区", "420502"),
    ("湖北省", "襄阳市", "襄城区", "420602"),
    ("湖北省", "荆州市", "沙市区", "421002"),
    ("湖南省", "长沙市", "芙蓉区", "430102"),
    ("河南省", "郑州市", "中原区", "410102"),
    ("江西省", "南昌市", "东湖区", "360102"),
    ("安徽省", "合肥市", "瑶海区", "340102"),
    ("广东省", "广州市", "天河区", "440106"),
    ("北京市", "北京市", "东城区", "110101"),
    ("上海市", "上海市", "黄浦区", "310101"),
    ("四川省", "成都市", "锦江区", "510104"),
    ("浙江省", "杭州市", "上城区", "330102"),
    ("江苏省", "南京市", "玄武区", "320102"),
)
_REGION_WEIGHTS = np.array([4, 4, 3, 3, 4, 3, 1.5, 1.5, 1.5, 1.5, 1, 1, 1, 1, 1, 0.5, 0.5, 0.5, 0.5, 0.5])
_REGION_WEIGHTS = _REGION_WEIGHTS / _REGION_WEIGHTS.sum()

_SURNAMES: tuple[tuple[str, str], ...] = tuple(
    (pair.split(":")[0], pair.split(":")[1])
    for pair in (
        "王:Wang 李:Li 张:Zhang 刘:Liu 陈:Chen 杨:Yang 黄:Huang 赵:Zhao 吴:Wu 周:Zhou 徐:Xu 孙:Sun "
        "马:Ma 朱:Zhu 胡:Hu 郭:Guo 何:He 高:Gao 林:Lin 罗:Luo 郑:Zheng 梁:Liang 谢:Xie 宋:Song "
        "唐:Tang 许:Xu 韩:Han 冯:Feng 邓:Deng 曹:Cao 彭:Peng 曾:Zeng 肖:Xiao 田:Tian 董:Dong "
        "袁:Yuan 潘:Pan 于:Yu 蒋:Jiang 蔡:Cai 余:Yu 杜:Du 叶:Ye 程:Cheng 苏:Su 魏:Wei 吕:Lyu "
        "丁:Ding 任:Ren 沈:Shen 姚:Yao 卢:Lu 姜:Jiang 崔:Cui 钟:Zhong 谭:Tan 陆:Lu 汪:Wang "
        "范:Fan 金:Jin 石:Shi 廖:Liao 贾:Jia 夏:Xia 付:Fu 方:Fang 白:Bai 邹:Zou 孟:Meng 熊:Xiong "
        "秦:Qin 邱:Qiu 江:Jiang 尹:Yin 薛:Xue 段:Duan 雷:Lei 侯:Hou 龙:Long 史:Shi 陶:Tao "
        "黎:Li 贺:He 顾:Gu 毛:Mao 郝:Hao 龚:Gong 邵:Shao 万:Wan 钱:Qian 严:Yan 戴:Dai 孔:Kong"
    ).split()
)

_GIVEN_MALE: tuple[tuple[str, str], ...] = tuple(
    (pair.split(":")[0], pair.split(":")[1])
    for pair in (
        "伟:wei 强:qiang 磊:lei 军:jun 洋:yang 勇:yong 杰:jie 涛:tao 明:ming 超:chao 斌:bin "
        "辉:hui 鹏:peng 华:hua 飞:fei 刚:gang 建:jian 国:guo 平:ping 志:zhi 海:hai 波:bo 峰:feng "
        "浩:hao 宇:yu 文:wen 博:bo 东:dong 亮:liang 成:cheng 俊:jun 晨:chen 凯:kai 毅:yi 兵:bing "
        "庆:qing 德:de 荣:rong 振:zhen 鑫:xin 帆:fan 昊:hao 轩:xuan 立:li 新:xin 卫:wei 忠:zhong"
    ).split()
)

_GIVEN_FEMALE: tuple[tuple[str, str], ...] = tuple(
    (pair.split(":")[0], pair.split(":")[1])
    for pair in (
        "芳:fang 娜:na 敏:min 静:jing 丽:li 艳:yan 娟:juan 霞:xia 秀:xiu 英:ying 玲:ling 桂:gui "
        "兰:lan 萍:ping 红:hong 梅:mei 琳:lin 燕:yan 雪:xue 婷:ting 慧:hui 颖:ying 洁:jie 佳:jia "
        "欣:xin 悦:yue 倩:qian 莉:li 淑:shu 珍:zhen 琴:qin 云:yun 凤:feng 蓉:rong 瑶:yao 晶:jing "
        "璐:lu 露:lu 思:si 雨:yu 诗:shi 晓:xiao 文:wen 春:chun 月:yue 巧:qiao 丹:dan 妍:yan"
    ).split()
)

# GB 11643-1999: ISO 7064 MOD 11-2 weights and check characters.
_RID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_RID_CHECK = "10X98765432"


def resident_id_check_digit(first17: str) -> str:
    """Check character of a 身份证号 (GB 11643-1999, ISO 7064 MOD 11-2)."""
    if len(first17) != 17 or not first17.isdigit():
        raise ValueError("a resident id body is 17 digits")
    total = sum(int(d) * w for d, w in zip(first17, _RID_WEIGHTS, strict=True))
    return _RID_CHECK[total % 11]


def make_resident_id(region_code: str, birth_date: date, sequence: int) -> str:
    """An 18-character 身份证号; ``sequence`` parity encodes sex (odd = male)."""
    body = f"{region_code}{birth_date:%Y%m%d}{sequence:03d}"
    return body + resident_id_check_digit(body)


def is_valid_resident_id(value: str) -> bool:
    """Whether ``value`` is an 18-character 身份证号 with a correct check character."""
    if len(value) != 18 or not value[:17].isdigit():
        return False
    return resident_id_check_digit(value[:17]) == value[17].upper()


@dataclass(frozen=True)
class Address:
    line: str
    district: str | None
    city: str
    state: str
    postal_code: str | None
    country: str
    text: str


@dataclass(frozen=True)
class Person:
    """One synthetic human. Every string field here is a direct identifier."""

    index: int
    language: str  # "zh" | "en"
    sex: str  # "male" | "female"
    birth_date: date
    family_zh: str | None
    given_zh: str | None
    family_en: str
    given_en: str
    resident_id: str | None  # Chinese persons only
    region_code: str | None
    phone: str
    email: str
    address: Address
    home_institution: str

    @property
    def name_zh(self) -> str | None:
        return f"{self.family_zh}{self.given_zh}" if self.family_zh else None

    @property
    def name_en(self) -> str:
        return f"{self.given_en} {self.family_en}"

    @property
    def display_name(self) -> str:
        """The name a site in this person's language would write."""
        return self.name_zh or self.name_en

    def age_years(self, on: date = REFERENCE_DATE) -> float:
        return (on - self.birth_date).days / 365.25


@dataclass(frozen=True)
class Registration:
    """A person's patient record at one institution."""

    person: Person
    institution: Institution
    ordinal: int  # 0-based position among the institution's patients
    mrn: str
    patient_id: str  # FHIR logical id (a UUID, not an identifier of the person)
    primary: bool  # False for the second registration of a cross-institution person


class Fakers:
    """Seeded Faker instances, one per locale (Faker keeps its own RNG)."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.zh = Faker("zh_CN")
        self.zh.seed_instance(child_seed(rng))
        self.en = Faker("en_US")
        self.en.seed_instance(child_seed(rng))


def draw_zh_name(rng: np.random.Generator, sex: str) -> tuple[str, str, str, str]:
    family, family_py = _SURNAMES[int(rng.integers(len(_SURNAMES)))]
    pool = _GIVEN_MALE if sex == "male" else _GIVEN_FEMALE
    n_chars = 2 if rng.random() < 0.7 else 1
    picks = [pool[int(rng.integers(len(pool)))] for _ in range(n_chars)]
    given = "".join(p[0] for p in picks)
    given_py = "".join(p[1] for p in picks).capitalize()
    return family, given, family_py, given_py


def _zh_address(rng: np.random.Generator, fakers: Fakers, region: tuple[str, str, str, str]) -> Address:
    province, city, district, _code = region
    street = fakers.zh.street_name()
    number = int(rng.integers(1, 400))
    line = f"{street}{number}号"
    if rng.random() < 0.6:
        building, unit, floor, door = (int(rng.integers(1, 30)), int(rng.integers(1, 6)), int(rng.integers(1, 30)),
                                       int(rng.integers(1, 6)))
        line += f"{building}栋{unit}单元{floor}0{door}室"
    state_city = province if province == city else f"{province}{city}"
    return Address(line=line, district=district, city=city, state=province, postal_code=None,
                   country="CN", text=f"{state_city}{district}{line}")


def _en_address(fakers: Fakers) -> Address:
    line = fakers.en.street_address()
    city = fakers.en.city()
    state = fakers.en.state_abbr()
    postal = fakers.en.postcode()
    return Address(line=line, district=None, city=city, state=state, postal_code=postal, country="US",
                   text=f"{line}, {city}, {state} {postal}")


def _birth_date(rng: np.random.Generator) -> date:
    age = float(np.clip(rng.normal(54.0, 15.0), 20.0, 92.0))
    return REFERENCE_DATE - timedelta(days=int(age * 365.25))


def draw_persons(n: int, rng: np.random.Generator, fakers: Fakers) -> list[Person]:
    """``n`` persons, each with a home institution drawn by the institutions' shares."""
    shares = np.array([inst.share for inst in INSTITUTIONS])
    persons: list[Person] = []
    for index in range(n):
        home = INSTITUTIONS[int(rng.choice(len(INSTITUTIONS), p=shares / shares.sum()))]
        language = "zh" if rng.random() < home.zh_patient_share else "en"
        sex = "male" if rng.random() < 0.5 else "female"
        birth = _birth_date(rng)
        if language == "zh":
            family, given, family_py, given_py = draw_zh_name(rng, sex)
            region = REGIONS[int(rng.choice(len(REGIONS), p=_REGION_WEIGHTS))]
            sequence = int(rng.integers(0, 500)) * 2 + (1 if sex == "male" else 0)
            resident_id = make_resident_id(region[3], birth, sequence)
            phone = fakers.zh.phone_number()
            local = f"{given_py}{family_py}".lower()
            email = f"{local}{int(rng.integers(10, 99))}@{fakers.zh.free_email_domain()}"
            persons.append(Person(index, language, sex, birth, family, given, family_py, given_py,
                                  resident_id, region[3], phone, email, _zh_address(rng, fakers, region),
                                  home.code))
        else:
            given_en = fakers.en.first_name_male() if sex == "male" else fakers.en.first_name_female()
            family_en = fakers.en.last_name()
            phone = fakers.en.phone_number()
            email = f"{given_en}.{family_en}{int(rng.integers(10, 99))}@{fakers.en.free_email_domain()}".lower()
            persons.append(Person(index, language, sex, birth, None, None, family_en, given_en, None, None,
                                  phone, email, _en_address(fakers), home.code))
    return persons


def choose_cross_registered(persons: list[Person], rng: np.random.Generator,
                            fraction: float = 0.02) -> dict[int, str]:
    """person index -> second institution, for ~``fraction`` of persons.

    Only Chinese persons are chosen: the link is their 身份证号, which foreign
    patients do not have.
    """
    candidates = [p.index for p in persons if p.resident_id is not None]
    wanted = min(len(candidates), int(round(fraction * len(persons))))
    if wanted == 0 and len(persons) >= 20 and candidates:
        wanted = 1
    chosen = sorted(int(i) for i in rng.choice(candidates, size=wanted, replace=False)) if wanted else []
    second: dict[int, str] = {}
    for index in chosen:
        others = [inst.code for inst in INSTITUTIONS if inst.code != persons[index].home_institution]
        second[index] = others[int(rng.integers(len(others)))]
    return second


def register(persons: list[Person], second: dict[int, str],
             rng: np.random.Generator) -> dict[str, list[Registration]]:
    """Registrations per institution, in person order, with unique MRNs."""
    by_code: dict[str, list[Registration]] = {inst.code: [] for inst in INSTITUTIONS}
    institutions = {inst.code: inst for inst in INSTITUTIONS}
    for person in persons:
        sites = [(person.home_institution, True)]
        if person.index in second:
            sites.append((second[person.index], False))
        for code, primary in sites:
            inst = institutions[code]
            ordinal = len(by_code[code])
            stride = 37
            number = inst.mrn_base + ordinal * stride + int(rng.integers(stride))
            mrn = f"{inst.mrn_prefix}{number:0{inst.mrn_width}d}"
            by_code[code].append(Registration(person, inst, ordinal, mrn, random_uuid(rng), primary))
    return by_code
