"""Silver spans from known identities, per-patient keyed surrogates, dialogue de-identification."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from medllm_pipelines.lib.deidentify.text import build_detector
from medllm_pipelines.lib.deidentify.text.silver import (
    AvoidingSurrogates,
    deidentify_turns,
    known_identifiers,
    merge_identities,
    patient_surrogates,
    project_identifiers,
    project_person,
)
from medllm_pipelines_tests.lib.deidentify.conftest import DeidHospital

ZH_IDENTITY = {
    "name_zh": "王建国", "name_en": "Wang Jianguo", "resident_id": "11010519491231002X", "mrn": "MRN0012345",
    "phone": "13800138000", "email": "wjg@example.com", "address": "北京市朝阳区建国路88号", "birth_date": "1949-12-31",
}
EN_IDENTITY = {"name_en": "Ann Li", "name_zh": None, "phone": "(415) 555-0134", "mrn": "884213", "address": float("nan")}


def _values(text: str, spans) -> list[tuple[str, str]]:
    return [(text[s.start:s.end], s.label) for s in spans]


def hmac_many_with(key: bytes):
    return lambda values: [hmac.new(key, v.encode("utf-8"), hashlib.sha256).hexdigest() for v in values]


def test_a_chinese_note_gets_every_known_identifier_once() -> None:
    text = ("门诊病历（2024-03-05）\n患者王建国，男，74岁，身份证号11010519491231002X，联系电话13800138000，"
            "现住北京市朝阳区建国路88号。\n现病史：王建国自述无不适。\n医师：李明")
    found = _values(text, project_identifiers(text, ZH_IDENTITY, note_layout=True))
    assert found == [("2024-03-05", "DATE"), ("王建国", "NAME"), ("11010519491231002X", "ID_NUMBER"),
                     ("13800138000", "PHONE"), ("北京市朝阳区建国路88号", "ADDRESS"), ("王建国", "NAME"), ("李明", "NAME")]


def test_latin_names_are_whole_words_and_titles_are_not_part_of_a_signature() -> None:
    text = "Ann Li (MRN 884213) had her annual review.\nDiscussed results with Ann by phone.\nSigned: Dr. Jo Park Jr., MD"
    found = _values(text, project_identifiers(text, EN_IDENTITY, note_layout=True))
    assert found == [("Ann Li", "NAME"), ("884213", "MRN"), ("Ann", "NAME"), ("Jo Park", "NAME")]


def test_dialogues_get_no_layout_spans() -> None:
    text = "2024-03-05 我叫王建国\n医师：李明"
    assert _values(text, project_identifiers(text, ZH_IDENTITY)) == [("王建国", "NAME")]


def test_a_person_registered_twice_is_found_under_both_records() -> None:
    merged = merge_identities([{**ZH_IDENTITY}, {**ZH_IDENTITY, "mrn": "ZY778899", "phone": None}])
    assert merged["mrn"] == ["MRN0012345", "ZY778899"] and merged["phone"] == ["13800138000"]
    text = "住院号ZY778899，门诊号MRN0012345，电话13800138000"
    assert {v for v, _ in _values(text, project_person(text, merged))} == {"ZY778899", "MRN0012345", "13800138000"}


def test_known_identifiers_hold_full_names_only() -> None:
    known = known_identifiers(merge_identities([EN_IDENTITY]))
    assert known.values["NAME"] == ("Ann Li",)
    assert "ADDRESS" not in known.values  # a NaN from the table is not a value
    assert [s.label for s in known.find("call (415) 555 0134 about the annual visit")] == ["PHONE"]


def test_masking_the_silver_spans_leaves_no_identity_in_the_synthetic_texts(deid_hospital: DeidHospital) -> None:
    identity = {(row["institution"], row["person_index"]): row for row in deid_hospital.identities}
    fields = ("name_zh", "name_en", "resident_id", "mrn", "phone", "email", "address")
    checked = 0
    for text in deid_hospital.texts:
        row = identity[(text.institution, text.person_index)]
        spans = project_identifiers(text.text, row, note_layout=text.kind == "note")
        masked = list(text.text)
        for span in spans:
            masked[span.start:span.end] = ["\x00"] * (span.end - span.start)
        rest = "".join(masked)
        assert not [f for f in fields if row.get(f) and row[f] in rest], text.text_id
        checked += bool(spans)
    assert checked > 100


def test_surrogates_are_consistent_within_a_patient_and_keyed() -> None:
    surrogates = patient_surrogates(["p1", "p2", "p1"], hmac_many_with(b"key-a"))
    assert sorted(surrogates) == ["p1", "p2"]
    first = surrogates["p1"]("NAME", "王建国")
    assert first == surrogates["p1"]("NAME", "王建国") and first != "王建国" and len(first) == 3
    assert surrogates["p2"]("NAME", "王建国") != first  # scope: another patient, another surrogate
    again = patient_surrogates(["p1"], hmac_many_with(b"key-a"))["p1"]
    assert again("NAME", "王建国") == first  # the same key gives the same mapping across runs
    other_key = patient_surrogates(["p1"], hmac_many_with(b"key-b"))["p1"]
    assert other_key("NAME", "王建国") != first  # no constant key: the mapping follows the Vault key


def test_dates_move_by_one_offset_per_patient() -> None:
    surrogates = patient_surrogates(["p1"], hmac_many_with(b"key-a"))["p1"]
    import datetime as dt

    shifts = {(dt.date.fromisoformat(surrogates("DATE", d)) - dt.date.fromisoformat(d)).days
              for d in ("2024-03-05", "2021-11-30", "1949-12-31")}
    assert len(shifts) == 1 and shifts != {0}


def test_a_surrogate_that_is_a_real_patients_identifier_is_redrawn() -> None:
    plain = patient_surrogates(["p1"], hmac_many_with(b"key-a"))["p1"]
    clash = plain("NAME", "王建国")
    avoiding = patient_surrogates(["p1"], hmac_many_with(b"key-a"), forbidden={clash, clash[:2]})["p1"]
    redrawn = avoiding("NAME", "王建国")
    assert redrawn != clash and clash[:2] not in redrawn and avoiding.redrawn == 1


def test_no_safe_surrogate_falls_back_to_a_placeholder() -> None:
    always = AvoidingSurrogates([lambda label, value: "张三"], forbidden={"张三"})
    assert always("NAME", "王建国") == "[NAME]"


@pytest.mark.parametrize("turns", [
    ["您好，请问哪里不舒服？", "你好，我叫王建国，手机号13800138000。头晕三天。", "好的。", "有事打我电话13800138000，我叫王建国。"],
])
def test_dialogue_turns_are_deidentified_with_one_surrogate_per_value(turns: list[str]) -> None:
    surrogate_for = patient_surrogates(["p1"], hmac_many_with(b"key-a"))["p1"]
    out, spans = deidentify_turns(turns, detector=build_detector(), surrogate_for=surrogate_for,
                                  known=known_identifiers(merge_identities([ZH_IDENTITY])))
    assert len(out) == len(turns) and out[0] == turns[0] and out[2] == turns[2]
    joined = "\n".join(out)
    assert "王建国" not in joined and "13800138000" not in joined
    name, phone = surrogate_for("NAME", "王建国"), surrogate_for("PHONE", "13800138000")
    assert out[1].count(name) == 1 and out[3].count(name) == 1 and out[3].count(phone) == 1
    assert {s.label for s in spans} == {"NAME", "PHONE"}
