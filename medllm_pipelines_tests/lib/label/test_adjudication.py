"""Review queue and accepted sets from the imported tables, each with its card and metadata."""

from __future__ import annotations

import pandas as pd
import pytest

from medllm_pipelines.lib.label.adjudication import adjudicate
from medllm_pipelines.lib.label.importers import (
    import_brat,
    import_expert_decisions,
    import_images,
    import_triage_annotations,
)
from medllm_pipelines.lib.label.registry import load_guidelines, load_registry
from medllm_pipelines_tests.lib.label.conftest import fake_hmac

SETS = ["triage_labels", "clinical_entities", "lesion_masks", "lesion_boxes"]


@pytest.fixture(scope="module")
def review(delivery):
    registry, guidelines = load_registry(), load_guidelines()
    common = (delivery.link, registry, guidelines, fake_hmac, "label/test")
    triage = import_triage_annotations(delivery.raw_annotations, delivery.dialogues, *common).frame
    entities = import_brat(delivery.objects, delivery.read, delivery.dialogues, *common).frame
    images = import_images(delivery.objects, delivery.read, delivery.dicom_index, *common).frame
    decisions = import_expert_decisions(delivery.raw_annotations, delivery.dialogues, delivery.dicom_index, *common).frame
    return adjudicate(triage, entities, images, decisions, guidelines)


def test_queue_metadata_counts_open_and_resolved_items(review):
    meta = review.queue_metadata()
    assert meta["items_in_queue"] == len(review.queue) == meta["open"] + meta["resolved"]
    assert meta["resolved"] > 0 and meta["open"] > 0
    assert sum(meta["open_by_set"].values()) == meta["open"]
    assert set(meta["open_by_set"]) <= set(SETS)


def test_queue_preview_lists_open_items_by_key_and_says_how_many_more(review):
    preview = review.queue_markdown(limit=2)
    assert preview.count("\n| ") == 2 and f"and {len(review.open_items) - 2} more" in preview
    for key in review.open_items["item_key"].head(2):
        assert f"`{key}`" in preview
    nothing_open = type(review)(review.queue.iloc[0:0], review.sets)
    assert nothing_open.queue_markdown() == "No open items."


def test_every_accepted_set_has_a_card_whose_version_is_its_content(review, delivery):
    guidelines, registry = load_guidelines(), load_registry()
    patients = pd.DataFrame({"patient_pseudonym": delivery.pseudonyms["patient_pseudonym"],
                             "institution": delivery.pseudonyms["institution"], "sex": "female", "age_band": "40-44"})
    assert list(review.sets) == SETS
    for name, accepted in review.sets.items():
        card = accepted.card(asset=f"label/{name}", sources=["label/x", "label/expert_decisions"], patients=patients,
                             guidelines=guidelines)
        meta = accepted.as_metadata(card, guidelines, registry)
        assert card["name"] == f"label/{name}" and meta["dataset_version"] == card["version"]
        assert meta["items_pending_review"] == accepted.outcome.by_basis.get("pending_review", 0)
        assert card["known_defects"]["items_pending_review"] == meta["items_pending_review"]
        assert meta["agreement"]["labelled_set"] == name and set(meta["guidelines"]) == set(accepted.report.guideline_versions)
        assert card["counts"]["rows"] == len(accepted.frame) > 0
