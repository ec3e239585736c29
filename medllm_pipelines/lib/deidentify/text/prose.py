"""Recognisers for identifiers written in prose rather than in fields.

What clinicians write by hand is not the layout of a template: names with no
cue ("seen by smith", "wife Mary", "Smith, John", "JS/mk"), dates in every
common form (3/14, 03/14/19, 'yy, Jan 5, Tuesday, in 1998), places (hospitals,
cities, states, countries, 北京协和医院, 湖北省武汉市), US and Taiwanese
identifiers, and Chinese names and relative dates in running text (老伴儿王秀英说,
去年十月, 本月20号). Each rule asks for evidence beyond a shape: a name list
*and* not a clinical word (``lexicon``), a cue, a checksum, a plausible
calendar value. Lists and cues live in ``recognisers.yaml`` and in installed
packages (Philter's name lists, Faker's country, state and Chinese city lists).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import lru_cache

from medllm_pipelines.lib.deidentify.text.lexicon import AMBIGUOUS, LISTED, NEVER, UNKNOWN, NameLexicon, name_lexicon
from medllm_pipelines.lib.deidentify.text.spans import (
    ADDRESS,
    DATE,
    ID_NUMBER,
    LOCATION,
    MRN,
    NAME,
    ORGANIZATION,
    PHONE,
    Span,
)

_HAN = "\u4e00-\u9fff\u3400-\u4dbf"
# street suffixes that after a name are more often something else (Smith Center, Jones Station)
_NOT_STREET_SUFFIXES = frozenset("""Close Rise Wynd Parade Esplanade Quay Wharf Yard Gate Hollow
Center Centers Club Station Mission Well Wells Rest Course Light Lights Common Commons
Run Walk Key Keys Spring Fall Falls Land Branch Bottom Point Estate Estates Camp Green Greens Field Fields Union Unions Mount
Forest Garden Gardens Village Villages Haven Manor Manors View Views Crossing Landing Lodge""".split())
# words after "born in", "lives in" that are no place
_NOT_PLACES = frozenset("""home house bed chair floor room unit clinic hospital hospice rehab care nursing baseline
pain good fair poor stable distress apartment shelter jail prison town city country state area village family order
addition general particular time place bed front back there here school college work group march april june july august
""".split())
# listed as names somewhere (He is a Chinese surname) but never one before "said" or in a list of names
_FUNCTION_WORDS = frozenset("""he she they it we you who this that there here then which what one someone everyone nobody
anyone all both each either neither none nothing something anything everything his her their our your its mom dad
will may can could would should might must shall did does do had has have was were are is also only just still now so
well yet but and or nor not no yes him me us them hers
gave gives states stated says said told asks asked went came took got""".split())  # verbs after a cue: "nurse gave"
_MONTH_FULL = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
               "November", "December")
_MONTH = (r"(?:Jan(?:uary)?|Feb(?:ruary)?|Mar(?:ch)?|Apr(?:il)?|May|June?|July?|Aug(?:ust)?|Sept?(?:ember)?|"
          r"Oct(?:ober)?|Nov(?:ember)?|Dec(?:ember)?)")
_MONTH_ANY = rf"(?:{_MONTH}|{_MONTH.upper()}|(?i:january|february|march|april|june|july|august|september|october|november|december))"
_WEEKDAY = r"(?:Mon|Tues?|Wed(?:nes)?|Thu(?:rs?)?|Fri|Sat(?:ur)?|Sun)(?:day)?s?"
_TIME = r"(?:,?\s*(?:at\s+|@\s*)?\d{1,2}:\d{2}(?::\d{2})?(?:\s*[AaPp]\.?[Mm]\.?)?|\s+\d{1,2}\s*[AaPp]\.?[Mm]\.?)"
_YEAR = r"(?:1[89]\d{2}|20\d{2})"
_ZH_NUM = "一二三四五六七八九十〇零两"
_LOWER_LATIN = re.compile("[a-z]")
_UPPER_ANY = "[A-ZÀ-ÖØ-ÞĀĂĄĆĈĊČĎĐĒĔĖĘĚĜĞĠĢĤĦĨĪĬĮİĴĶĹĻĽĿŁŃŅŇŊŌŎŐŒŔŖŘŚŜŞŠŢŤŦŨŪŬŮŰŲŴŶŸŹŻŽΑ-ΩА-Я]"
_HOSPITAL_STEMS = ("hospital", "medical", "clinic", "health", "cent", "infirm", "memorial", "hospice", "rehab", "care",
                   "children", "emergency", "surgery", "dialysis", "nursing", "sanatorium", "ed ")
_ORG_STEMS = ("inc", "llc", "l.l.c", "ltd", "corp", "company", "co.", "group", "bank", "insurance", "associates",
              "foundation", "institute", "university", "college", "school", "academy", "church", "pharmacy",
              "industries", "partners", "holdings", "technologies", "systems", "airlines", "motors", "labs",
              "laborator", "agency", "department")
_HOSPITAL_GATE = re.compile("|".join(map(re.escape, _HOSPITAL_STEMS)))
_ORG_GATE = re.compile("|".join(map(re.escape, _ORG_STEMS)))
_DATE_WORD_GATE = re.compile("Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec|JAN|FEB|MAR|APR|MAY|JUN|JUL|AUG|SEP|OCT|NOV|DEC"
                             "|day|DAY|jan|feb|mar|apr|jun|jul|aug|sep|oct|nov|dec")
# cheap substring tests before the cue regexes run (most notes have none of these words)
_IDENTIFIER_GATES: dict[str, tuple[str, ...]] = {
    "ssn": ("ssn", "ss#", "ss no", "social", "soc sec", "soc. sec"),
    "licence": ("licen", "dl", "passport", "lic"),
    "account": ("account", "acct", "a/c", "policy", "member", "subscriber", "group", "insurance", "medicare",
                "medicaid", "plan", "beneficiary", "certificate", "serial", "vin", "device"),
    "phone": ("phone", "tel", "mobile", "cell", "fax", "desk", "office", "home", "work", "call", "message", "text",
              "answering", "registered", "reach", "contact", "number", "pager", "beeper", "电话", "手机", "電話", "手機"),
    "pager": ("pager", "beeper", "pgr", "bpr", "pg", "fax", "ext"),
}
_IDENTIFIER_GATE_RES = {name: re.compile("|".join(map(re.escape, words))) for name, words in _IDENTIFIER_GATES.items()}


def _alternation(words: Iterable[str]) -> str:
    return "|".join(re.escape(w) for w in sorted(set(words), key=lambda w: (-len(w), w)))


def _luhn(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _iban_ok(value: str) -> bool:
    compact = value.replace(" ", "").upper()
    rearranged = compact[4:] + compact[:4]
    try:
        number = int("".join(str(int(ch, 36)) for ch in rearranged))
    except ValueError:
        return False
    return number % 97 == 1


_TW_LETTERS = {ch: v for ch, v in zip("ABCDEFGHJKLMNPQRSTUVXYWZIO", range(10, 36), strict=True)}


def is_valid_taiwan_id(value: str) -> bool:
    """Taiwan national ID (A123456789): letter for the region, 1/2 for sex, weighted check digit."""
    if not re.fullmatch(r"[A-Z][12]\d{8}", value):
        return False
    code = _TW_LETTERS[value[0]]
    digits = [code // 10, code % 10] + [int(ch) for ch in value[1:]]
    weights = [1, 9, 8, 7, 6, 5, 4, 3, 2, 1, 1]
    return sum(d * w for d, w in zip(digits, weights, strict=True)) % 10 == 0


def _valid_ssn(value: str) -> bool:
    digits = re.sub(r"\D", "", value)
    if len(digits) != 9:
        return False
    area, group, serial = digits[:3], digits[3:5], digits[5:]
    return area not in ("000", "666") and area[0] != "9" and group != "00" and serial != "0000"


@lru_cache(maxsize=1)
def _place_lists() -> dict[str, tuple[str, ...]]:
    """Countries and US states (Faker en/en_US), Chinese provinces and cities (Faker zh_CN/zh_TW)."""
    out: dict[str, tuple[str, ...]] = {"countries": (), "states": (), "states_abbr": (), "zh_places": ()}
    try:
        from faker.providers.address.en import Provider as English
        from faker.providers.address.en_US import Provider as American
        from faker.providers.address.zh_CN import Provider as Chinese
        from faker.providers.address.zh_TW import Provider as Taiwanese
    except ImportError:  # pragma: no cover - a pinned dependency
        return out
    countries = [c.split(" (")[0].replace(" the", "") for c in English.countries if "," not in c]
    out["countries"] = tuple(c for c in countries if len(c) > 3)
    out["states"] = tuple(American.states)
    out["states_abbr"] = tuple(a for a in American.states_abbr if a not in ("IN", "OR", "ME", "OK", "HI", "DE", "PA",
                                                                             "MD", "MS", "MA", "CO", "AL", "ID", "LA",
                                                                             "MO", "NE", "VA", "IA", "MT"))
    stems = {re.sub("(省|市|自治区|壮族自治区|回族自治区|维吾尔自治区|特别行政区)$", "", p) for p in Chinese.provinces}
    places = set(Chinese.cities) | stems | {c for c in getattr(Taiwanese, "cities", ()) if len(c) >= 2}
    out["zh_places"] = tuple(sorted(p for p in places if len(p) >= 2))
    return out


class ProseRecogniser:
    """Names, dates, places, organisations and identifiers in running text."""

    def __init__(self, raw: dict, lexicon: NameLexicon | None = None) -> None:
        self._lexicon = lexicon
        self.raw = raw
        titles = _alternation(raw["en_titles"])
        cues = list(raw["en_cues_before"]) + list(raw.get("en_relative_cues", []))
        title = rf"(?:(?:{titles})\.?|(?i:mr|mrs|ms|dr|prof)\.)\s+"
        cue = rf"(?:{_alternation({c.lower() for c in cues})})[:\s,?]+"
        self._title_scan = re.compile(rf"(?<![A-Za-z]){title}")
        self._cue_scan = re.compile(rf"(?<![a-z]){cue}")  # on the lower-cased text
        self._given = frozenset(w.lower() for w in str(raw.get("en_given_names", "")).split())
        # (no "^": Pattern.match(text, pos) anchors at pos, "^" would only match at the text's start)
        self._after_cue = re.compile(r"(?:,?[ \t]*(?:M\.D\.|MD|RN|D\.O\.|NP|PA-C|PhD|FACP|MBBS)(?![\w])|\s+\((?:MRN|DOB|PCP|"
                                     r"attending|resident)\b|,\s+(?:MD|RN|NP|PA|DO)\b"
                                     r"|\s+is\s+an?\s+\d{1,3}[\s\-]*(?:yo\b|y/o|y\.o\.|years?\b|-year|yr\b|month))")
        self._token = re.compile(r"[^\W\d_\u3400-\u9fff]+(?:['’\-][^\W\d_\u3400-\u9fff]+)*")
        self._lower_cue_scan = re.compile(
            rf"(?<![a-z])(?:(?:seen|signed|dictated|reviewed|examined|evaluated|cosigned|transcribed|"
            rf"discussed with|spoke with|spoke to|d/w)\s+(?:by\s+)?(?:dr\.?\s+)?|"
            rf"(?:{_alternation({c.lower() for c in raw.get('en_relative_cues', [])})})[:\s,]+|"
            rf"(?:{_alternation({t.lower() for t in raw['en_titles']})})\.?\s+)")  # on the lower-cased text
        self._signature = re.compile(r"(?m)(?:^|(?<=\s))([A-Z]{2,4})(?:\s?/\s?([a-z]{2,12}|[A-Z]{2,4})|:([a-z]{2,12}))"
                                     r"(?:/[a-z]{2,12}){0,3}(?=\s|$|[,.;])")  # JS/mk, XGT:holmes; not "CV: NSR"
        self._place_or_org_after = re.compile(r"\s+(?:Hospital|Clinic|Center|Centre|Medical|Health|Inc|LLC|Ltd|Corp|"
                                              r"University|College|School|Street|St\b|Road|Rd\b|Avenue|Ave\b|County|City|"
                                              r"Park|Lake|Beach|Valley|Heights|Springs)")
        suffixes = [w for w in str(raw.get("en_street_suffixes", "")).split() if (len(w) >= 4 or w in ("Ave", "Rd", "Blvd", "Ln", "Way"))
                    and w not in _NOT_STREET_SUFFIXES]
        self._street_after = re.compile(rf"[ \t]+(?:{_alternation(suffixes)})(?![\w\-])\.?") if suffixes else re.compile(r"(?!)")
        self._lower_middle = re.compile(r" [a-z]\.? (?=[a-z])")
        # a name told by what follows it: a verb of speech or living ("Graves said", "Kowalski lives in")
        self._name_verb = re.compile(r"(?:['’]s)?\s+(?:says|said|states|stated|reports|reported|denies|denied|shouted|asked|told|"
                                     r"explained|lives|lived|began|agrees|agreed|wants|wanted|feels|felt|spent|complains|"
                                     r"had given|has given|is very|was seen|was called|called back)\b")
        # a name before a possessive relative ("Smith's wife", "roberto's daughter")
        relatives = _alternation(w for w in raw.get("en_relative_cues", []) if w.isalpha() and w.islower() and len(w) > 2
                                 and w not in ("named", "per", "called", "friend", "partner"))
        self._possessive = re.compile(rf"(?<![\w'’])([^\W\d_][^\W\d_\-]+)['’]s\s+(?:{relatives})\b")
        # a doctor's dictation code after the degree ("FILBERT BRIGHT, M.D.    FB59")
        self._dictation_code = re.compile(r"(?:M\.D\.|\bMD|D\.O\.|\bRN|\bNP|PA-C)[ \t]+([A-Z]{2,3}\d{1,3})(?![\w])")
        # a list of names ("Smith, Jones and Brown"): joined by a comma or "and"
        self._list_gap = re.compile(r",\s?|,?\s+(?:and|&)\s+")
        # kinds of name told by the sentence around it (2.4.0)
        word = r"[^\W\d_][^\W\d_'’\-]*"
        # a dialogue line's speech: a quotation or a first/second person pronoun ("Amy: Remember me?")
        self._speech = re.compile(r"""[ \t]*(?:["“]|.*(?:\b(?:I|I'm|me|my|you|your|we)\b|[?!]))""")
        # a vocative: "Remember me, Mary?", "Don't go to town, Mark!"; "Mary, can I speak to you"
        self._vocative_after = re.compile(r"[ \t]*[?!]")
        self._vocative_start = re.compile(r",[ \t]+(?:(?:can|could|would|will|may|shall)[ \t]+(?:I|you|we)\b|please\b|"
                                          r"(?:do|did|are|have|were)[ \t]+you\b)")
        # greetings and sign-offs: "Hi Sarah,", "Thanks, John.", "Regards,\nX Y"
        self._greeting = re.compile(r"(?:(?<![^\W\d_])(?:Hi|Hello|Hey|Dear|Thanks|Thank you|Cheers|Regards|Best|Sincerely|"
                                    r"Best wishes|Kind regards|Warm regards|Yours|Yours truly|Love|Bye|Goodbye|Morning|"
                                    r"Good morning|Good afternoon|Good evening)),?[ \t]*\n?[ \t]*(?=[A-Z])")
        # a told name in lower case: "my name is borna", "name:    hyuuma t. maida", "call me višeslav", "named him Luís"
        self._told_name = re.compile(rf"(?i:(?<![^\W\d_])(?:my name is|name\s*:|names? (?:is|was)|call(?:s|ed)? me|"
                                     rf"(?:named|called|call|calls) (?:him|her|them))[ \t]+)"
                                     rf"({word}(?:[ \t]+[^\W\d_](?![^\W\d_])\.?)?(?:[ \t]+{word}){{0,2}})")
        # a creator before a work: "the Dratchev novel", "the codey m ross version"
        self._work = re.compile(rf"(?<![^\W\d_])[Tt]he[ \t]+({word}\.?(?:[ \t]+{word}\.?){{0,3}})[ \t]+(?:novel|novels|version|book|"
                                rf"books|film|films|movie|poem|song|songs|album|biography|memoir|recording|painting|"
                                rf"adaptation|remix|trilogy)(?![^\W\d_])")  # not "series", "story": the cxr series
        # a person's verb, strong enough to tell a name at a sentence's start ("Jacob lives on", "selma is from")
        self._person_verb = re.compile(r"[ \t]+(?:lives|lived|grew up|was born|began writing|began|spent|had given|has given|"
                                       r"is from|was from|comes from|came from)\b")
        self._line_start_word = re.compile(r"(?m)(?:^|(?<=[.!?][ \t])|(?<=[.!?][ \t]{2}))[ \t\"“]*([^\W\d_][^\W\d_'’\-]+)")
        # the other person of a telling: "said Carla to Sandra", "had given Angel his address"
        self._told_to = re.compile(r"(?:said|says|whispered|replied|shouted|wrote|explained)[ \t]+[A-Z][^\W\d_]+[ \t]+to[ \t]+$"
                                   r"|(?<![^\W\d_])(?:given|gave|told|showed|sent|handed|asked)[ \t]+$")
        self._possessive_after = re.compile(r"[ \t]+(?:his|her|their)\b")
        # a list of lower-case given names ("silvana, adam, christopher, kristina, chad and caleb")
        # (three commas at least: "owens, duran and oneal" is a firm's name as often as three people)
        self._lower_list = re.compile(r"(?<![^\W\d_,] )(?<![^\W\d_])([a-zà-ÿ][^\W\d_]+(?:,[ \t]*[a-zà-ÿ][^\W\d_]+){2,}"
                                      r"(?:,?[ \t]+(?:and|&)[ \t]+[a-zà-ÿ][^\W\d_]+)?)(?![^\W\d_])")
        self._username = re.compile(r"(?i:user(?:name)?|login|userid|user id)\s*[:=]\s*([A-Za-z][\w.\-]{2,30})")
        # dates
        self._numeric_date = re.compile(r"(?<![\d/.\-])(?<!\d:)(\d{1,2})([/\-.])(\d{1,2})\2(\d{4}|\d{2})(?![\d/\-]|\.\d)")
        self._month_day = re.compile(r"(?<![\d/.\-,])(?<!\d:)(\d{1,2})/(\d{1,2})(?![\d/]|\.\d|-\d)")
        self._month_year = re.compile(r"(?<![\d/.\-,])(?<!\d:)(0?[1-9]|1[0-2])/(3[2-9]|[4-9]\d|0\d|(?:19|20)\d{2})(?![\d/]|\.\d)")
        self._month_words = re.compile(
            rf"(?<![A-Za-z])(?:(?:{_WEEKDAY}),?\s+)?"
            rf"(?:(?:the\s+)?\d{{1,2}}(?:st|nd|rd|th)?\s+(?:of\s+)?{_MONTH_ANY}\.?(?:,?\s+(?:of\s+)?{_YEAR}|\s*'\d{{2}})?"
            rf"|{_MONTH_ANY}\.?(?:\s+(?:the\s+)?\d{{1,2}}(?:st|nd|rd|th)?(?![\d:]))?(?:,?\s+(?:of\s+)?{_YEAR}|\s*'\d{{2}}|-\d{{2}}(?!\d))?)"
            rf"(?:{_TIME})?(?![A-Za-z])")
        self._weekday = re.compile(rf"(?<![A-Za-z])(?:{_WEEKDAY}|(?:MON|TUES?|WED(?:NES)?|THU(?:RS)?|FRI|SAT(?:UR)?|SUN)DAY"
                                   rf"|(?:mon|tues|wednes|thurs|fri|satur|sun)day)"
                                   rf"(?:\s+(?:morning|afternoon|evening|night))?(?![A-Za-z])")
        self._short_year = re.compile(r"(?<![\w'’])['’](\d{2})(?![\d\w])")
        self._year = re.compile(rf"(?<![\d/.\-$#])({_YEAR})(?:'?s)?(?![\d/]|\.\d|\s*(?:mg|mcg|ml|mL|cc|units?|g\b|kg|%|cells|/))")
        self._year_cue = re.compile(r"(?i:\b(?:in|since|of|from|until|till|to|by|during|circa|around|before|after|early|"
                                    r"late|mid|summer|winter|spring|fall|autumn|born|founded|established|year|class|"
                                    r"the|dated|through|thru|between|and|-|–))[\s\-]*$")
        self._time_tail = re.compile(_TIME)
        self._zh_dates = re.compile(
            rf"(?:(?:去年|今年|明年|前年|\d{{2,4}}年|[{_ZH_NUM}]{{2,4}}年)?(?:\d{{1,2}}|[{_ZH_NUM}]{{1,3}})月(?!经|份?[以之]?内)"
            rf"(?:(?:\d{{1,2}}|[{_ZH_NUM}]{{1,3}})[日号]|份|初|中旬|上旬|下旬|底|末)?"
            rf"|(?:上个?|这个?|本|下个?)月(?:\d{{1,2}}|[{_ZH_NUM}]{{1,3}})[日号]"
            rf"|(?:上|本|这|下)(?:周|星期|礼拜)[一二三四五六日天末]"
            rf"|(?:去年|前年|今年|明年)(?:春天|夏天|秋天|冬天|年初|年底|年末|春节|国庆|元旦)?"
            rf"|大前天|前天|(?:\d{{1,2}}|[{_ZH_NUM}]{{1,3}})[日号](?=[上下]午|晚上|早上|凌晨|入院|出院|就诊|来院))")
        # places and organisations
        lists = _place_lists()
        cities = [c.strip() for c in str(raw.get("us_cities", "")).split("|") if c.strip()]
        places = list(lists["countries"]) + list(lists["states"]) + cities
        self._place_set = frozenset(places)
        self._place_first: dict[str, int] = {}
        for place in places:  # first word -> most words a place starting with it has
            first, count = place.split()[0], len(place.split())
            self._place_first[first] = max(self._place_first.get(first, 0), count)
        self._cap_word = re.compile(r"(?<![^\W\d_])[A-Z][^\W\d_]*\.?")
        self._state_abbr = re.compile(rf"(?<=[a-z]),\s+({_alternation(lists['states_abbr'])})(?![A-Za-z])")
        hospital = str(raw.get("en_hospital_words", "Hospital"))
        cap = r"(?:St\.|[A-Z][A-Za-z'’.\-]*|of|the|and|&)"
        gap = r"(?:[ \t]+\n?[ \t]*|\n[ \t]*)"  # a name may wrap onto the next line, never across a blank line
        self._hospital = re.compile(
            rf"((?:(?:St\.?|Saint)\s+)?(?:[A-Z][A-Za-z'’.\-]*{gap})(?:{cap}{gap}){{0,4}}(?:{hospital})(?![A-Za-z])"
            rf"(?:\s+(?:of|at)\s+[A-Z][A-Za-z.\-]+(?:\s+[A-Z][A-Za-z.\-]+){{0,2}})?"
            rf"|(?:{hospital})\s+of\s+[A-Z][A-Za-z.\-]+(?:\s+[A-Z][A-Za-z.\-]+){{0,2}})")
        self._hospital_caps = re.compile(rf"((?:[A-Z]{{2,}}\s+){{1,4}}(?:{hospital.upper()}|ED|EMERGENCY DEPT)(?![A-Za-z]))")
        self._saint = re.compile(r"(?<![A-Za-z])((?:St\.?|Saint)[ \t]+[A-Z][a-z]+(?:['’]s)?(?:[ \t]+[A-Z][a-z]+)?)")
        self._ward = re.compile(r"(?<![A-Za-z])((?:Ward|Room|Rm\.?|Unit|Floor|Bldg\.?|Building|Pod|Bay)\s+#?\d{1,4}[A-Z]?)(?![\w])")
        self._org = re.compile(
            rf"((?:[A-Z][A-Za-z&'’.\-]*[ \t]+){{1,4}}(?:{raw.get('en_org_words', 'Inc')})(?![A-Za-z])"
            rf"|(?:University|Bank|College|Institute|Department)\s+of\s+[A-Z][A-Za-z.\-]+(?:\s+[A-Z][A-Za-z.\-]+){{0,2}})")
        self._org_cue = re.compile(rf"(?:{_alternation(raw.get('org_cues', []))})\s+((?:the\s+)?[A-Z][\w&'’.\-]*(?:\s+[A-Z][\w&'’.\-]*){{0,4}})")
        self._loc_cue = re.compile(rf"(?<![A-Za-z])(?:{_alternation(raw.get('location_cues', []))})\s+"
                                   r"((?:the\s+)?[A-Z][\w'’\-]*[a-z][\w'’\-]*(?:\s+[A-Z][\w'’\-]*[a-z][\w'’\-]*){0,2})")
        strong = _alternation(raw.get("location_strong_cues", []))
        place_word = rf"{_UPPER_ANY}[^\W\d_]*(?:['’\-]{_UPPER_ANY}?[^\W\d_]+)*"
        self._loc_strong = re.compile(rf"(?<![^\W\d_])(?i:{strong})[ \t]+(?:the[ \t]+)?({place_word}(?:[ \t]+{place_word}){{0,2}}"
                                      rf"|[a-z]+(?:[ \t][a-z]+)?)") if strong else None
        self._loc_strong_gate = re.compile(r"(?i:\bin\b|from|to\b|\bof\b)")
        self._city_state = re.compile(r"(?<![A-Za-z])([A-Z][a-z]+(?:\s+[A-Z][a-z]+)?),\s+([A-Z]{2})(?=\s+\d{5}|\W*$|[\s.,;)])")
        self._zh_hospital_anchor = re.compile(_alternation(raw.get("zh_hospital_suffixes", ["医院"])))
        self._zh_org_anchor = re.compile(_alternation(raw.get("zh_org_suffixes", ["公司"])))
        self._zh_stop = frozenset(str(raw.get("zh_place_stop_chars", "")))
        self._zh_generic = tuple(raw.get("zh_generic_place_prefixes", ()))
        zh_places = lists["zh_places"]
        self._zh_region = re.compile(rf"[{_HAN}]{{2,3}}省[{_HAN}]{{2,4}}?市(?:[{_HAN}]{{1,4}}?[区县])?"
                                     + (rf"|(?:{_alternation(zh_places)})(?:省|市|县|区)?(?:[{_HAN}]{{1,3}}?[区县](?![{_HAN}]*[医院]))?"
                                        if zh_places else ""))
        # international street addresses and the lines that follow them
        street_end = ("straße|strasse|gasse|weg|vej|vägen|gatan|gata|katu|kuja|tie|laan|straat|veien|stræti|braut|"
                      "plein|gracht|dreef|kade|hove|vegur|tún|utca|ulica|rinne|allee|platz|ring|damm|gade|väg")
        street_start = r"(?:(?i:rue|calle|avenida|rua|rúa)|Via|Av\.|Strada|Viale|Piazza|Largo|Travessa|Carrer|ul\.|Ul\.|al\.|Λεωφόρος|Οδός)"
        letter = r"[^\W\d_]"
        self._street_intl = re.compile(
            rf"(?<![\w])((?:\d{{1,6}}\s+){{0,2}}(?:{street_start}\s+(?:{letter}[\w'’.\-]*\s+){{0,4}}\d{{1,5}}[A-Za-z]?"
            rf"|(?:{_UPPER_ANY}[\w'’.\-]*\s+){{0,2}}{letter}[\w'’\-]*(?i:{street_end})\.?\s+\d{{1,5}}[A-Za-z]?"
            rf"|{letter}[\w'’\-]*\s+(?:u\.|utca|út|tér|krt\.)\s+\d{{1,5}}\.?"
            rf"|(?:{letter}[\w'’.\-]*\s+){{1,3}}(?i:strasse|straße|gasse|weg|vej|gade|laan|straat|allee|street|road|avenue|lane)\s+\d{{1,5}}"
            rf"|\d{{3,6}}[ \t]+(?:{letter}[\w'’.\-]*[ \t]+){{1,3}}\d{{1,5}}[A-Za-z]?))(?![\w])")
        # number first, then the street type and its name: 12 rue de la Paix, 69 Av Sidi Lakhmi, 33 avenue de Provence
        particle = r"(?:(?i:de|du|des|la|le|les|del|della|do|da|dos|das)\s+|(?i:l|d)['’])"
        self._street_number_first = re.compile(
            rf"(?<![\w])(\d{{1,5}}[A-Za-z]?(?:\s*(?:bis|ter))?,?\s+(?i:rue|avenue|av\.?|boulevard|bd|chemin|impasse|quai|allée|"
            rf"avenida|rua|calle|via)\s+{particle}{{0,2}}{letter}[\w'’\-]*(?:[ \t]+(?:{particle}|(?={_UPPER_ANY}))[\w'’\-]*){{0,3}})(?![\w])")
        # a street name and a house number after an address cue: "lives on Rua Mina 50", "sent to Kuusiku 7"
        unit_words = r"%|mg|mcg|kg|g\b|ml|mL|cc|units?|years?|yrs?|yo\b|days?|weeks?|wks?|months?|times|x\b|am\b|pm\b|hours?|hrs?|min"
        self._cued_street = re.compile(
            rf"(?i:\b(?:lives|living|live|resides|residing|located|situated|moved)\s+(?:on|at|to)|\baddress(?:\s+is)?\s*:?"
            rf"|\bsen[dt]\s+(?:it\s+|them\s+)?to|\bmail(?:ed)?\s+(?:it\s+)?to|\bdrops?\s+you\s+off\s+at|\benter\s+on|"
            rf"\bstop\s+at|\breturn\s+(?:it\s+)?to|\bdeliver(?:ed)?\s+to|\bnorth\s+side\s+of|\bsouth\s+side\s+of)"
            rf"[ \t:]+(?:the[ \t]+)?((?:\d{{1,6}}[ \t]+)?(?!(?:Room|Rm|Bed|Unit|Ward|Floor|Bay|Pod|ICU|CCU|ED|OR|PACU|Step|Day|Week|"
            rf"Month|Year|Page)\b){_UPPER_ANY}[\w'’.\-]*(?:[ \t]+[\w'’.\-]+){{0,3}}?[ \t]+\d{{1,5}}[A-Za-z]?)"
            rf"(?![\w/:.,]\d|[\w]|\s*(?:{unit_words}))")
        # number first after a cue, no street type: "the restaurant is at 9816 214 Pavlou Drandaki"
        self._cued_number_street = re.compile(
            rf"(?i:\b(?:lives|living|resides|residing|located|situated|moved|is|are|meet\s+(?:me|you|us))\s+(?:on|at|to)|\baddress(?:\s+is)?\s*:?)"
            rf"[ \t:]+((?:\d{{1,6}}[A-Za-z]?[ \t]+){{1,2}}{_UPPER_ANY}[a-zà-ÿ][\w'’.\-]*(?:[ \t]+{_UPPER_ANY}[\w'’.\-]*){{0,3}})(?![\w])")
        # an intersection: "the corner of Main Street and Elm", "corner of Bygget 64 and Komel Club"
        word = rf"(?:{_UPPER_ANY}[\w'’.\-]*|\d{{1,5}}[A-Za-z]?\.?|de|du|des|la|le|del|della|do|da|dos|das|di|van|von|der|ul\.)"
        self._intersection = re.compile(
            rf"(?i:\bcorner\s+of|\bintersection\s+of|\bjunction\s+of)[ \t]+(?:the[ \t]+)?"
            rf"((?:{word}[ \t]+){{0,5}}{word}[ \t]+(?:and|&)[ \t]+(?:{word}[ \t]+){{0,4}}{_UPPER_ANY}[\w'’.\-]*)")
        # a flat, suite or apartment standing on its own line or after a street
        self._unit = re.compile(r"(?<![\w])((?:Apt|APT|Apartment|APARTMENT|Suite|SUITE|Ste|STE|Flat|FLAT|(?i:apt\.|suite))\.?"
                                r"[ \t]*(?:No\.?[ \t]*|#[ \t]*)?\d{1,5}[A-Za-z]?)(?![\w])")
        # postcodes whose shape alone tells them: UK (SW1A 1AA), Canada (K1A 0B1)
        self._postcode_shape = re.compile(r"(?<![\w])([A-Z]{1,2}\d[A-Z\d]? \d[ABD-HJLNP-UW-Z]{2}"
                                          r"|[ABCEGHJ-NPRSTVXY]\d[ABCEGHJ-NPRSTV-Z] ?\d[ABCEGHJ-NPRSTV-Z]\d)(?![\w])")
        self._lead_number = re.compile(r"(?<![\w.,/:\-])(\d{1,6})[ \t]+$")
        countries = sorted(lists["countries"], key=len, reverse=True)
        self._country_postcode = re.compile(
            rf"(?m)^[^\w\n]*({_alternation(countries)})[ \t]+(\d{{4,6}}|\d{{3}} \d{{2}}|\d{{2}}-\d{{3}}|\d{{4}}-\d{{3}})[ \t]*[.,]?$")
        self._zip_cue = re.compile(r"(?i:\b(?:zip|zip code|zipcode|postcode|post code|postal code|PLZ|CEP)(?:\s+(?:is|was))?)[\s:#]*"
                                   r"(\d{3,5}(?:[ \-]\d{2,4})?(?![\d/])|[A-Z]\d[A-Z] ?\d[A-Z]\d|[A-Z]{1,2}\d[A-Z\d]? ?\d[A-Z]{2})(?![\w])")
        self._street_gate = re.compile(rf"\d{{3,6}}\s+(?:{_UPPER_ANY}|[^\W\d_]+\s+\d)|(?i:{street_end}|street|road|avenue|lane|rue|via|calle|rua|"
                                       rf"ul\.|u\.|utca|út|tér|av\.|strada|viale|piazza|largo|carrer|λεωφόρος)\s+\d"
                                       rf"|(?<![\w])(?:(?i:rue|calle|rua|rúa|avenida|ul\.|al\.)|{street_start})\s+[^\W\d_]"
                                       rf"|\d[A-Za-z]?,?\s+(?i:rue|avenue|av\.?|boulevard|bd|chemin|impasse|quai|allée)\s")
        self._po_box = re.compile(r"(?<![\w])((?:\d{1,6}\s+)?(?:(?i:p\.?\s?o\.?\s*box|post\s*(?:office\s+)?box|postbox|postfach|"
                                  r"rural\s+route|r\.r\.|rfd)|PSC|CMR|Unit|Box|BOX|Boîte\s+postale|Apartado)\s+#?\d{1,6}(?:,?\s+Box\s+\d{1,6})?)(?![\w])")
        self._address_tail = re.compile(
            r"(?:(?:[ \t]*,[ \t]*|[ \t]*\n(?:[ \t>]*\n)?[ \t]*(?:>[ \t]*)*(?:,[ \t]*)?|[ \t]+)"
            r"(?:(?:Apt\.?|Suite|Unit|Ste\.?|Box|Flat|Floor|#)\s*[\w\-]+|\d{4,6}(?:-\d{4})?|[A-Z]{2,3}(?![\w])|\([^()\n]{1,20}\)"
            r"|[A-Z]{1,2}\d[A-Z\d]? \d[A-Z]{2}(?![\w])"
            r"|[^\W\d_][\w'’.\-]*(?:[ \t]+(?![A-Z]{1,2}\d[A-Z\d]? \d[A-Z]{2}(?![\w]))[^\W\d_][\w'’.\-]*){0,3}))")
        self._unit_piece = re.compile(r"(?:Apt|Suite|Unit|Ste|Box|Flat|Floor|Fl|Rm|Room|#|P\.?O\.?|St|Rd|Ave|Blvd|Dr|Street|Road|"
                                      r"Avenue)\b", re.IGNORECASE)
        self._trailing_postcode = re.compile(r"[ \t]*(\d{3,6}(?:[ \-]\d{2,4})?|[A-Z]\d[A-Z] ?\d[A-Z]\d|[A-Z]{1,2}\d[A-Z\d]? \d[A-Z]{2})$")
        # phone numbers in other countries' layouts
        self._phone_intl = re.compile(r"(?<![\w+])(\+\d{1,3}[ \-.]?(?:\(0\)[ ]?)?\(?\d{1,4}\)?(?:[ \-.]?\d{2,4}){1,5})(?![\w])")
        self._phone_groups = re.compile(r"(?<![\w.+/:])((?:\(\d{2,5}\)[ ]?|\d{2,5}[ \-.])\d{2,5}(?:[ \-.]\d{2,5}){0,3})(?![\w]|[.,]\d)")
        self._phone_context = re.compile(
            r"(?i:phone|tel\b|telephone|mobile|cell|fax|desk|office|home|work|call|calling|messages?|text|answering|"
            r"registered|reach|contact|number|pager|beeper|电话|手机|電話|手機)[^\n\d]{0,24}\n?[^\n\d]{0,4}$")
        self._phone_after = re.compile(r"^[ \-]*(?i:office|fax|mobile|cell|home|work|desk|phone)\b")
        # identifiers
        self._ssn = re.compile(r"(?<![\d\-])(\d{3})([\- ])(\d{2})\2(\d{4})(?![\d\-])")
        self._ssn_cue = re.compile(r"(?i:\b(?:ssn|ss#|ss no\.?|soc(?:ial)?\.?\s*sec(?:urity)?\.?(?:\s*(?:number|no\.?|#))?))"
                                   r"[\s:#.]*(\d{3}[\- ]?\d{2}[\- ]?\d{4})(?!\d)")
        self._licence_cue = re.compile(r"(?i:\b(?:driver'?s?\s+licen[cs]e|DL|licen[cs]e|passport|lic\.?)(?:\s*(?:number|no\.?|#))?)"
                                       r"[\s:#.]*([A-Z]{0,2}\d[\d\-]{4,15}\d|[A-Z]\d{3,}[A-Z0-9\-]*)(?![\w])")
        self._account_cue = re.compile(r"(?i:\b(?:account|acct|a/c|policy|member|subscriber|group|insurance|medicare|medicaid|"
                                       r"health\s*plan|beneficiary|certificate|serial|vin|device)(?:\s*(?:number|num|no\.?|#|id))?)"
                                       r"[\s:#.]*(\d[\d\-]{4,20}\d|[A-Z]{1,4}\d{5,}[A-Z0-9]*)(?![\w])")
        self._pager_cue = re.compile(r"(?i:\b(?:pager|beeper|pgr|bpr|pg|fax|ext)\.?(?:\s*(?:number|no\.?|#))?)[\s:#.]*(\d[\d\-]{2,12}\d)(?!\d)")
        self._ssn_gate = re.compile(r"\d{3}-\d{2}-\d{4}")
        self._long_digits = re.compile(r"\d{4}[\- ]?\d{4}[\- ]?\d{4}")
        self._iban_gate = re.compile(r"[A-Z]{2}\d{2} ?[A-Z0-9]{4}")
        self._card = re.compile(r"(?<![\d\-])(\d{4}[\- ]?\d{4}[\- ]?\d{4}[\- ]?\d{1,7}|\d{13,19})(?![\d])")
        self._iban = re.compile(r"(?<![A-Z0-9])([A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?)(?![A-Za-z0-9])")
        # a record number standing alone in a header column: line start, a wide gap or a "|" on both sides
        # ("OROZCO,KYLE   560-40-78-5        VISIT DATE", "123456789 | SH | 12345678 | | 1234567 | 01/02/2003")
        self._record_column = re.compile(r"(?m)(?:^|(?<=[ \t]{2})|(?<=\t)|(?<=\|)[ \t]*)[ \t]*"
                                         r"([A-Z]{0,3}\d[\dA-Z]*(?:[\-/][\dA-Z]+){0,4})(?=[ \t]*$|[ \t]{2,}|[ \t]*\|)")
        self._taiwan_id = re.compile(r"(?<![A-Za-z0-9])([A-Z][12]\d{8})(?![A-Za-z0-9])")

    @property
    def lexicon(self) -> NameLexicon:
        if self._lexicon is None:
            self._lexicon = name_lexicon()
        return self._lexicon

    # --- entry point --------------------------------------------------------------------
    def find(self, text: str, spans: list[Span], *, has_han: bool, has_upper: bool, has_digit: bool) -> None:
        if has_digit:
            self._find_identifiers(text, spans)
            self._find_dates(text, spans, has_upper)
        else:
            self._find_word_dates(text, spans)
        if has_upper or _LOWER_LATIN.search(text):
            self._find_en_names(text, spans)
        if self._loc_strong is not None and self._loc_strong_gate.search(text):
            self._find_cued_places(text, spans)
        if has_upper:
            self._find_places(text, spans)
        if has_digit or ("corner" in text or "intersection" in text or "junction" in text):
            self._find_addresses(text, spans)
        if has_han:
            self._find_zh_places(text, spans)
            self._find_zh_dates(text, spans)

    # --- names --------------------------------------------------------------------------
    def _find_en_names(self, text: str, spans: list[Span]) -> None:
        lexicon = self.lexicon
        self._find_told_names(text, spans)  # also in text with no candidate token
        # one scan for every cue; a token is cued when one ends right before it
        low = text.lower()
        if len(low) != len(text):  # a character whose lower case is longer (İ): scan the text as is
            low = "".join(ch.lower()[:1] for ch in text)
        cue_ends = {m.end() for m in self._cue_scan.finditer(low)} | {m.end() for m in self._title_scan.finditer(text)}
        lower_ends = {m.end() for m in self._lower_cue_scan.finditer(low)} if cue_ends else set()
        # candidates only: capitalised words, words right after a cue, common given names in lower case
        # (single letters are initials inside a name, Mary A. Smith, not tokens of their own)
        given = self._given
        tokens = [t for t in self._token.finditer(text) if t.end() - t.start() > 1 and (
            t.group()[0].isupper() or t.start() in lower_ends or t.group() in given
            or (t.end() - t.start() >= 3 and lexicon.is_first(t.group())))]
        if not tokens:
            return
        n = len(tokens)
        words = [t.group().rstrip("'’").removesuffix("'s").removesuffix("’s") for t in tokens]
        kinds = [lexicon.kind(w) if len(w) > 1 and not w.startswith(("I'", "I’")) and not (
            w[0].islower() and w in _FUNCTION_WORDS) else NEVER for w in words]
        caps = [w[:1].isupper() for w in words]
        upper = [w.isupper() and len(w) > 1 for w in words]
        mostly_upper = sum(upper) > 0.6 * n
        skip = [self._in_code(text, t.start(), t.end()) for t in tokens]
        cued = [t.start() in cue_ends for t in tokens]
        lower_ok = [t.start() in lower_ends for t in tokens]
        name = [False] * n
        for i in range(n):
            if skip[i] or kinds[i] == NEVER:
                continue
            if cued[i] and (caps[i] or (lower_ok[i] and kinds[i] in (LISTED, AMBIGUOUS))):
                name[i] = True
            elif kinds[i] == LISTED and caps[i] and (not upper[i] or not mostly_upper or self._neighbour_listed(i, kinds, upper, tokens, text)):
                name[i] = True
            elif (caps[i] and kinds[i] in (AMBIGUOUS, UNKNOWN, LISTED) and self._after_cue.match(text, tokens[i].end())
                  and (kinds[i] != AMBIGUOUS or self._name_like(words[i]))):
                name[i] = True
            elif (caps[i] and not upper[i] and self._name_verb.match(text, tokens[i].end()) and (
                    kinds[i] != AMBIGUOUS or (self._name_like(words[i]) and not self._sentence_start(text, tokens[i].start())))):
                name[i] = True  # "Graves said", "Kowalski lives alone"
        # a run of two or three capitalised words none of which is an English or clinical word
        # (Krisztián Szöllösy, Stefanía K. Oddgeirsdóttir): a name unless a place/organisation word follows
        for i in range(n - 1):
            if name[i] or skip[i] or not caps[i] or upper[i] or kinds[i] not in (LISTED, UNKNOWN):
                continue
            j = i + 1
            if not (caps[j] and not upper[j] and not skip[j] and kinds[j] in (LISTED, UNKNOWN)
                    and self._joined(text, tokens[i], tokens[j]) and "," not in text[tokens[i].end():tokens[j].start()]):
                continue
            tail = text[tokens[j].end():tokens[j].end() + 30]
            if re.match(r"\s+(?:Hospital|Clinic|Center|Centre|Inc|LLC|Ltd|Corp|University|Street|St\b|Road|Avenue)", tail):
                continue
            name[i] = name[j] = True
        # a speaker's name at the start of a dialogue line ("Halldór: What a wife")
        for i in range(n):
            t = tokens[i]
            if (not name[i] and caps[i] and not upper[i] and kinds[i] in (LISTED, UNKNOWN)
                    and (t.start() == 0 or text[t.start() - 1] == "\n") and text[t.end():t.end() + 1] == ":"):
                name[i] = True
        self._mark_told_names(text, tokens, words, kinds, caps, upper, skip, name)
        # lower-case names: a common given name then a surname-like word (follow up with patricia desrosiers)
        for i in range(n):
            if not name[i] and not caps[i] and kinds[i] == LISTED and (words[i] in given or lexicon.is_first(words[i])):
                middle = self._lower_middle.match(text, tokens[i].end())
                following = self._token.match(text, middle.end() if middle else tokens[i].end() + 1)
                if (following and text[tokens[i].end()] == " " and following.group()[:1].islower()
                        and len(following.group()) > 2 and lexicon.kind(following.group()) in (LISTED, UNKNOWN)
                        and (len(words[i]) >= 4 or words[i] in given or lexicon.kind(following.group()) == LISTED)):
                    name[i] = True
                    spans.append(Span(tokens[i].start(), following.end(), NAME, 0.7))
        # grow: a capitalised non-word beside a name ("Teresa Kreutzmann", "Smith, John", "Mary A. Brown")
        for _ in range(3):
            changed = False
            for i in range(n):
                if name[i] or skip[i] or kinds[i] == NEVER or not caps[i]:
                    continue
                for j in (i - 1, i + 1):
                    if 0 <= j < n and name[j] and self._joined(text, tokens[min(i, j)], tokens[max(i, j)]):
                        if kinds[i] != AMBIGUOUS or lexicon.is_first(words[min(i, j)]) or cued[min(i, j)]:
                            name[i] = changed = True
                            break
            if not changed:
                break
        listed_apart = self._mark_name_lists(text, tokens, words, kinds, caps, upper, skip, name)
        # an ambiguous first name right before a capitalised surname (Mary Smith, Will Turner)
        for i in range(n - 1):
            if (not name[i] and kinds[i] == AMBIGUOUS and caps[i] and not upper[i] and self._name_like(words[i])
                    and lexicon.is_first(words[i]) and self._joined(text, tokens[i], tokens[i + 1])
                    and "," not in text[tokens[i].end():tokens[i + 1].start()]):
                if name[i + 1]:
                    name[i] = True
                elif (caps[i + 1] and not upper[i + 1] and not skip[i + 1] and kinds[i + 1] in (LISTED, UNKNOWN)
                      and not self._place_or_org_after.match(text, tokens[i + 1].end())):
                    name[i] = name[i + 1] = True  # Albert Svenningsen, Katrina Mota
        i = 0
        while i < n:
            if not name[i]:
                i += 1
                continue
            j = i
            while j + 1 < n and name[j + 1] and self._joined(text, tokens[j], tokens[j + 1]) and not (
                    j in listed_apart and j + 1 in listed_apart and "," in text[tokens[j].end():tokens[j + 1].start()]):
                j += 1
            start, end = tokens[i].start(), tokens[j].start() + len(words[j])
            score = 0.9 if any(cued[k] for k in range(i, j + 1)) else 0.8
            street = self._street_after.match(text, end) if score < 0.9 else None
            street_end = street.end() if street is not None else None
            if street is not None and street.group().endswith(".") and len(street.group().strip()) > 4:
                street_end -= 1  # "Bridge Road." ends a sentence; "Ave." is an abbreviation
            number = re.search(r"(?<![\w.,/\-])\d{1,6}[ \t]+$", text[max(0, start - 8):start])
            if street is None and score < 0.9 and j > i and self._street_after.fullmatch(" " + words[j]):
                # the suffix was taken as part of the name (Mall, Parks are surnames too): a street only with
                # a house number before it or a street abbreviation after it (12 Isaac Parks, Martinez Mall St.)
                abbreviation = re.match(r"[ \t]+(?:St|Rd|Ave|Blvd)\b\.?", text[end:end + 8])
                if number or abbreviation:
                    street_end = end + (abbreviation.end() if abbreviation else 0)
            if street_end is not None:  # a street named after a person: Martinez Mall, Eriksson Bridge, 12 Isaac Lodge
                spans.append(Span(start - (len(number.group()) if number else 0), street_end, ADDRESS, 0.85))
                i = j + 1
                continue
            spans.append(Span(start, end, NAME, score))
            i = j + 1
        for match in self._signature.finditer(text):
            second = match.group(2) or match.group(3)
            if match.group(1).lower() in lexicon.forced or self.lexicon.kind(second) == NEVER and len(second) > 4:
                continue
            spans.append(Span(match.start(1), match.end(), NAME, 0.8))
        for match in self._username.finditer(text):
            spans.append(Span(match.start(1), match.end(1), NAME, 0.85))
        if "'" in text or "’" in text:
            for match in self._possessive.finditer(text):
                if len(match.group(1)) > 2 and lexicon.kind(match.group(1)) != NEVER:
                    spans.append(Span(match.start(1), match.end(1), NAME, 0.8))
        for match in self._dictation_code.finditer(text):
            spans.append(Span(match.start(1), match.end(1), NAME, 0.8))

    def _speaker_ok(self, word: str, kind: int) -> bool:
        """A word that can be a speaker or a vocative: not clinical or everyday, or a listed first name."""
        return kind in (LISTED, UNKNOWN) or (kind == AMBIGUOUS and self._name_like(word) and self.lexicon.is_first(word))

    def _mark_told_names(self, text: str, tokens: list[re.Match[str]], words: list[str], kinds: list[int],
                         caps: list[bool], upper: list[bool], skip: list[bool], name: list[bool]) -> None:
        """Names told by their place in a sentence: a dialogue speaker, a vocative, a greeting's addressee."""
        greeted = {m.end() for m in self._greeting.finditer(text)} if caps else set()
        # speaker lines whose word can be a name: a word that is also English or clinical (Destiny, Comfort)
        # speaks only in a dialogue, two such lines at least, not under one "Comfort:" header of a nursing note
        speakers = sum(1 for i, t in enumerate(tokens) if kinds[i] != NEVER and self._speaker_ok(words[i], kinds[i])
                       and (t.start() == 0 or text[t.start() - 1] == "\n") and text[t.end():t.end() + 1] == ":")
        for i, t in enumerate(tokens):
            if name[i] or skip[i] or upper[i] or kinds[i] == NEVER or not self._speaker_ok(words[i], kinds[i]):
                continue
            start, end = t.start(), t.end()
            line_start = start == 0 or text[start - 1] == "\n"
            if line_start and text[end:end + 1] == ":" and (caps[i] or kinds[i] != UNKNOWN) and (
                    kinds[i] != AMBIGUOUS or speakers >= 2):
                # a dialogue speaker ("Destiny: Remember me", 'tracy:"i'm ...'); a section header has no speech
                line_end = text.find("\n", end)
                if self._speech.match(text[end + 1:line_end if line_end >= 0 else len(text)]):
                    name[i] = True
                continue
            if not caps[i]:
                continue
            if start in greeted:
                name[i] = True  # "Hi Sarah,", "Regards,\nJohn"
            elif text[max(0, start - 2):start] in (", ", ",\t") and self._vocative_after.match(text, end):
                name[i] = True  # "Remember me, Mary?"
            elif self._sentence_start(text, start) and self._vocative_start.match(text, end):
                name[i] = True  # "Warrane, can I please speak to your boss"
            elif kinds[i] != UNKNOWN and self._told_to.search(text, max(0, start - 40), start) and (
                    text[start - 4:start].strip() == "to" or self._possessive_after.match(text, end)):
                name[i] = True  # "said Carla to Sandra", "had given Angel his address"

    def _find_told_names(self, text: str, spans: list[Span]) -> None:
        """Names in lower case or unlisted, told by a phrase: "my name is", "named him", "the X novel", a list of names."""
        lexicon = self.lexicon
        low = text.lower()
        if "name" in low or "call" in low:
            for match in self._told_name.finditer(text):
                end = match.start(1)
                for piece in re.finditer(r"[^\W\d_][^\W\d_'’\-]*\.?", match.group(1)):
                    bare = piece.group().rstrip(".")
                    if len(bare) > 1 and (lexicon.kind(bare) == NEVER or bare.lower() in _FUNCTION_WORDS):
                        break
                    end = match.start(1) + piece.end() - (1 if piece.group().endswith(".") and len(bare) > 1 else 0)
                if end > match.start(1) and len(text[match.start(1):end].strip()) > 1:
                    spans.append(Span(match.start(1), end, NAME, 0.85))
        for match in self._line_start_word.finditer(text):
            bare = match.group(1)
            if len(bare) < 3 or bare.isupper() or bare.lower() in _FUNCTION_WORDS or not self._person_verb.match(text, match.end(1)):
                continue
            kind = lexicon.kind(bare)
            verb = self._person_verb.match(text, match.end(1)).group().split()
            # a word that is also English ("Hope is from church", "Will began to") needs a verb only people take
            if kind in (LISTED, UNKNOWN) or (kind == AMBIGUOUS and self._name_like(bare) and bare[0].isupper()
                                             and (verb[0] in ("lives", "lived", "grew", "spent", "had", "has")
                                                  or verb[:2] == ["began", "writing"])):
                spans.append(Span(match.start(1), match.end(1), NAME, 0.8))
        for match in self._work.finditer(text):
            pieces = [w.rstrip(".") for w in match.group(1).split()]
            long = [w for w in pieces if len(w) > 1]
            if long and all(lexicon.kind(w) != NEVER and w.lower() not in _FUNCTION_WORDS
                            and (lexicon.kind(w) != AMBIGUOUS or self._name_like(w)) for w in long):
                spans.append(Span(match.start(1), match.start(1) + len(match.group(1).rstrip(".")), NAME, 0.8))
        if "," in text:
            for match in self._lower_list.finditer(text):
                members = list(re.finditer(r"[^\W\d_]+", match.group(1)))
                members = [m for m in members if m.group() not in ("and",)]
                kinds = [lexicon.kind(m.group()) for m in members]
                firsts = sum(lexicon.is_first(m.group()) and k != NEVER for m, k in zip(members, kinds))
                unknown = sum(k == UNKNOWN for k in kinds)
                if (len(members) >= 3 and NEVER not in kinds and unknown <= 1 and firsts >= len(members) - 1
                        and not any(m.group() in _FUNCTION_WORDS for m in members)):
                    for m in members:
                        spans.append(Span(match.start(1) + m.start(), match.start(1) + m.end(), NAME, 0.8))

    @staticmethod
    def _sentence_start(text: str, at: int) -> bool:
        """First word of a sentence or line, where a word is capitalised anyway ("Hope states she slept")."""
        before = text[max(0, at - 4):at].rstrip(" \t\"'“(")
        return not before or before[-1] in ".!?:;\n"

    def _name_like(self, word: str) -> bool:
        """A word that is also a name (Graves, White), not a pronoun or function word that a name list holds (He, Will)."""
        return (len(word) > 2 and word.lower() not in _FUNCTION_WORDS
                and (self.lexicon.is_first(word) or self.lexicon.is_last(word)))

    def _mark_name_lists(self, text: str, tokens: list[re.Match[str]], words: list[str], kinds: list[int],
                         caps: list[bool], upper: list[bool], skip: list[bool], name: list[bool]) -> set[int]:
        """Capitalised words listed with a name ("seen by Smith, Graves and Reed"): names too.

        A list counts when one member is already a name, is a listed name that is no
        English word, or two members are names that are also words (Graves, Reed);
        every member must be capitalised, not possessive (Parkinson's, Crohn's) and
        either a name or a word of no vocabulary. Not when an organisation word
        follows (Davis, Reynolds and Williamson Orchestra). Returns the members of lists of three or more, or
        with an "and": one name each, not "Last, First".
        """
        n = len(tokens)
        apart: set[int] = set()
        i = 0
        while i < n:
            j = i
            while (j + 1 < n and self._list_gap.fullmatch(text, tokens[j].end(), tokens[j + 1].start())
                   and "\n" not in text[tokens[j].end():tokens[j + 1].start()]):
                j += 1
            if j > i:
                members = range(i, j + 1)
                usable = all(caps[k] and not skip[k] and kinds[k] != NEVER and words[k] == tokens[k].group() and (
                    kinds[k] != AMBIGUOUS or self._name_like(words[k])) for k in members)
                anchored = (any(name[k] for k in members) or any(kinds[k] == LISTED and not upper[k] for k in members)
                            or sum(self._name_like(words[k]) for k in members) >= 2)
                tail = text[tokens[j].end():tokens[j].end() + 40]
                organisation = re.match(r"[\s,]+(?:(?:[A-Z][a-z]+\s+){0,2})(?:Orchestra|Band|Inc|LLC|Ltd|Corp|Group|"
                                        r"Associates|Partners|Law|Hospital|Clinic|Center|Centre|Company|Co\b|PC|LLP)", tail)
                if usable and anchored and not organisation:
                    for k in members:
                        if not upper[k] or name[k]:
                            name[k] = True
                    gaps = [text[tokens[k].end():tokens[k + 1].start()] for k in range(i, j)]
                    if j - i >= 2 or any("," not in gap for gap in gaps):
                        apart.update(members)
            i = j + 1
        return apart

    @staticmethod
    def _in_code(text: str, start: int, end: int) -> bool:
        """Part of an e-mail, URL, identifier or file name, not a word of prose."""
        before = text[start - 1] if start else " "
        after = text[end] if end < len(text) else " "
        return before in "@_/\\=" or after in "@_\\" or before.isdigit() or after.isdigit() or (
            after == "." and end + 1 < len(text) and text[end + 1].isalpha() and text[end + 1].islower())

    @staticmethod
    def _joined(text: str, left: re.Match[str], right: re.Match[str]) -> bool:
        gap = text[left.end():right.start()]
        return bool(re.fullmatch(r" |  |, ?|,\s?| [A-Z]\. ?| [A-Z] |-", gap)) and "\n" not in gap

    def _neighbour_listed(self, i: int, kinds: list[int], upper: list[bool], tokens: list[re.Match[str]],
                          text: str) -> bool:
        for j in (i - 1, i + 1):
            if 0 <= j < len(kinds) and kinds[j] in (LISTED, AMBIGUOUS) and self._joined(
                    text, tokens[min(i, j)], tokens[max(i, j)]) and "," in text[tokens[min(i, j)].end():tokens[max(i, j)].start()]:
                return True
        return False

    # --- dates --------------------------------------------------------------------------
    def _find_dates(self, text: str, spans: list[Span], has_upper: bool) -> None:
        for match in self._numeric_date.finditer(text):
            a, b, year = int(match.group(1)), int(match.group(3)), match.group(4)
            if not ((1 <= a <= 12 and 1 <= b <= 31) or (1 <= b <= 12 and 1 <= a <= 31)):
                continue
            if match.group(2) == "." and len(year) == 2 and not self._date_context(text, match.start()):
                continue  # 1.2.3-like version numbers
            spans.append(Span(match.start(), self._with_time(text, match.end()), DATE, 0.9))
        for match in self._month_day.finditer(text):
            month, day = int(match.group(1)), int(match.group(2))
            if not (1 <= month <= 12 and 1 <= day <= 31):
                continue
            before = text[max(0, match.start() - 30):match.start()].lower()
            if re.search(r"(pain|strength|score|scale|motor|power|rated|grade|reflex|gcs|apgar|murmur|sbp|bp|"
                         r"blood pressure|ratio|out of|x|tab|tabs|dose|of)\s*[:=]?\s*$|\d\s*$", before):
                continue
            if day in (5, 10) and not self._date_context(text, match.start()):
                continue  # 4/5 strength, 3/10 pain
            if month <= 4 and day <= 8 and not self._date_context(text, match.start()):
                continue  # 1/2 tablet, 3/4 of
            spans.append(Span(match.start(), self._with_time(text, match.end()), DATE, 0.8))
        for match in self._month_year.finditer(text):
            before = text[max(0, match.start() - 30):match.start()].lower()
            if match.group(2).startswith("0") and len(match.group(2)) == 2 and not self._date_context(text, match.start()):
                continue
            if not re.search(r"(ratio|x|of|\d)\s*[:=]?\s*$", before):
                spans.append(Span(match.start(), match.end(), DATE, 0.75))
        for match in self._short_year.finditer(text):
            spans.append(Span(match.start(), match.end(), DATE, 0.8))
        for match in self._year.finditer(text):
            if re.match(r"[\-/.]\d{1,2}[\-/.]\d", text[match.end():match.end() + 6]):
                continue  # the year of a full (or impossible) numeric date, handled above
            before = text[max(0, match.start() - 16):match.start()]
            after = text[match.end():match.end() + 2]
            year_range = re.match(r"[\-–](?:(?:19|20)\d{2}|\d{2})(?![\d\-])", text[match.end():match.end() + 6])
            if self._year_cue.search(before) or match.group().endswith("s") or year_range or (
                    re.search(r"\b(?:a|an)\s+$", before) and re.match(r" [A-Z]", after)):
                spans.append(Span(match.start(), match.end(), DATE, 0.8))
        if has_upper:
            self._find_word_dates(text, spans)

    def _find_word_dates(self, text: str, spans: list[Span]) -> None:
        if not _DATE_WORD_GATE.search(text):
            return
        for match in self._month_words.finditer(text):
            value = match.group()
            bare = value.strip(" .,")
            if not any(ch.isdigit() for ch in value):
                if bare in ("May", "MAY", "March", "MARCH", "Mar", "Jan", "Jun", "Jul", "Aug", "Sep", "Sept", "Oct",
                            "Nov", "Dec", "Feb", "Apr") and not self._date_context(text, match.start()):
                    continue  # "may" the verb, "Mar" the abbreviation, "march"
                if bare.islower() or (bare.isupper() and bare not in [m.upper() for m in _MONTH_FULL]):
                    continue
            end = match.end()
            if value.endswith(".") and value[:-1].split()[-1] in _MONTH_FULL:
                end -= 1  # the full stop of the sentence, not of an abbreviation
            spans.append(Span(match.start(), end, DATE, 0.85))
        for match in self._weekday.finditer(text):
            word = match.group()
            if word[:3].lower() in ("sat", "sun", "wed", "mon", "fri") and len(word.split()[0]) <= 4:
                continue  # abbreviations alone: "sat up", "Sun exposure"
            spans.append(Span(match.start(), match.end(), DATE, 0.8))

    def _date_context(self, text: str, at: int) -> bool:
        before = text[max(0, at - 24):at].lower()
        return bool(re.search(r"\b(on|since|from|until|till|to|by|dated?|admitted|admission|discharged?|seen|"
                              r"visit|of|through|thru|in|early|late|mid|last|next|this|starting|started|born|dob|d\.o\.b\.|"
                              r"surgery|procedure|s/p|returned?|follow[- ]?up|f/u|appointment|appt|scheduled|due|"
                              r"monday|tuesday|wednesday|thursday|friday|saturday|sunday|dd|dt|dv)[\s:,]*$", before))

    def _with_time(self, text: str, end: int) -> int:
        tail = self._time_tail.match(text, end)
        return tail.end() if tail else end

    def _find_zh_dates(self, text: str, spans: list[Span]) -> None:
        if "月" not in text and "周" not in text and "星期" not in text and "礼拜" not in text and "年" not in text \
                and "天" not in text and "日" not in text and "号" not in text:
            return
        for match in self._zh_dates.finditer(text):
            value = match.group()
            if value in ("今年", "明年") or len(value) < 2:
                continue
            start = match.start()
            if value[0].isdigit() and start > 0 and text[start - 1].isdigit():
                continue
            spans.append(Span(start, match.end(), DATE, 0.8))

    # --- places and organisations -------------------------------------------------------
    def _find_places(self, text: str, spans: list[Span]) -> None:
        lexicon = self.lexicon
        low = text.lower()
        hospital_like = _HOSPITAL_GATE.search(low) is not None
        for pattern in ((self._hospital, self._hospital_caps) if hospital_like else ()) + (
                (self._saint,) if "St" in text or "Saint" in text else ()):
            for match in pattern.finditer(text):
                start, end = match.start(1), match.end(1)
                value = text[start:end]
                for lead in ("The ", "the ", "THE ", "At ", "In ", "From ", "To "):
                    if value.startswith(lead):
                        start += len(lead)
                        value = value[len(lead):]
                first = value.split()[0] if value.split() else ""
                if pattern is self._hospital and first.lower() in ("hospital", "clinic") and " of " not in value:
                    continue
                if pattern is self._hospital and len(value.split()) == 2 and lexicon.kind(first) == NEVER and \
                        first.lower() in ("the", "general", "local", "outside", "this", "our", "a", "community",
                                          "memorial", "emergency", "urgent", "medical", "mental"):
                    continue
                spans.append(Span(start, end, LOCATION, 0.85))
        for match in (self._ward.finditer(text) if any(w in text for w in ("Ward", "Room", "Rm", "Unit", "Floor", "Bldg",
                                                                            "Building", "Pod", "Bay")) else ()):
            spans.append(Span(match.start(1), match.end(1), LOCATION, 0.7))
        for start, end in self._places_in(text):
            value = text[start:end]
            if value in ("Georgia", "Jordan", "Chad", "Washington", "Virginia", "Lincoln", "Aurora", "Mesa", "Reno",
                         "Madison", "Cambridge", "Quincy", "Durham", "Chandler", "Plano", "Mobile", "Niger", "Turkey",
                         "Guinea", "Jersey", "Man", "Nice", "Bath", "Reading", "Buffalo") and not self._place_context(text, start):
                continue
            spans.append(Span(start, end, LOCATION, 0.85))
        for match in self._state_abbr.finditer(text):
            before = re.search(r"([^\W\d_]+)$", text[max(0, match.start() - 30):match.start()].rstrip(" ,"))
            if before and lexicon.kind(before.group(1)) == NEVER and before.group(1) not in self._place_set:
                continue  # "Soft, ND, NT": an examination finding, not a state after a town
            spans.append(Span(match.start(1), match.end(1), LOCATION, 0.8))
        for match in self._city_state.finditer(text):
            if match.group(2) in ("MD", "DO", "PA", "NP", "RN") and not re.match(r"\s+\d{5}", text[match.end(2):]):
                continue  # a degree after a name, not Maryland
            if match.group(2) in _place_lists()["states_abbr"] or match.group(2) in ("IN", "OR", "ME", "OK", "HI", "PA", "MD",
                                                                                      "MA", "CO", "AL", "MO", "VA", "LA"):
                if lexicon.kind(match.group(1).split()[0]) != NEVER or self._place_context(text, match.start()):
                    spans.append(Span(match.start(1), match.end(2), LOCATION, 0.8))
        for match in self._loc_cue.finditer(text):
            value = match.group(1)
            start = match.start(1)
            if value.startswith("the "):
                start += 4
                value = value[4:]
            words = value.split()
            kinds = [lexicon.kind(w) for w in words]
            keep = 0
            for kind in kinds:
                if kind in (UNKNOWN,):
                    keep += 1
                else:
                    break
            if keep:
                end = start + len(" ".join(words[:keep]))
                spans.append(Span(start, end, LOCATION, 0.6))
        for match in (self._org.finditer(text) if _ORG_GATE.search(low) else ()):
            value = match.group(1)
            start = match.start(1)
            for lead in ("The ", "At ", "In ", "From "):
                if value.startswith(lead):
                    start += len(lead)
            if len(match.group(1)[start - match.start(1):].split()) >= 2 or "of" in value:
                end = match.end(1) - (1 if value.endswith(".") and not value.endswith(("Inc.", "Co.", "Ltd.", "Corp.")) else 0)
                spans.append(Span(start, end, ORGANIZATION, 0.8))
        for match in self._org_cue.finditer(text):
            value = match.group(1)
            start = match.start(1) + (4 if value.startswith("the ") else 0)
            words = text[start:match.end(1)].split()
            if words and lexicon.kind(words[0]) != NEVER:
                spans.append(Span(start, match.end(1), ORGANIZATION, 0.75))

    def _find_cued_places(self, text: str, spans: list[Span]) -> None:
        """The place after "grew up in", "originally from", "moved here from", "flew to": any capitalised words
        that are no clinical or English word (all capitals too: HELSINKI), or a listed place in lower case."""
        lexicon = self.lexicon
        for match in self._loc_strong.finditer(text):
            value, start = match.group(1), match.start(1)
            if value[:1].islower():
                for count in (2, 1):
                    words = value.split()[:count]
                    if len(words) == count and " ".join(words).title() in self._place_set:
                        spans.append(Span(start, start + len(" ".join(words)), LOCATION, 0.85))
                        break
                continue
            direction = re.match(r"(?:Northern|Southern|Eastern|Western|Central|Rural|Upstate|Downstate)[ \t]+(?=\S)", value)
            if direction and value not in self._place_set:
                start += direction.end()  # "in Southern Tunisia": the place is Tunisia
                value = value[direction.end():]
            kept = 0
            end = start
            # "grew up in Helsinki": a word of the English list is a place here, but not after "returned to"
            # or "moved to" (returned to Baseline, moved to Chair)
            origin = not re.match(r"(?i)(?:returned|moved|i'm|i am|we're)", match.group())
            for word in re.finditer(r"\S+", value):
                bare = word.group().rstrip(".,;:!?")
                listed = bare in self._place_set or bare.title() in self._place_set
                if bare.isupper() and len(bare) <= 4 and not listed:
                    break  # ICU, PACU, ED
                if not listed and lexicon.kind(bare) == NEVER and not (
                        origin and kept == 0 and len(bare) >= 4 and bare.lower() not in _NOT_PLACES):
                    break
                kept += 1
                end = start + word.start() + len(bare)
            if kept:
                spans.append(Span(start, end, LOCATION, 0.85))

    def _places_in(self, text: str) -> list[tuple[int, int]]:
        """(start, end) of listed countries, states and cities: a set lookup per capitalised word."""
        out: list[tuple[int, int]] = []
        words = list(self._cap_word.finditer(text))
        skip_to = -1
        for index, word in enumerate(words):
            if word.start() < skip_to:
                continue
            most = self._place_first.get(word.group().rstrip("."))
            if most is None:
                continue
            for count in range(most, 0, -1):
                end_word = words[index + count - 1] if index + count - 1 < len(words) else None
                if end_word is None:
                    continue
                value = text[word.start():end_word.end()].rstrip(".")
                if value in self._place_set and " ".join(value.split()) == value:
                    out.append((word.start(), word.start() + len(value)))
                    skip_to = word.start() + len(value)
                    break
        return out

    @staticmethod
    def _place_context(text: str, at: int) -> bool:
        return bool(re.search(r"(?i)\b(in|from|to|at|near|of|visit(?:ing|ed)?|lives?|moved|born|travel+ed|trip)\s+(?:the\s+)?$",
                              text[max(0, at - 24):at]))

    def _find_zh_places(self, text: str, spans: list[Span]) -> None:
        for anchor_re, label in ((self._zh_hospital_anchor, LOCATION), (self._zh_org_anchor, ORGANIZATION)):
            for anchor in anchor_re.finditer(text):
                start = anchor.start()
                while start > 0 and anchor.start() - start < 14 and "\u4e00" <= text[start - 1] <= "\u9fff" \
                        and text[start - 1] not in self._zh_stop:
                    start -= 1
                while start > 0 and anchor.start() - start < 16 and (text[start - 1].isdigit() or text[start - 1] in "第"):
                    start -= 1
                prefix = text[start:anchor.start()]
                generic = next((g for g in self._zh_generic if prefix.startswith(g)), None)
                if len(prefix) < 2 or (generic is not None and len(prefix) <= len(generic) + 1):
                    continue  # 当地医院, 上级医院, 社区医院: no institution named
                spans.append(Span(start, anchor.end(), label, 0.85))
        for match in self._zh_region.finditer(text):
            start = match.start()
            while start < match.end() - 2 and text[start] in self._zh_stop:
                start += 1
            spans.append(Span(start, match.end(), LOCATION, 0.8))

    # --- addresses --------------------------------------------------------------------------
    def _find_addresses(self, text: str, spans: list[Span]) -> None:
        """Street lines in other countries' formats, and the city/region/postcode/country after any street."""
        has_upper = any(ch.isupper() for ch in text)
        lexicon = self.lexicon
        anchors = [(s.start, s.end) for s in spans if s.label == ADDRESS]
        low = text.lower()
        patterns = [self._po_box] if ("box" in low or "PSC" in text or "Unit" in text or "CMR" in text or "rural" in low
                                      or "r.r." in low or "rfd" in low or "postfach" in low or "apartado" in low) else []
        if self._street_gate.search(text):
            patterns += [self._street_intl, self._street_number_first]
        if has_upper:
            patterns += [self._cued_street, self._cued_number_street]
        if "corner" in low or "intersection" in low or "junction" in low:
            patterns.append(self._intersection)
        for pattern in patterns:
            for match in pattern.finditer(text):
                words = re.findall(r"[^\W\d_]+", match.group(1))
                if pattern in (self._street_intl, self._cued_street, self._cued_number_street) and words and all(lexicon.kind(w) == NEVER for w in words
                                                                   if len(w) > 2) and not re.search(r"(?i)(rue|via|calle|rua|ul\.|u\.)", match.group(1)):
                    continue
                if pattern is self._intersection:  # each street its own span; "and" stays readable
                    join = re.search(r"[ \t]+(?:and|&)[ \t]+", match.group(1))
                    anchors.append((match.start(1), match.start(1) + join.start()))
                    anchors.append((match.start(1) + join.end(), match.end(1)))
                    continue
                anchors.append((match.start(1), match.end(1)))
        for match in self._unit.finditer(text):
            spans.append(Span(match.start(1), match.end(1), ADDRESS, 0.8))
        for match in self._postcode_shape.finditer(text):
            spans.append(Span(match.start(1), match.end(1), ADDRESS, 0.8))
        for match in self._country_postcode.finditer(text):
            spans.append(Span(match.start(1), match.end(1), LOCATION, 0.85))
            spans.append(Span(match.start(2), match.end(2), ADDRESS, 0.85))
        for start, end in anchors:
            cursor = end
            pieces: list[tuple[int, int]] = []
            while True:
                tail = self._address_tail.match(text, cursor)
                if not tail:
                    break
                piece = tail.group().strip(" \t\n,>")
                words = re.findall(r"[^\W\d_]+", piece)
                if words and piece[:1].isalpha() and not piece[:1].isupper():
                    break
                if words and not re.match(r"(?:Apt|Suite|Unit|Ste|Box|Flat|Floor)", piece) and not piece.isupper() and any(
                        lexicon.kind(w) == NEVER and w not in ("Street", "Road") for w in words if len(w) > 2) and not piece in self._place_set:
                    break
                if piece in ("I", "Im") or piece.startswith(("I ", "I'")):
                    break
                cursor = tail.end()
                piece_start = tail.start() + len(tail.group()) - len(tail.group().lstrip(" \t\n,>"))
                pieces.append((piece_start, piece_start + len(piece)))
            self._address_pieces(text, start, end, pieces, spans)
        for match in self._zip_cue.finditer(text):
            spans.append(Span(match.start(1), match.end(1), ADDRESS, 0.85))
        # a second number before a street line is part of it (a building or box number: "17151 2450 Crown St")
        for k, span in enumerate(spans):
            if span.label == ADDRESS and span.start > 0 and text[span.start:span.start + 1].isalnum():
                lead = self._lead_number.search(text, max(0, span.start - 10), span.start)
                if lead:
                    spans[k] = span._replace(start=lead.start(1))

    def _address_pieces(self, text: str, start: int, end: int, pieces: list[tuple[int, int]], spans: list[Span]) -> None:
        """A street line and what follows it: flat, box and postcode stay ADDRESS; town, state and country are LOCATION.

        i2b2 and presidio-research both label the city, state and country of an
        address as places (CITY/STATE/COUNTRY, GPE), the street and postcode as
        the address.
        """
        address_end = end
        score = 0.85 if pieces else 0.8
        for piece_start, piece_end in pieces:
            piece = text[piece_start:piece_end]
            if re.fullmatch(r"(?i:st|rd|ave|blvd|dr|street|road|avenue)\.?", piece) and text[address_end - 1:address_end].isdigit():
                break  # "Hauptstraße 5" ends with its house number: a street type after it is not the street's
            if (self._unit_piece.match(piece) or not re.search(r"[^\W\d_]", piece)
                    or re.match(r"(?:APO|FPO|DPO|AA|AE|AP)\b", piece)):  # military post: APO AE 09012
                if piece_start <= address_end + 3 and "\n" not in text[address_end:piece_start]:
                    address_end = piece_end
                else:
                    spans.append(Span(piece_start, piece_end, ADDRESS, score))
                continue
            code = self._trailing_postcode.search(piece)
            place_end = piece_start + (code.start() if code else len(piece))
            if place_end > piece_start:
                spans.append(Span(piece_start, place_end, LOCATION, 0.85))
            if code:
                spans.append(Span(piece_start + code.start(1), piece_end, ADDRESS, score))
        spans.append(Span(start, address_end, ADDRESS, score))

    # --- identifiers --------------------------------------------------------------------
    def _find_identifiers(self, text: str, spans: list[Span]) -> None:
        low = text.lower()
        cues = {name: gate.search(low) is not None for name, gate in _IDENTIFIER_GATE_RES.items()}
        if cues["ssn"] or self._ssn_gate.search(text):
            self._find_ssns(text, spans)
        if cues["licence"]:
            for match in self._licence_cue.finditer(text):
                spans.append(Span(match.start(1), match.end(1), ID_NUMBER, 0.85))
        if cues["account"]:
            for match in self._account_cue.finditer(text):
                spans.append(Span(match.start(1), match.end(1), ID_NUMBER, 0.85))
        if "+" in text:
            for match in self._phone_intl.finditer(text):
                digits = sum(ch.isdigit() for ch in match.group(1))
                if 8 <= digits <= 15:
                    spans.append(Span(match.start(1), match.end(1), PHONE, 0.9))
        if cues["phone"]:
            self._find_grouped_phones(text, spans)
        if cues["pager"]:
            for match in self._pager_cue.finditer(text):
                spans.append(Span(match.start(1), match.end(1), PHONE, 0.85))
        if self._long_digits.search(text):
            for match in self._card.finditer(text):
                digits = re.sub(r"\D", "", match.group(1))
                if 13 <= len(digits) <= 19 and digits[0] in "3456" and _luhn(digits):
                    spans.append(Span(match.start(1), match.end(1), ID_NUMBER, 0.9))
        if self._iban_gate.search(text):
            for match in self._iban.finditer(text):
                if _iban_ok(match.group(1)):
                    spans.append(Span(match.start(1), match.end(1), ID_NUMBER, 1.0))
        for match in (self._record_column.finditer(text) if "\n" in text.strip() or "|" in text or "  " in text.strip()
                      else ()):  # a note's layout, not a lone field value ("20002749" in a DICOM tag)
            value = match.group(1)
            line_start = text.rfind("\n", 0, match.start(1)) + 1
            line_end = text.find("\n", match.end(1))
            alone = not text[line_start:match.start(1)].strip() and not text[match.end(1):len(text) if line_end < 0 else line_end].strip()
            if alone and text[:line_start].count("\n") > 12 and not re.search(r"_{5,}|-{5,}|={5,}", text[max(0, line_start - 200):line_start]):
                continue  # a number on a line of its own: a record number near the top of a note or after a rule line
            digits = sum(ch.isdigit() for ch in value)
            if digits < (7 if value.isdigit() else 6) or digits > 16 or re.fullmatch(r"\d{3}-\d{3}-\d{4}|\d{3}-\d{4}|\d{4}-\d{4}|\d{1,4}[/\-]\d{1,2}[/\-]\d{2,4}"
                                                          r"|\d{2,4}[/\-]\d{1,2}[/\-]\d{1,2}", value):
                continue  # phone numbers, time ranges (0700-1900) and dates have their own rules
            spans.append(Span(match.start(1), match.end(1), MRN, 0.8))
        for match in self._taiwan_id.finditer(text):
            if is_valid_taiwan_id(match.group(1)):
                spans.append(Span(match.start(1), match.end(1), ID_NUMBER, 1.0))

    def _find_grouped_phones(self, text: str, spans: list[Span]) -> None:
        for match in self._phone_groups.finditer(text):
            value = match.group(1)
            digits = sum(ch.isdigit() for ch in value)
            if not 7 <= digits <= 12:
                continue
            before = text[max(0, match.start(1) - 40):match.start(1)]
            if self._phone_context.search(before) or self._phone_after.match(text[match.end(1):match.end(1) + 12]):
                spans.append(Span(match.start(1), match.end(1), PHONE, 0.85))

    def _find_ssns(self, text: str, spans: list[Span]) -> None:
        for match in self._ssn.finditer(text):
            value = match.group()
            if match.group(2) == " " and not re.search(r"(?i)(ssn|social|ss#)\W{0,12}$", text[max(0, match.start() - 24):match.start()]):
                continue
            if _valid_ssn(value):
                spans.append(Span(match.start(), match.end(), ID_NUMBER, 0.95 if match.group(2) == "-" else 0.9))
        for match in self._ssn_cue.finditer(text):
            if _valid_ssn(match.group(1)):
                spans.append(Span(match.start(1), match.end(1), ID_NUMBER, 0.95))
