"""Validated pattern recognisers: what a careless regex would miss or over-match."""

from __future__ import annotations

from datetime import date

import pytest

from medllm_pipelines.lib.deidentify.text import (
    build_detector,
    is_valid_resident_id,
    load_pattern_config,
    normalise,
    resident_id_check_char,
)
from medllm_pipelines.lib.deidentify.text.detector import Detector
from medllm_pipelines.lib.synth.people import make_resident_id
from medllm_pipelines_tests.lib.deidentify.text_spans import labelled

RID = make_resident_id("420106", date(1962, 11, 27), 892)  # valid GB 11643 check character
BAD_RID = RID[:17] + ("0" if RID[17] != "0" else "1")
FULL_WIDTH_RID = "".join(chr(ord(c) + 0xFEE0) if c.isdigit() else c for c in RID)


@pytest.fixture(scope="module")
def detector() -> Detector:
    return build_detector()


def found(detector: Detector, text: str) -> list[tuple[str, str]]:
    return [(text[s.start:s.end], s.label) for s in detector.detect(text)]


def test_check_character_validation() -> None:
    assert is_valid_resident_id(RID)
    assert not is_valid_resident_id(BAD_RID)
    assert is_valid_resident_id("11010519491231002X")  # check character X
    assert resident_id_check_char(RID[:17]) == RID[17]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (f"身份证号{RID}，", RID),
        (f"身份证 {RID[:6]} {RID[6:14]} {RID[14:]}", f"{RID[:6]} {RID[6:14]} {RID[14:]}"),  # split by spaces
        (f"ID {RID[:4]}-{RID[4:8]}-{RID[8:12]}-{RID[12:16]}-{RID[16:]}",
         f"{RID[:4]}-{RID[4:8]}-{RID[8:12]}-{RID[12:16]}-{RID[16:]}"),  # split by hyphens
        (f"患者证件{FULL_WIDTH_RID}。", FULL_WIDTH_RID),  # full-width digits, offsets in the original text
        (f"no cue at all {RID}", RID),  # a valid check character needs no cue
    ],
)
def test_resident_ids_are_found_in_every_layout(detector: Detector, text: str, expected: str) -> None:
    assert (expected, "ID_NUMBER") in found(detector, text)


def test_a_wrong_check_character_is_an_id_only_after_an_id_cue(detector: Detector) -> None:
    assert found(detector, f"标本编号{BAD_RID}。") == []  # an 18-digit lab number is not an ID
    assert found(detector, f"身份证号：{BAD_RID}") == [(BAD_RID, "ID_NUMBER")]  # a mistyped ID still is
    assert [s.score for s in build_detector().detect(f"身份证号：{BAD_RID}")] == [0.8]


@pytest.mark.parametrize(
    ("text", "phone"),
    [
        ("联系电话13800138000。", "13800138000"),
        ("请拨打 +86 138 0013 8000 联系", "+86 138 0013 8000"),
        ("电话：0086-138-0013-8000", "0086-138-0013-8000"),
        ("检验备注：标本溶血，已电话通知家属138-0013-8000重采", "138-0013-8000"),  # a phone in a lab comment
        ("座机(027)85726123", "(027)85726123"),
        ("office 027-85726123", "027-85726123"),
        ("reached at 580.684.4631x93844.", "580.684.4631x93844"),
        ("call (555)123-4567 today", "(555)123-4567"),
        ("Phone: 5806844631", "5806844631"),  # bare 10 digits: only after a cue
        ("联系电话１３８００１３８０００", "１３８００１３８０００"),  # full width
    ],
)
def test_phones(detector: Detector, text: str, phone: str) -> None:
    assert (phone, "PHONE") in found(detector, text)


@pytest.mark.parametrize("text", ["血压138/90 mmHg，空腹血糖 7.4 mmol/L", "HbA1c 73 mmol/mol, BMI 24.0.",
                                  "Metformin 500 mg tablet", "20002749", "上腹部隐痛11周。", "诊断：高血压；肥胖。",
                                  "安全", "lab 12345678901"])
def test_clinical_numbers_and_words_are_left_alone(detector: Detector, text: str) -> None:
    assert found(detector, text) == []


@pytest.mark.parametrize(
    ("text", "address"),
    [
        ("现住湖北省武汉市武昌区西宁路52号3栋2单元1201室。", "湖北省武汉市武昌区西宁路52号3栋2单元1201室"),
        ("，现住北京市东城区西安路74号。", "北京市东城区西安路74号"),
        ("家住王街85号", "王街85号"),  # the cue is not part of the address
        ("The patient lives at 湖北省武汉市硚口区香港路218号8栋2单元1603室.", "湖北省武汉市硚口区香港路218号8栋2单元1603室"),
        ("lives at 7481 Tony Fort Suite 235, Staceyborough, ME 89284.",
         "7481 Tony Fort Suite 235, Staceyborough, ME 89284"),
        ("moved to 12 Baker Street last year", "12 Baker Street"),
    ],
)
def test_addresses(detector: Detector, text: str, address: str) -> None:
    assert found(detector, text) == [(address, "ADDRESS")]


@pytest.mark.parametrize(
    ("text", "name"),
    [
        ("患者夏忠庆，男，46岁", "夏忠庆"),
        ("现病史：夏忠庆自述近期睡眠欠佳", "夏忠庆"),
        ("医师：江露思", "江露思"),
        ("你好，我叫廖霞思，手机号", "廖霞思"),
        ("胸部平扫 廖霞思", "廖霞思"),  # no cue: a name standing alone in a descriptor
        ("患者欧阳明，女", "欧阳明"),  # compound surname
        ("Signed: Nicole Young, MD", "Nicole Young"),
        ("Michael Huerta (MRN RV1000019) is a 69-year-old male", "Michael Huerta"),
        ("seen today by Dr. Hale", "Hale"),
        ("Chest CT Michael Huerta", "Michael Huerta"),  # a common given name starts it
    ],
)
def test_names(detector: Detector, text: str, name: str) -> None:
    assert (name, "NAME") in found(detector, text)


def test_a_name_found_once_is_found_everywhere_in_the_text(detector: Detector) -> None:
    text = "Michael Huerta (MRN RV1000019) is seen. Plan discussed with Michael by phone. Huerta agrees."
    names = [value for value, label in found(detector, text) if label == "NAME"]
    assert names == ["Michael Huerta", "Michael", "Huerta"]


@pytest.mark.parametrize(
    ("text", "label", "value"),
    [
        ("mail zhang.san88@163.com please", "EMAIL", "zhang.san88@163.com"),
        ("门诊病历（2024-11-14）", "DATE", "2024-11-14"),
        ("于2024年11月14日就诊", "DATE", "2024年11月14日"),
        ("seen on March 5, 2024.", "DATE", "March 5, 2024"),
        ("seen on 11/14/2024.", "DATE", "11/14/2024"),
        ("MRN RV1000019", "MRN", "RV1000019"),
        ("门诊号20002749", "MRN", "20002749"),  # bare 8 digits only after a cue
        ("JH0601959", "MRN", "JH0601959"),
    ],
)
def test_emails_dates_and_record_numbers(detector: Detector, text: str, label: str, value: str) -> None:
    assert (value, label) in found(detector, text)


def test_impossible_dates_are_not_dates(detector: Detector) -> None:
    assert found(detector, "ratio 2024-13-45 and 2023-02-30") == []


def test_record_number_formats_are_configured_per_institution() -> None:
    only_rvic = build_detector(institutions=["rvic"])
    assert found(only_rvic, "JH0601959") == []  # jhsq's format is not enabled
    assert found(only_rvic, "RV1000019") == [("RV1000019", "MRN")]
    onboarded = build_detector(extra_mrn_patterns={"xyzh": [{"pattern": r"XY\d{6}", "context": "optional"}]})
    assert found(onboarded, "record XY123456 filed") == [("XY123456", "MRN")]
    assert load_pattern_config().version  # the data file is versioned


def test_spans_map_back_through_normalisation() -> None:
    view = normalise("电话：１３８ ００１３ ８０００。")
    assert view.text == "电话:138 0013 8000。"
    assert view.to_original(3, 16) == (3, 16)
    expanding = normalise("①号 ﬁle")  # NFKC changes lengths here
    assert expanding.text.startswith("1号")
    assert expanding.to_original(0, 1) == (0, 1)


# --- Chinese names in running text ----------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "name"),
    [
        ("老伴儿王秀英说他昨晚咳嗽加重。", "王秀英"),
        ("病人叫李建国，今年68岁。", "李建国"),
        ("邻床患者张志强也有类似症状。", "张志强"),
        ("由儿子刘伟陪同来院。", "刘伟"),
        ("欧阳娜娜主诉头痛三天。", "欧阳娜娜"),
        ("今日王医生查房", "王"),
        ("请张主任会诊", "张"),
    ],
)
def test_chinese_names_in_running_text(detector: Detector, text: str, name: str) -> None:
    assert name in labelled(detector, text, "NAME"), found(detector, text)
    assert "查房" not in labelled(detector, text, "NAME")
