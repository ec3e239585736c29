"""From annotators to accepted labels: consensus, the review queue and expert decisions."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from medllm_pipelines.lib.label.agreement import mask_agreement
from medllm_pipelines.lib.label.consensus import (
    ADJUDICATED,
    UNANIMOUS,
    Decision,
    classify_items,
    majority_mask,
    majority_spans,
    overlap_items,
    parse_decision,
)
from medllm_pipelines.lib.label.importers import (
    import_brat,
    import_expert_decisions,
    import_images,
    import_triage_annotations,
)
from medllm_pipelines.lib.label.registry import load_guidelines, load_registry
from medllm_pipelines.lib.label.sets import (
    entity_agreement_report,
    entity_set,
    image_agreement_reports,
    image_sets,
    triage_agreement,
    triage_set,
)
from medllm_pipelines_tests.lib.label.conftest import fake_hmac


def _long(votes: dict[str, list[str]]) -> pd.DataFrame:
    rows = [(item, f"ann-0{i + 1}", label) for item, labels in votes.items() for i, label in enumerate(labels)]
    frame = pd.DataFrame(rows, columns=["item_key", "annotator_id", "label"])
    return frame.assign(patient_pseudonym="p_x", institution="x", guideline_version="triage-guideline-v1.2")


def test_classification_items_unanimous_pending_and_adjudicated():
    long = _long({"a": ["X", "X", "X"], "b": ["X", "X", "Y"], "c": ["X", "Y", "Z"], "d": ["Y", "Y", "Z"], "e": ["X", "Y", "Y"]})
    decisions = {"c": Decision("c", "label", "Z", "exp-01", "t"), "e": Decision("e", "reject", None, "exp-01", "t")}
    outcome = classify_items(long, decisions, "triage_labels")
    accepted = outcome.accepted.set_index("item_key")
    assert accepted.loc["a", "basis"] == UNANIMOUS and accepted.loc["c", ["label", "basis"]].tolist() == ["Z", ADJUDICATED]
    assert outcome.by_basis == {"adjudicated": 1, "pending_review": 2, "rejected": 1, "unanimous": 1}
    queue = outcome.queue.set_index("item_key")
    assert sorted(queue.index) == ["b", "c", "d", "e"]
    assert queue.loc["c", "priority"] == "high" and queue.loc["b", "priority"] == "normal"
    assert queue.loc["c", "status"] == "resolved" and queue.loc["b", "status"] == "open"


@pytest.mark.parametrize(
    ("raw", "task", "expected"),
    [("Cardiology", "classification", ("label", "Cardiology")), ("Astrology", "classification", None),
     ("accept:ann-02", "segmentation", ("accept", "ann-02")), ("reject", "entities", ("reject", None)),
     ("accept:", "entities", None)],
)
def test_decisions_are_parsed_strictly(raw, task, expected):
    assert parse_decision(raw, task, ("Cardiology",)) == expected


def test_majority_region_and_spans():
    a = np.zeros((4, 4), dtype=bool)
    a[1:3, 1:3] = True
    b = a.copy()
    b[0, 0] = True
    assert np.array_equal(majority_mask([a, b, np.zeros_like(a)]), a)
    assert majority_spans({"x": {(0, 2, "A")}, "y": {(0, 2, "A"), (3, 4, "B")}, "z": set()}) == {(0, 2, "A")}


def test_low_overlap_images_wait_for_the_expert_and_accept_picks_one_annotator():
    good = np.zeros((8, 8), dtype=bool)
    good[2:6, 2:6] = True
    regions = {"img1": {"ann-01": good, "ann-02": good, "ann-03": good},
               "img2": {"ann-01": good, "ann-02": good, "ann-03": np.zeros_like(good)},
               "img3": {"ann-01": good, "ann-02": np.roll(good, 3, axis=0), "ann-03": good}}
    items = {k: {"item_key": k, "patient_pseudonym": "p", "institution": "x"} for k in regions}
    per_item = mask_agreement(regions).per_item()
    decided = {"img3": Decision("img3", "accept", "ann-02", "exp-01", "t")}
    outcome, chosen = overlap_items(items, regions, per_item, decided, "lesion_masks", "dice", 0.7)
    assert outcome.by_basis == {"adjudicated": 1, "majority": 1, "pending_review": 1}
    assert np.array_equal(chosen["img3"], np.roll(good, 3, axis=0))
    assert set(outcome.queue["item_key"]) == {"img2", "img3"}


@pytest.fixture(scope="module")
def imported(delivery):
    registry, guidelines = load_registry(), load_guidelines()
    args = (delivery.link, registry, guidelines, fake_hmac, "label/test")
    return {
        "triage": import_triage_annotations(delivery.raw_annotations, delivery.dialogues, *args).frame,
        "entities": import_brat(delivery.objects, delivery.read, delivery.dialogues, *args).frame,
        "images": import_images(delivery.objects, delivery.read, delivery.dicom_index, *args).frame,
        "decisions": import_expert_decisions(delivery.raw_annotations, delivery.dialogues, delivery.dicom_index, *args).frame,
    }


def test_the_synthetic_hospital_meets_every_threshold_and_feeds_the_queue(imported):
    guidelines = load_guidelines()
    triage_report, _ = triage_agreement(imported["triage"], guidelines)
    entity_report, entity_stats = entity_agreement_report(imported["entities"], guidelines)
    image_reports = image_agreement_reports(imported["images"], guidelines)
    for report in (triage_report, entity_report, *(r for r, _ in image_reports.values())):
        assert report.passed, report.as_dict()
        assert report.thresholds, "every set is judged against its guideline's thresholds"
    triage = triage_set(imported["triage"], imported["decisions"])
    assert triage.by_basis["adjudicated"] > 0 and triage.by_basis["unanimous"] > 0
    assert {"open", "resolved"} == set(triage.queue["status"])
    _, entities = entity_set(imported["entities"], imported["decisions"], guidelines, entity_stats)
    assert len(entities) and entities.loc[entities["entity_type"].isin(["PERSON", "PHONE"]), "text"].isna().all()
    images = image_sets(imported["images"], imported["decisions"], guidelines, image_reports)
    masks, boxes = images["lesion_masks"][1], images["lesion_boxes"][1]
    assert masks["lesion"].any() and (~masks["lesion"]).any()
    assert (boxes.loc[boxes["lesion"], "bbox_width"] > 0).all()


def test_a_degraded_set_fails_its_threshold(imported):
    triage = imported["triage"].copy()
    rng = np.random.default_rng(0)
    labels = load_guidelines()["triage-guideline-v1.2"].labels
    triage["label"] = [labels[i] for i in rng.integers(0, len(labels), len(triage))]
    report, _ = triage_agreement(triage, load_guidelines())
    assert not report.passed
    assert {t.statistic for t in report.thresholds if not t.passed} == {"fleiss_kappa", "krippendorff_alpha"}
