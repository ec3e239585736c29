"""Outpatient consultation -> structured note pairs: varied dialogues, and a note that follows from what was said."""

from __future__ import annotations

import re

import pytest

from medllm_pipelines.lib.common.structured_note import parse_note, render_note
from medllm_pipelines.lib.synth.consultations import (
    build_consultation,
    build_consultations,
    duration_in_note,
    load_consultation_vocabulary,
)
from medllm_pipelines.lib.synth.determinism import stream

PAIRS = build_consultations(280, stream(5, "consultations"))


def test_the_same_seed_gives_the_same_pairs() -> None:
    again = build_consultations(280, stream(5, "consultations"))
    assert [p.as_record() for p in again] == [p.as_record() for p in PAIRS]


def test_every_condition_and_both_languages_are_covered_evenly() -> None:
    conditions = load_consultation_vocabulary()["conditions"]
    per_condition = {key: sum(p.condition == key for p in PAIRS) for key in conditions}
    assert set(per_condition.values()) == {280 // len(conditions)}
    assert sum(p.language == "zh" for p in PAIRS) == 140


def test_dialogues_vary_more_than_templates_would() -> None:
    openings = {p.turns[1]["text"] for p in PAIRS}
    assert len(openings) > 150  # complaint phrasing x duration x order x language
    assert len({p.dialogue_text() for p in PAIRS}) == len(PAIRS)


@pytest.mark.parametrize("index", range(0, 280, 23))
def test_the_gold_note_states_only_what_the_dialogue_says(index: int) -> None:
    pair = PAIRS[index]
    spec = load_consultation_vocabulary()["conditions"][pair.condition]
    text = pair.dialogue_text()
    assert pair.note.icd10_codes == (spec["icd10"],)
    assert spec["icd10"] not in text  # the code is the writer's knowledge, never said
    for item in pair.note.items("medications") + pair.note.items("plan"):
        assert item in text
    for finding in pair.note.items("findings"):
        for number in re.findall(r"\d+(?:\.\d+)?", finding):
            if not re.fullmatch(r"[4-6]", number):  # the V4-V6 leads are spelled "V4 to V6"
                assert number in text
    assert parse_note(render_note(pair.note)).fields == {k: v for k, v in pair.note.fields.items()}


def test_a_denied_symptom_is_written_as_a_negation() -> None:
    negated = [item for p in PAIRS if p.language == "en" for item in p.note.items("history") if item.startswith("no ")]
    negated_zh = [i for p in PAIRS if p.language == "zh" for i in p.note.items("history") if i.startswith("无")]
    assert negated and negated_zh


@pytest.mark.parametrize(("days", "en", "zh"), [(3, "3 days", "3天"), (7, "1 week", "1周"), (14, "2 weeks", "2周"),
                                                (30, "1 month", "1个月"), (1, "1 day", "1天")])
def test_durations_are_written_in_digits_in_the_largest_unit(days: int, en: str, zh: str) -> None:
    assert duration_in_note(days, "en") == en and duration_in_note(days, "zh") == zh


def test_a_given_name_is_said_and_never_in_the_note() -> None:
    pair = build_consultation("c-1", "en", stream(1, "name"), condition="migraine", patient_name="Ada Lovelace")
    assert "Ada Lovelace" in pair.turns[1]["text"] and "Ada" not in render_note(pair.note)


def test_an_unknown_language_is_refused() -> None:
    with pytest.raises(ValueError, match="language"):
        build_consultation("c-1", "fr", stream(1, "x"))


ROUNDS = build_consultations(70, stream(6, "rounds"), kinds=("ward_round",))


def test_a_ward_round_note_follows_the_conversation() -> None:
    from medllm_pipelines.lib.synth.consultations import WARD_ROUND

    assert {p.kind for p in ROUNDS} == {WARD_ROUND}
    for pair in ROUNDS:
        text = pair.dialogue_text()
        day = re.search(r"\d+", pair.note.items("chief_complaint")[0]).group()
        assert f"day {day}" in text or f"第{day}天" in text
        assert len(pair.note.items("history")) >= 1
        for item in pair.note.items("medications"):
            assert item.removeprefix("continue ").removeprefix("继续") in text
    states = {item.split()[-1] for p in ROUNDS if p.language == "en" for item in p.note.items("history")}
    assert {"improved", "worse"} <= states


def test_both_kinds_alternate_when_asked_for() -> None:
    mixed = build_consultations(8, stream(1, "mixed"), kinds=("outpatient_consultation", "ward_round"))
    assert [p.kind for p in mixed].count("ward_round") == 4
    with pytest.raises(ValueError, match="unknown pair kinds"):
        build_consultations(2, stream(1, "x"), kinds=("operation_dictation",))


def test_the_hospital_delivers_recorded_visits_with_signed_notes_and_keeps_the_gold_apart(clean_hospital) -> None:
    truth = {row["visit_id"]: row for row in clean_hospital.jsonl("_truth/consultations.jsonl")}
    identities = clean_hospital.identities
    visits = []
    delivering = {code: c for code, c in clean_hospital.manifest.counts.items() if "consultations" in c}
    assert len(delivering) == 3  # the FHIR institutions; whsy sends HL7 v2 only
    for code, counts in delivering.items():
        rows = clean_hospital.jsonl(f"{code}/consultations/consultations.jsonl")
        assert counts["consultations"] == len(rows) > 0
        visits += [(code, row) for row in rows]
    patients = sum(c["patient_records"] for c in delivering.values())
    assert 0.2 < len(visits) / patients < 0.6  # CONSULTATION_RATE 0.4
    assert set(truth) == {row["visit_id"] for _, row in visits}
    kinds = {row["kind"] for _, row in visits}
    assert kinds == {"outpatient_consultation", "ward_round"}
    for code, row in visits:
        gold = truth[row["visit_id"]]
        # the signed record is the gold note, rendered; the gold fields themselves stay under _truth/
        assert parse_note(row["record_text"], language=row["language"]).fields == {
            k: tuple(v) for k, v in gold["note_fields"].items()}
        assert {"note_fields", "condition"}.isdisjoint(row)
    said = [(code, row) for code, row in visits if truth[row["visit_id"]]["said_name"]]
    assert said, "some patients say their name: an identifier the release has to remove"
    names = {(i["institution"], i["mrn"]): {i.get("name_zh"), i.get("name_en")} - {None} for i in identities}
    for code, row in said:
        spoken = " ".join(t["text"] for t in row["turns"])
        assert any(name in spoken for name in names[(code, row["patient_mrn"])])
