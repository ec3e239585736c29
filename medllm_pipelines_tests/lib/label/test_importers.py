"""The synthetic hospital's annotation delivery, imported: pseudonymised, validated, reconciled."""

from __future__ import annotations

import json
from collections import Counter

import pandas as pd
import pytest

from medllm_pipelines.lib.label.importers import (
    DOCUMENT,
    PersonLink,
    RawObject,
    import_brat,
    import_expert_decisions,
    import_images,
    import_triage_annotations,
)
from medllm_pipelines.lib.label.registry import load_guidelines, load_registry
from medllm_pipelines_tests.lib.label.conftest import fake_hmac

ASSET = "label/test"


def _planted(delivery) -> Counter:
    planted: Counter = Counter()
    for institution in ("hzsf", "rvic", "jhsq"):
        for defect in delivery.truth(institution)["planted_defects"]:
            planted[defect["reason_code"]] += 1
    return planted


@pytest.fixture(scope="module")
def brat(delivery):
    return import_brat(delivery.objects, delivery.read, delivery.dialogues, delivery.link, load_registry(),
                       load_guidelines(), fake_hmac, ASSET)


@pytest.fixture(scope="module")
def images(delivery):
    return import_images(delivery.objects, delivery.read, delivery.dicom_index, delivery.link, load_registry(),
                         load_guidelines(), fake_hmac, ASSET)


def test_brat_import_reconciles_and_rejects_every_planted_defect(delivery, brat):
    records = brat.frame[brat.frame["kind"] != DOCUMENT]
    assert brat.records_in == len(records) + len(brat.quarantine) + sum(brat.removed.values())
    planted = _planted(delivery)
    files = {q.source_object for q in brat.quarantine}
    for reason in ("span_out_of_bounds", "overlapping_span", "unknown_label", "unknown_annotator", "unknown_guideline_version"):
        assert reason in brat.quarantined_by_reason, reason
    assert brat.quarantined_by_reason["span_out_of_bounds"] == planted["span_out_of_bounds"]
    assert len(files) >= 3 and all(q.position is not None for q in brat.quarantine)


def test_brat_rows_are_pseudonymised_and_never_carry_identifier_text(delivery, brat):
    frame = brat.frame
    assert frame["item_key"].str.match(r"^d_[0-9a-f]{24}$").all()
    assert frame["patient_pseudonym"].str.match(r"^p_[0-9a-f]{24}$").all()
    entities = frame[frame["kind"] == "entity"]
    assert entities.loc[entities["identifier"], "text"].isna().all()
    assert entities.loc[~entities["identifier"], "text"].notna().mean() > 0.9
    dialogue_ids = set(delivery.dialogues["dialogue_id"])
    assert not any(d in " ".join(frame.astype(str).agg(" ".join, axis=1)) for d in list(dialogue_ids)[:20])
    assert set(frame.loc[frame["kind"] == DOCUMENT, "annotator_id"]) == {"ann-01", "ann-02", "ann-03"}


def test_text_over_an_identifier_marked_by_any_annotator_is_dropped():
    text = "Patient: My name is Ann Lee and I cough.\n"
    person, cough = text.index("Ann Lee"), text.index("cough")
    head = "#0\tProvenance\tannotator_id={a};annotated_at=2025-11-10T09:00:00+08:00;tool=brat;guideline_version=clinical-entities-v1.0\n"
    first = head.format(a="ann-01") + f"T1\tPERSON {person} {person + 7}\tAnn Lee\nT2\tSYMPTOM {cough} {cough + 5}\tcough\n"
    second = head.format(a="ann-02") + f"T1\tSYMPTOM {person} {person + 7}\tAnn Lee\n"  # a careless annotator
    content = {"t": text.encode(), "a1": first.encode(), "a2": second.encode()}
    objects = [RawObject("t", "x", "brat_text", "x/annotations/brat/doc-1.txt"),
               RawObject("a1", "x", "brat_ann", "x/annotations/brat/ann-01/doc-1.ann"),
               RawObject("a2", "x", "brat_ann", "x/annotations/brat/ann-02/doc-1.ann")]
    link = PersonLink({("x", "m1"): "p_1"}, {"p_1": "granted"})
    dialogues = pd.DataFrame({"dialogue_id": ["doc-1"], "patient_mrn": ["m1"], "institution": ["x"]})
    result = import_brat(objects, content.__getitem__, dialogues, link, load_registry(), load_guidelines(), fake_hmac, ASSET)
    entities = result.frame[result.frame["kind"] == "entity"].set_index(["annotator_id", "annotation_id"])
    assert entities.loc[("ann-01", "T2"), "text"] == "cough"
    assert pd.isna(entities.loc[("ann-02", "T1"), "text"]), "a name typed as a symptom must not leak"


def test_consent_and_linkage_exclusions_are_counted_not_silently_dropped(delivery):
    refused = delivery.pseudonyms["patient_pseudonym"].iloc[::2]
    consent = pd.DataFrame({"patient_pseudonym": delivery.pseudonyms["patient_pseudonym"], "consent_status": "granted"})
    consent.loc[consent["patient_pseudonym"].isin(refused), "consent_status"] = "withdrawn"
    link = PersonLink.build(delivery.pseudonyms, consent)
    result = import_images(delivery.objects, delivery.read, delivery.dicom_index, link, load_registry(), load_guidelines(), fake_hmac, ASSET)
    assert result.removed.get("no_granted_consent:withdrawn", 0) > 0
    assert not result.frame["patient_pseudonym"].isin(refused).any()


def test_image_import_keys_images_like_deidentify_and_rejects_planted_defects(delivery, images):
    from medllm_pipelines.lib.deidentify.policy import keyed_pseudonyms, load_policy

    frame = images.frame
    assert images.records_in == len(frame) + len(images.quarantine) + sum(images.removed.values())
    expected = set(keyed_pseudonyms(delivery.dicom_index["sop_instance_uid"].tolist(), fake_hmac, load_policy()))
    assert set(frame["image_id"]) <= expected
    assert set(frame["source_format"]) == {"nifti", "dicom_seg", "coco"}
    assert {"wrong_shape", "box_out_of_bounds"} <= set(images.quarantined_by_reason)
    per_image = frame.groupby(["shape_kind", "image_id"])["annotator_id"].nunique()
    assert per_image["mask"].min() == 3, "every annotated image has three annotators' masks"
    assert (per_image["box"] < 3).sum() == _planted(delivery)["box_out_of_bounds"], "only the planted bad box is missing"


def test_triage_import_routes_expert_rows_and_flags_the_audit_sample(delivery):
    result = import_triage_annotations(delivery.raw_annotations, delivery.dialogues, delivery.link, load_registry(),
                                       load_guidelines(), fake_hmac, ASSET)
    experts = delivery.raw_annotations["annotator_id"].isin(["exp-01", "aud-01"]).sum()
    assert result.removed["expert_or_audit_row"] == experts
    assert result.records_in == len(result.frame) + len(result.quarantine) + sum(result.removed.values())
    assert result.frame["item_key"].str.match(r"^i_[0-9a-f]{24}$").all()
    share = result.frame.drop_duplicates("item_key")["audit_sample"].mean()
    assert 0.05 < share < 0.4


def test_bad_triage_labels_are_rejected(delivery):
    raw = delivery.raw_annotations[delivery.raw_annotations["annotator_id"] == "ann-01"].head(3).copy()
    raw.iloc[0, raw.columns.get_loc("label")] = "Astrology"
    raw.iloc[1, raw.columns.get_loc("annotator_id")] = "ann-77"
    raw.iloc[2, raw.columns.get_loc("guideline_version")] = "triage-guideline-v0.1"
    result = import_triage_annotations(raw, delivery.dialogues, delivery.link, load_registry(), load_guidelines(), fake_hmac, ASSET)
    assert sorted(q.reason_code for q in result.quarantine) == ["unknown_annotator", "unknown_guideline_version", "unknown_label"]


def test_expert_decisions_are_keyed_like_their_items(delivery, images):
    result = import_expert_decisions(delivery.raw_annotations, delivery.dialogues, delivery.dicom_index, delivery.link,
                                     load_registry(), load_guidelines(), fake_hmac, ASSET)
    frame = result.frame
    assert set(frame["labelled_set"]) == {"triage_labels", "clinical_entities", "lesion_masks"}
    assert set(frame.loc[frame["labelled_set"] == "lesion_masks", "item_key"]) <= set(images.frame["image_id"])
    assert set(frame["role"]) == {"adjudicator", "auditor"}
    bad = delivery.raw_annotations[delivery.raw_annotations["annotator_id"] == "exp-01"].head(1).assign(label="maybe")
    rejected = import_expert_decisions(bad, delivery.dialogues, delivery.dicom_index, delivery.link, load_registry(),
                                       load_guidelines(), fake_hmac, ASSET)
    assert [q.reason_code for q in rejected.quarantine] == ["invalid_decision"]
    assert json.dumps([q.reason for q in rejected.quarantine]).find("maybe") == -1
