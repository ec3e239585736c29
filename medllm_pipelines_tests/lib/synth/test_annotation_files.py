"""The labelling office of the synthetic hospital: three annotators who disagree in a controlled way, the
expert's decisions, the audit verdicts and the planted bad annotations.

The formats themselves are tested in test_annotation_text.py (brat) and test_annotation_images.py (NIfTI,
DICOM SEG, COCO)."""

from __future__ import annotations

import json
from itertools import combinations

import pytest

from medllm_pipelines.lib.label.registry import load_registry
from medllm_pipelines.lib.synth.annotation_files import ANNOTATORS
from medllm_pipelines_tests.lib.synth.conftest import Hospital

INSTITUTIONS = ("hzsf", "rvic", "jhsq")


def _truth(hospital: Hospital, institution: str) -> dict:
    return json.loads((hospital.root / "_truth" / "annotations" / f"{institution}.json").read_text("utf-8"))


def test_three_annotators_disagree_in_a_controlled_way(clean_hospital: Hospital) -> None:
    for institution in INSTITUTIONS:
        truth = _truth(clean_hospital, institution)
        dice = truth["mask_dice_vs_truth"]
        assert dice["ann-01"] > dice["ann-03"] > 0.6, "ann-03 is the noisy one, but still usable"
        for doc in list(truth["gold_entities"])[:5]:
            spans = {}
            for annotator in ANNOTATORS:
                ann = clean_hospital.root / institution / "annotations" / "brat" / annotator / f"{doc}.ann"
                spans[annotator] = {tuple(l.split("\t")[1].split(" ")) for l in ann.read_text("utf-8").splitlines() if l.startswith("T")}
            assert all(spans[a] or spans[b] for a, b in combinations(ANNOTATORS, 2))
    assert truth["planted_defects"] == [], "a clean hospital plants no bad annotations"


def test_expert_decisions_and_audit_verdicts_follow_the_label_jsonl_schema(clean_hospital: Hospital) -> None:
    registry = load_registry()
    for institution in INSTITUTIONS:
        decisions = clean_hospital.jsonl(f"{institution}/annotations/adjudication.jsonl")
        audit = clean_hospital.jsonl(f"{institution}/annotations/audit.jsonl")
        assert decisions and {registry.role_of(r["annotator_id"]) for r in decisions} == {"adjudicator"}
        assert {registry.role_of(r["annotator_id"]) for r in audit} <= {"auditor"}
        for row in decisions + audit:
            assert {"item_id", "annotator_id", "label", "annotated_at", "tool", "guideline_version"} <= set(row)


def test_planted_bad_annotations_come_with_the_reason_to_expect(defective_hospital: Hospital) -> None:
    reasons = {d["reason_code"] for i in INSTITUTIONS for d in _truth(defective_hospital, i)["planted_defects"]}
    assert reasons == {"span_out_of_bounds", "overlapping_span", "unknown_label", "unknown_annotator",
                       "unknown_guideline_version", "wrong_shape", "box_out_of_bounds"}


@pytest.mark.parametrize("institution", INSTITUTIONS)
def test_annotation_files_classify_as_annotation_kinds(clean_hospital: Hospital, institution: str) -> None:
    from medllm_pipelines.lib.ingest.landing import classify

    kinds = {classify(p.relative_to(clean_hospital.root).as_posix())
             for p in (clean_hospital.root / institution / "annotations").rglob("*") if p.is_file()}
    assert kinds == {"annotations", "brat_ann", "brat_text", "nifti_mask", "dicom_seg", "coco"}
