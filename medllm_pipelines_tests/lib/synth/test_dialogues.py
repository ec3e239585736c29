"""Triage dialogues and their three annotators, as the labelling stage will read them."""

from __future__ import annotations

from collections import Counter, defaultdict

import pytest

from medllm_pipelines.lib.synth.dialogues import ANNOTATOR_ERROR_RATES, DEPARTMENTS, LABELS, intended_agreement
from medllm_pipelines_tests.lib.synth.conftest import Hospital


@pytest.mark.parametrize(("institution", "language"), [("hzsf", "zh"), ("rvic", "en"), ("jhsq", "zh")])
def test_dialogue_lines_follow_the_schema(clean_hospital: Hospital, institution: str, language: str) -> None:
    mrns = {row["mrn"] for row in clean_hospital.identities if row["institution"] == institution}
    dialogues = clean_hospital.jsonl(f"{institution}/dialogues/dialogues.jsonl")
    assert dialogues
    for dialogue in dialogues:
        assert set(dialogue) == {"dialogue_id", "patient_mrn", "language", "turns", "department"}
        assert dialogue["language"] == language
        assert dialogue["patient_mrn"] in mrns
        assert dialogue["department"] in LABELS
        assert {turn["speaker"] for turn in dialogue["turns"]} == {"patient", "assistant"}
        assert not any(DEPARTMENTS[dialogue["department"]] in turn["text"] or dialogue["department"] in turn["text"]
                       for turn in dialogue["turns"]), "the gold label must not be given away in the text"


def test_some_dialogues_contain_the_patients_name_or_phone(clean_hospital: Hospital) -> None:
    identities = {(row["institution"], row["mrn"]): row for row in clean_hospital.identities}
    leaking = 0
    for institution in ("hzsf", "rvic", "jhsq"):
        for dialogue in clean_hospital.jsonl(f"{institution}/dialogues/dialogues.jsonl"):
            who = identities[(institution, dialogue["patient_mrn"])]
            text = " ".join(turn["text"] for turn in dialogue["turns"])
            names = [n for n in (who["name_zh"], who["name_en"]) if n]
            leaking += any(n in text for n in names) or who["phone"] in text
    assert leaking >= 3


def test_three_annotators_label_every_dialogue(clean_hospital: Hospital) -> None:
    for institution in ("hzsf", "rvic", "jhsq"):
        dialogues = {d["dialogue_id"] for d in clean_hospital.jsonl(f"{institution}/dialogues/dialogues.jsonl")}
        rows = clean_hospital.jsonl(f"{institution}/annotations/annotations.jsonl")
        per_item = defaultdict(set)
        for row in rows:
            assert set(row) == {"item_id", "annotator_id", "label", "annotated_at", "tool", "guideline_version"}
            assert row["label"] in LABELS
            assert row["annotated_at"].endswith("+08:00")
            per_item[row["item_id"]].add(row["annotator_id"])
        assert set(per_item) == dialogues
        assert all(annotators == set(ANNOTATOR_ERROR_RATES) for annotators in per_item.values())


def test_the_noisy_annotator_disagrees_with_gold_most(defective_hospital: Hospital, clean_hospital: Hospital) -> None:
    errors: Counter[str] = Counter()
    for hospital in (clean_hospital, defective_hospital):
        for institution in ("hzsf", "rvic", "jhsq"):
            gold = {d["dialogue_id"]: d["department"]
                    for d in hospital.jsonl(f"{institution}/dialogues/dialogues.jsonl")}
            for row in hospital.jsonl(f"{institution}/annotations/annotations.jsonl"):
                errors[row["annotator_id"]] += row["label"] != gold[row["item_id"]]
    assert errors["ann-03"] > errors["ann-01"]


def test_intended_agreement_follows_from_the_error_rates() -> None:
    agreement = intended_agreement()
    k = len(LABELS)
    e1, e3 = ANNOTATOR_ERROR_RATES["ann-01"], ANNOTATOR_ERROR_RATES["ann-03"]
    assert agreement["pairwise_agreement"]["ann-01~ann-03"] == pytest.approx((1 - e1) * (1 - e3) + e1 * e3 / (k - 1),
                                                                            abs=1e-4)
    assert agreement["accuracy"]["ann-03"] < agreement["accuracy"]["ann-01"]


def test_manifest_counts_dialogues_and_annotations(clean_hospital: Hospital) -> None:
    summary = clean_hospital.manifest.dialogues
    total = sum(len(clean_hospital.jsonl(f"{i}/dialogues/dialogues.jsonl")) for i in ("hzsf", "rvic", "jhsq"))
    assert summary["dialogues"] == total
    assert summary["annotations"] == 3 * total
    assert summary["departments"]["Endocrinology"] == "内分泌科"
