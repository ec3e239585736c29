"""Structured notes written, read back and scored (the note generator's target: field-level F1 >= 0.85)."""

from __future__ import annotations

import pytest

from medllm_pipelines.lib.common.structured_note import (
    StructuredNote,
    note_from_mapping,
    parse_note,
    render_note,
)
from medllm_pipelines.lib.evaluate.note_metrics import rouge_l, rouge_tokens, score_notes

GOLD_EN = StructuredNote({
    "chief_complaint": ("chest pain for 2 days",),
    "history": ("pain on exertion", "no fever"),
    "findings": ("BP 150/90",),
    "assessment": ("Angina pectoris (I20.9)", "Type 2 diabetes mellitus (E11.9)"),
    "medications": ("aspirin 100 mg daily",),
    "plan": ("ECG", "troponin"),
})
GOLD_ZH = StructuredNote({
    "chief_complaint": ("咳嗽三天",),
    "assessment": ("急性支气管炎 (J20.9)",),
    "plan": ("血常规", "胸片"),
}, language="zh")


@pytest.mark.parametrize("note", [GOLD_EN, GOLD_ZH], ids=["en", "zh"])
def test_a_rendered_note_reads_back_to_the_same_fields(note: StructuredNote) -> None:
    text = render_note(note)
    back = parse_note(text)
    assert back.language == note.language
    assert {k: v for k, v in back.fields.items()} == {k: v for k, v in note.fields.items() if v}
    assert back.icd10_codes == note.icd10_codes


def test_codes_come_from_the_assessment() -> None:
    assert GOLD_EN.icd10_codes == ("E11.9", "I20.9")
    assert GOLD_ZH.icd10_codes == ("J20.9",)


def test_a_note_a_generator_wrote_loosely_is_still_read() -> None:
    text = "Some preamble the model added\nchief complaint : Chest pain for 2 days.\nPLAN: ECG ; troponin\n诊断：心绞痛 (I20.9)"
    note = parse_note(text)
    assert note.items("chief_complaint") == ("Chest pain for 2 days",)
    assert note.items("plan") == ("ECG", "troponin")
    assert note.icd10_codes == ("I20.9",)


def test_identical_notes_score_one_and_disjoint_notes_zero() -> None:
    perfect = score_notes([GOLD_EN, GOLD_ZH], [GOLD_EN, GOLD_ZH])
    assert perfect.field_f1 == perfect.icd10_exact_match == 1.0
    assert perfect.rouge_l == pytest.approx(1.0)
    empty = StructuredNote({})
    nothing = score_notes([empty], [GOLD_EN])
    assert nothing.field_recall == 0.0 and nothing.field_f1 == 0.0 and nothing.icd10_exact_match == 0.0


def test_field_scores_count_items_per_field() -> None:
    predicted = StructuredNote({**GOLD_EN.fields, "plan": ("ecg", "chest x-ray"),  # one of two right, case folded
                                "assessment": ("Angina pectoris (I20.9)",)})    # one diagnosis missed
    scores = score_notes([predicted], [GOLD_EN])
    # gold items 9, predicted 8, right 7: P 7/8, R 7/9
    assert scores.field_precision == pytest.approx(7 / 8)
    assert scores.field_recall == pytest.approx(7 / 9)
    assert scores.per_field_f1["plan"] == pytest.approx(0.5)
    assert scores.icd10_exact_match == 0.0


def test_rouge_l_is_the_f_measure_of_the_longest_common_subsequence() -> None:
    a, b = "the patient has chest pain on exertion", "patient reports chest pain at rest"
    # LCS "patient chest pain": P = 3/7, R = 3/6, F1 = 6/13
    assert rouge_l(a, b) == pytest.approx(6 / 13, abs=1e-9)


def test_rouge_l_sees_chinese_characters() -> None:
    assert rouge_tokens("主诉：咳嗽 3 days") == ["主", "诉", "咳", "嗽", "3", "days"]
    assert rouge_l("咳嗽三天", "咳嗽三天") == pytest.approx(1.0)
    assert rouge_l("咳嗽三天", "腹痛两周") == 0.0


def test_notes_must_pair_up() -> None:
    with pytest.raises(ValueError, match="must pair up"):
        score_notes([GOLD_EN], [GOLD_EN, GOLD_ZH])


def test_gold_fields_stored_as_strings_or_lists() -> None:
    note = note_from_mapping({"plan": "ECG; troponin", "findings": ["BP 150/90"], "unrelated": "x"})
    assert note.items("plan") == ("ECG", "troponin") and note.items("findings") == ("BP 150/90",)
