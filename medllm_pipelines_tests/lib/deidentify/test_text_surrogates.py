"""Surrogates: same value -> same surrogate under a key, readable, and of the same type and shape."""

from __future__ import annotations

import itertools
import re
from datetime import date, timedelta

import pytest

from medllm_pipelines.lib.deidentify.text import (
    SurrogateFactory,
    build_detector,
    deidentify_text,
    deidentify_texts,
    is_valid_resident_id,
    patient_date_shift,
    shift_date_text,
)
from medllm_pipelines.lib.synth.people import make_resident_id
from medllm_pipelines_tests.lib.deidentify.conftest import DeidHospital, keyed_digest

KEY = keyed_digest(b"unit-test-surrogate-key")
OTHER_KEY = keyed_digest(b"another-key")
RID = make_resident_id("420106", date(1962, 11, 27), 892)


def test_same_value_same_surrogate_within_a_patient_and_different_under_another_key() -> None:
    first = SurrogateFactory(KEY, scope="p_1", date_shift_days=10)
    again = SurrogateFactory(KEY, scope="p_1", date_shift_days=10)  # a later run, same key
    for label, value in (("NAME", "廖霞思"), ("NAME", "Michael Huerta"), ("ID_NUMBER", RID),
                         ("PHONE", "15336426039"), ("ADDRESS", "湖北省武汉市武昌区西宁路52号"), ("MRN", "RV1000019")):
        assert first(label, value) == first(label, value) == again(label, value)
        assert first(label, value) != value
    other_key = SurrogateFactory(OTHER_KEY, scope="p_1")
    names = ["廖霞思", "夏忠庆", "Michael Huerta", "Nicole Young", "杨斌", "Hai Dai"]
    assert sum(first("NAME", n) != other_key("NAME", n) for n in names) >= len(names) - 1
    other_patient = SurrogateFactory(KEY, scope="p_2")
    assert sum(first("NAME", n) != other_patient("NAME", n) for n in names) >= len(names) - 1


def test_name_tokens_stay_consistent_when_a_name_is_shortened() -> None:
    surrogate = SurrogateFactory(KEY, scope="p_1")
    full = surrogate("NAME", "Michael Huerta")
    assert surrogate("NAME", "Michael") == full.split()[0]  # "Discussed results with Michael"
    assert surrogate("NAME", "HUERTA") == full.split()[1].upper()


def test_surrogates_keep_type_and_shape() -> None:
    surrogate = SurrogateFactory(KEY, scope="p_1", date_shift_days=-40)
    zh = surrogate("NAME", "欧阳明")
    assert len(zh) == 3 and all("\u4e00" <= ch <= "\u9fff" for ch in zh)
    assert len(surrogate("NAME", "杨斌")) == 2

    new_id = surrogate("ID_NUMBER", RID)
    assert is_valid_resident_id(new_id) and new_id != RID
    assert int(new_id[16]) % 2 == int(RID[16]) % 2  # the sex digit's parity is kept
    spaced = f"{RID[:6]} {RID[6:14]} {RID[14:]}"
    assert re.fullmatch(r"\d{6} \d{8} \d{3}[\dX]", surrogate("ID_NUMBER", spaced))
    full_width = "".join(chr(ord(c) + 0xFEE0) if c.isdigit() else c for c in RID)
    assert all("\uff10" <= ch <= "\uff19" or ch == "\uff38" for ch in surrogate("ID_NUMBER", full_width))

    assert re.fullmatch(r"1[3-9]\d{9}", surrogate("PHONE", "15336426039"))
    assert re.fullmatch(r"\+86 1[3-9]\d \d{4} \d{4}", surrogate("PHONE", "+86 138 0013 8000"))
    assert re.fullmatch(r"\d{3}\.555\.01\d\dx\d{5}", surrogate("PHONE", "580.684.4631x93844"))  # fictional range
    assert re.fullmatch(r"RV\d{7}", surrogate("MRN", "RV1000019"))
    assert surrogate("EMAIL", "xiasiliao51@hotmail.com").endswith("@example.org")
    assert "号" in surrogate("ADDRESS", "湖北省武汉市武昌区西宁路52号")
    assert re.fullmatch(r"\d+ \w+ \w+, \w+, [A-Z]{2} \d{5}", surrogate("ADDRESS", "7481 Tony Fort, Staceyborough, ME 89284"))
    assert surrogate("DATE", "2024-03-05") == (date(2024, 3, 5) - timedelta(days=40)).isoformat()


@pytest.mark.parametrize(
    ("value", "days", "expected"),
    [
        ("2024-03-05", 30, "2024-04-04"),
        ("2024/3/5", -5, "2024/2/29"),
        ("2024年3月5日", 1, "2024年3月6日"),
        ("03/05/2024", 365, "03/05/2025"),
        ("March 5, 2024", 31, "April 5, 2024"),
        ("5 Mar 2024", -6, "28 Feb 2024"),
    ],
)
def test_dates_shift_in_their_own_format(value: str, days: int, expected: str) -> None:
    assert shift_date_text(value, days) == expected


@pytest.mark.parametrize(
    ("value", "shifted"),
    [
        ("3/14", "4/13"), ("03/20/19", "04/19/19"), ("Jan 5", "Feb 4"), ("January of 2020", "February of 2020"),
        ("Tuesday", "Thursday"), ("3月5日", "4月4日"), ("Oct. 3rd, 2019 at 10:30 am", "Nov. 2nd, 2019 at 10:30 am"),
    ],
)
def test_new_date_forms_shift_in_their_own_format(value: str, shifted: str) -> None:
    assert shift_date_text(value, 30) == shifted


def test_relative_chinese_dates_are_not_shifted_but_placeholdered() -> None:
    assert shift_date_text("去年十月", 30) is None  # SurrogateFactory writes [DATE]


def test_patient_date_shift_is_keyed_nonzero_and_bounded() -> None:
    shifts = [patient_date_shift(KEY, f"p_{i}", max_days=30) for i in range(200)]
    assert all(-30 <= s <= 30 and s != 0 for s in shifts)
    assert len(set(shifts)) > 20
    assert patient_date_shift(KEY, "p_7", max_days=30) == shifts[7]
    assert SurrogateFactory(KEY, scope="p_7").date_shift_days == patient_date_shift(KEY, "p_7")


def test_deidentified_note_keeps_clinical_text_and_loses_every_identifier(deid_hospital: DeidHospital) -> None:
    detector = build_detector()
    identity_of = {(row["person_index"]): row for row in deid_hospital.identities}
    notes = [t for t in deid_hospital.texts if t.kind == "note"][:40]
    for note in notes:
        surrogate = SurrogateFactory(KEY, scope=f"p_{note.person_index}", date_shift_days=21)
        clean, spans = deidentify_text(note.text, detector=detector, surrogate_for=surrogate)
        identity = identity_of[note.person_index]
        for key in ("name_zh", "name_en", "resident_id", "mrn", "phone", "address"):
            if identity.get(key):
                assert identity[key] not in clean, key
        assert spans
        # everything between identifiers is unchanged: the note stays readable
        kept = [note.text[a.end:b.start] for a, b in itertools.pairwise(spans)]
        assert all(piece in clean for piece in kept)
        # the same patient's name gets the same surrogate every time it appears
        name = identity["name_zh"] if note.language == "zh" and identity["name_zh"] else identity["name_en"]
        assert clean.count(surrogate("NAME", name)) == note.text.count(name)


def test_batched_and_single_deidentification_agree(deid_hospital: DeidHospital) -> None:
    detector = build_detector()
    surrogate = SurrogateFactory(KEY, scope="batch")
    texts = [t.text for t in deid_hospital.texts[:30]]
    batched = deidentify_texts(texts, detector=detector, surrogate_for=surrogate)
    assert batched == [deidentify_text(t, detector=detector, surrogate_for=surrogate) for t in texts]
