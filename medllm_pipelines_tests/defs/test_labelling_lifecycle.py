"""Labelled sets, the adjudication queue, dataset cards and leak-proof splits on the synthetic hospital
(the embedded whole-lifecycle run of conftest_lifecycle.py; rows D9-D11, M1, M2)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medllm_pipelines.defs import keys
from medllm_pipelines.lib.common.warehouse import Warehouse

pytestmark = pytest.mark.slow

LABELLED_SETS = ("label/diabetes_labels", "label/triage_labels", "label/clinical_entities", "label/lesion_masks", "label/lesion_boxes")
SPLITS = ("curate/diabetes_splits", "curate/lesion_segmentation_splits")


@pytest.fixture(scope="module")
def warehouse(embedded_run) -> Warehouse:
    return Warehouse(embedded_run.settings.warehouse_url)


def test_each_import_reports_agreement_that_meets_its_guideline(embedded_run, warehouse) -> None:
    for key, sets in ((keys.TRIAGE_ANNOTATIONS, ["triage_labels"]), (keys.ENTITY_ANNOTATIONS, ["clinical_entities"]),
                      (keys.IMAGE_ANNOTATIONS, ["lesion_masks", "lesion_boxes"])):
        meta = embedded_run.materialization(key)
        assert meta["reconciled"] is True, key
        for name in sets:
            assert meta[f"{name}.agreement_passed"] is True
            assert meta[f"agreement[{name}]"]["thresholds"], "judged against the guideline's thresholds"
        assert all(g["sha256"] for g in meta["guidelines"].values()), "the guideline file each set followed"
    agreement = warehouse.read_table(keys.LABEL, keys.LABEL_AGREEMENT_TABLE)
    assert set(agreement["labelled_set"]) == {"triage_labels", "clinical_entities", "lesion_masks", "lesion_boxes"}
    assert agreement["passed"].all()
    triage = json.loads(agreement.set_index("labelled_set").loc["triage_labels", "statistics_json"])
    assert {"fleiss_kappa", "krippendorff_alpha", "pairwise_cohen_kappa"} <= set(triage)


def test_the_label_checks_pass_when_invoked(embedded_run) -> None:
    """The label stage's blocking checks (agreement gates, identifier leak gates) against this run's data."""
    from dagster import build_asset_check_context

    from medllm_pipelines.defs.label.assets import CHECKS
    from medllm_pipelines.defs.resources import build_resources

    resources = build_resources(embedded_run.settings)
    for check in CHECKS:
        needed = {name: resources[name] for name in check.required_resource_keys if name in resources}
        result = check(build_asset_check_context(), **needed)
        assert result.passed, result.description


def test_bad_annotations_are_rejected_with_a_reason_and_counted(embedded_run, warehouse) -> None:
    quarantine = warehouse.read_table(keys.AUDIT_SCHEMA, keys.QUARANTINE_TABLE)
    label_rows = quarantine[quarantine["asset"].str.startswith("label/")]
    reasons = set(label_rows["reason_code"])
    expected = {"span_out_of_bounds", "overlapping_span", "unknown_label", "unknown_annotator",
                "unknown_guideline_version", "wrong_shape", "box_out_of_bounds"}
    assert expected <= reasons, expected - reasons
    assert label_rows["source_object"].notna().all() and (label_rows["reason"].str.len() > 10).all()
    meta = embedded_run.materialization(keys.ENTITY_ANNOTATIONS)
    assert sum(meta["rejected_by_reason"].values()) == meta["records_quarantined"]


def test_adjudication_queue_lists_open_and_resolved_items(embedded_run, warehouse) -> None:
    queue = warehouse.read_table(*keys.ADJUDICATION_QUEUE.path)
    assert {"open", "resolved"} == set(queue["status"])
    resolved = queue[queue["status"] == "resolved"]
    assert resolved["decided_by"].eq("exp-01").all() and resolved["decision"].notna().all()
    assert set(queue["labelled_set"]) <= {"triage_labels", "clinical_entities", "lesion_masks", "lesion_boxes"}
    meta = embedded_run.materialization(keys.ADJUDICATION_QUEUE)
    assert meta["open"] == int((queue["status"] == "open").sum()) > 0


def test_accepted_sets_hold_pseudonyms_only(embedded_run, warehouse) -> None:
    entities = warehouse.read_table(*keys.CLINICAL_ENTITIES.path)
    assert len(entities) and entities.loc[entities["entity_type"].isin(["PERSON", "PHONE"]), "text"].isna().all()
    masks = warehouse.read_table(*keys.LESION_MASKS.path)
    images = warehouse.read_table(*keys.DEID_IMAGES.path)
    assert set(masks["image_id"]) <= set(images["image_id"]), "masks join the de-identified images by image_id"
    registry = warehouse.read_table(*keys.CONSENT_REGISTRY.path).set_index("patient_pseudonym")["consent_status"]
    for key in (keys.TRIAGE_LABELS, keys.CLINICAL_ENTITIES, keys.LESION_MASKS, keys.LESION_BOXES):
        frame = warehouse.read_table(*key.path)
        assert (frame["patient_pseudonym"].map(registry) == "granted").all(), key
    for schema, table in warehouse.list_tables():
        if schema in ("label", "curate"):
            text = warehouse.read_table(schema, table).astype(str)
            for raw_id in ("dlg-", "2.25."):  # dialogue ids and DICOM UIDs never reach the warehouse
                assert not text.apply(lambda col, r=raw_id: col.str.contains(r, regex=False)).any().any(), (table, raw_id)


def test_audit_weak_labels_and_classification_are_recorded(embedded_run) -> None:
    audit = embedded_run.materialization(keys.LABEL_AUDIT)
    assert audit["audit"]["audited"] > 0 and audit["error_rate"] is not None
    weak = embedded_run.materialization(keys.WEAK_LABEL_COMPARISON)
    assert weak["comparison"]["items"] > 0 and weak["weak_label_rules_version"]
    classification = embedded_run.materialization(keys.DATA_CLASSIFICATION)
    assert classification["reconciled"] is True
    assert classification["classifier_vs_human"]["labelled"] > 0
    assert set(classification["classes"]) >= {"by_disease_type", "by_age_band", "by_sex"}


def test_catalog_lists_every_set_and_split_with_version_card_and_leakage(embedded_run, warehouse) -> None:
    from medllm_pipelines.lib.curate.catalog import list_datasets

    datasets = {d["name"]: d for d in list_datasets(warehouse)}
    assert set(LABELLED_SETS) | set(SPLITS) <= set(datasets)
    for name in SPLITS:
        assert datasets[name]["leakage_passed"] is True
        assert set(datasets[name]["counts_per_split"]) == {"train", "validation", "test"}
    for name in LABELLED_SETS[1:]:
        assert datasets[name]["agreement_passed"] is True
    model = embedded_run.materialization(keys.DIABETES_MODEL)
    assert datasets["curate/diabetes_splits"]["version"] == model["dataset_version"], "the MLflow run names the card"
    paths = embedded_run.materialization(keys.DATASET_CATALOG)["card_paths"]
    for name, path in paths.items():
        assert json.loads(Path(path).read_text())["name"] == name


def test_preprocessing_is_saved_with_the_dataset_version(embedded_run) -> None:
    meta = embedded_run.materialization(keys.DIABETES_PREPROCESSING)
    splits = embedded_run.materialization(keys.DIABETES_SPLITS)
    assert meta["dataset_version"] == splits["dataset_version"]
    assert meta["fitted_rows"] == splits["rows_per_split"]["train"]
    assert meta["dataset_version"][:16] in meta["pipeline_path"]
