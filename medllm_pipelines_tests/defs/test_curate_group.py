"""The curate group (its Python assets) and then train and evaluate, materialised in process on a seeded warehouse.

Seeded as the stages before it leave things, without running them: de-identified patients and observations,
diabetes labels with a known signal (HbA1c and fasting glucose), accepted lesion masks and de-identified image
arrays. What the group must show: leak-proof splits, the spec's preprocessing fitted on the training split
only, and that training and evaluation load that pipeline (never a second one) by dataset version.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd
import pytest
from dagster import materialize

from medllm_pipelines.defs import keys
from medllm_pipelines.defs.curate import assets as curate
from medllm_pipelines.defs.evaluate import assets as evaluate
from medllm_pipelines.defs.keys import warehouse_location
from medllm_pipelines.defs.train import assets as train
from medllm_pipelines.lib.common.warehouse import Warehouse
from medllm_pipelines.resources.artifacts import ArtifactStoreResource
from medllm_pipelines.resources.mlflow import MLflowResource
from medllm_pipelines.resources.run_settings import RunSettingsResource
from medllm_pipelines.resources.warehouse import WarehouseResource

PERSONS = 260
IMAGES = 36
INSTITUTIONS = ("hzsf", "rvic", "jhsq", "whsy")
UNITS = {"hba1c": "%", "fasting_glucose": "mmol/L", "bmi": "kg/m2", "systolic_bp": "mm[Hg]", "diastolic_bp": "mm[Hg]",
         "heart_rate": "/min", "total_cholesterol": "mmol/L"}
CURATE_DIABETES = [curate.diabetes_features, curate.diabetes_splits, curate.diabetes_preprocessing]
CURATE_IMAGING = [curate.lesion_segmentation_dataset, curate.lesion_segmentation_splits]


def seed_persons(warehouse: Warehouse, rng: np.random.Generator) -> None:
    """Patients, observations (some never measured) and labels whose truth is a rule on HbA1c and glucose."""
    ids = [f"p_{i:024x}" for i in rng.choice(16**8, PERSONS, replace=False)]
    diabetic = rng.random(PERSONS) < 0.3
    patients = pd.DataFrame({"patient_pseudonym": ids, "institution": rng.choice(INSTITUTIONS, PERSONS),
                             "sex": rng.choice(["female", "male"], PERSONS),
                             "age_band": [f"{a}-{a + 4}" for a in rng.choice(range(20, 85, 5), PERSONS)]})
    means = {"hba1c": (5.4, 1.6), "fasting_glucose": (5.0, 2.2), "bmi": (25.0, 3.0), "systolic_bp": (124.0, 8.0),
             "diastolic_bp": (78.0, 4.0), "heart_rate": (74.0, 0.0), "total_cholesterol": (4.9, 0.3)}
    rows = []
    for index, person in enumerate(ids):
        for concept, (base, shift) in means.items():
            if rng.random() < 0.08:  # never measured: the declared missing-value policy fills it
                continue
            value = base + shift * diabetic[index] + rng.normal(0, 0.12 * base)
            rows.append((person, patients.at[index, "institution"], concept, None, round(float(value), 2),
                         UNITS[concept], 2024))
    observations = pd.DataFrame(rows, columns=["patient_pseudonym", "institution", "concept", "loinc", "value", "unit",
                                               "effective_year"])
    labels = pd.DataFrame({"patient_pseudonym": ids, "label": diabetic.astype(int), "label_source": "icd10:E11",
                           "institutions": patients["institution"]})
    warehouse.write_table(*warehouse_location(keys.DEID_PATIENTS), patients)
    warehouse.write_table(*warehouse_location(keys.DEID_OBSERVATIONS), observations)
    warehouse.write_table(*warehouse_location(keys.DIABETES_LABELS), labels)


def seed_images(warehouse: Warehouse, folder: Path, rng: np.random.Generator) -> None:
    """Accepted masks and released pixel arrays; two slices of one study, one mask without pixels, one US image."""
    folder.mkdir(parents=True, exist_ok=True)
    masks, images = [], []
    for index in range(IMAGES):
        image_id, person = f"img{index:03d}", f"p_img_{index // 2:03d}"  # two slices per person and study
        modality = "US" if index == IMAGES - 1 else "CT"
        pixels = rng.integers(0, 255, (32, 32)).astype(np.uint8)
        masks.append({"image_id": image_id, "study_key": f"s{index // 2:03d}", "patient_pseudonym": person,
                      "institution": INSTITUTIONS[index % 4], "rows": 32, "columns": 32, "mask_rle": "0 1",
                      "lesion": "nodule" if index % 3 else "none", "lesion_pixels": index % 3, "basis": "consensus",
                      "annotators": 2})
        if index == 0:
            continue  # withheld by the image release: no pixels
        np.save(folder / f"{image_id}.npy", pixels)
        images.append({"image_id": image_id, "patient_pseudonym": person, "institution": INSTITUTIONS[index % 4],
                       "modality": modality, "pixel_file": f"{image_id}.npy"})
    warehouse.write_table(*warehouse_location(keys.LESION_MASKS), pd.DataFrame(masks))
    warehouse.write_table(*warehouse_location(keys.DEID_IMAGES), pd.DataFrame(images))


@dataclass
class GroupRun:
    curate: Any
    train: Any
    warehouse: Warehouse
    artifacts: ArtifactStoreResource
    resources: dict[str, Any]

    def metadata(self, result: Any, asset_key: Any) -> dict[str, Any]:
        (event,) = [m for m in result.get_asset_materialization_events() if m.asset_key == asset_key]
        return {k: v.value for k, v in event.materialization.metadata.items()}


@pytest.fixture(scope="module")
def group_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GroupRun]:
    from medllm_pipelines.cli import record_demo_approval

    base = tmp_path_factory.mktemp("curate-group")
    rng = np.random.default_rng(5)
    warehouse = WarehouseResource(url=f"duckdb:///{base / 'warehouse.duckdb'}")
    wh = Warehouse(warehouse.url)
    artifacts = ArtifactStoreResource(deidentified_dir=str(base / "deid"), models_dir=str(base / "models"),
                                      reports_dir=str(base / "reports"), governance_dir=str(base / "governance"))
    seed_persons(wh, rng)
    seed_images(wh, Path(artifacts.folder("deidentified", "images")), rng)
    record_demo_approval(SimpleNamespace(governance_dir=base / "governance"))  # training refuses without one
    resources = {
        "warehouse": warehouse, "artifacts": artifacts, "run_settings": RunSettingsResource(),
        "mlflow": MLflowResource(tracking_uri=f"sqlite:///{base / 'mlflow.db'}", artifact_root=(base / "mlruns").as_uri()),
    }
    curated = materialize([*CURATE_DIABETES, *CURATE_IMAGING, *curate.CHECKS], resources=resources)
    trained = materialize([train.diabetes_model, evaluate.diabetes_evaluation_report, *CURATE_DIABETES],
                          resources=resources, selection=[keys.DIABETES_MODEL, keys.DIABETES_EVALUATION])
    try:
        yield GroupRun(curated, trained, wh, artifacts, resources)
    finally:
        wh.dispose()


def test_the_group_materialises_alone_and_every_gate_passes(group_run: GroupRun) -> None:
    assert group_run.curate.success and group_run.train.success
    evaluations = group_run.curate.get_asset_check_evaluations()
    assert {e.check_name for e in evaluations} == {keys.CHECK_NO_LEAKAGE, keys.CHECK_PREPROCESSING_TRAIN_ONLY}
    assert all(e.passed for e in evaluations), [(e.asset_key, e.check_name) for e in evaluations if not e.passed]


def test_splits_keep_every_person_in_one_split_and_reconcile(group_run: GroupRun) -> None:
    meta = group_run.metadata(group_run.curate, keys.DIABETES_SPLITS)
    assert meta["records_in"] == meta["records_out"] == PERSONS and meta["reconciled"]
    assert meta["leakage_check"]["passed"] and meta["dagster/row_count"] == PERSONS
    splits = group_run.warehouse.read_table(*warehouse_location(keys.DIABETES_SPLITS))
    assert splits.groupby("patient_pseudonym")["split"].nunique().max() == 1
    assert set(meta["rows_per_split"]) == {"train", "validation", "test"}


def test_preprocessing_is_the_declared_one_fitted_on_train_with_one_imputation_report(group_run: GroupRun) -> None:
    meta = group_run.metadata(group_run.curate, keys.DIABETES_PREPROCESSING)
    splits = group_run.metadata(group_run.curate, keys.DIABETES_SPLITS)
    assert meta["dataset_version"] == splits["dataset_version"]
    assert meta["fitted_rows"] == splits["rows_per_split"]["train"]
    assert len(meta["selected_features"]) == 6  # t2d_risk.yaml: univariate selection, k = 6
    assert {"hba1c", "fasting_glucose"} <= set(meta["selected_features"])
    missing = meta["missing_values"]
    assert missing["missing_value_policy_version"] and missing["total_imputed"] > 0
    assert missing["method_per_column"]["hba1c"] == {"iterative": missing["imputed_per_column"]["hba1c"]}


def test_training_and_evaluation_use_the_curate_pipeline_not_a_second_one(group_run: GroupRun) -> None:
    preprocessing = group_run.metadata(group_run.curate, keys.DIABETES_PREPROCESSING)
    model = group_run.metadata(group_run.train, keys.DIABETES_MODEL)
    assert model["trained"] is True and model["dataset_version"] == preprocessing["dataset_version"]
    assert model["preprocessing_fingerprint"] == preprocessing["fingerprint"]
    assert model["model_inputs"] == preprocessing["selected_features"]
    assert model["missing_values"] == preprocessing["missing_values"]  # one imputation block, the same one
    assert "missing_value_policy" not in model
    spec = json.loads((Path(model["model_dir"]) / "model_spec.json").read_text())
    assert spec["preprocessing_fingerprint"] == preprocessing["fingerprint"]
    assert spec["feature_names_out"] == preprocessing["selected_features"]
    for foundation in ("consent_basis", "deidentification_policy_version", "processing_purpose", "ethics_approval",
                       "dataset_card"):
        assert model[foundation], foundation
    report = group_run.metadata(group_run.train, keys.DIABETES_EVALUATION)
    assert report["dataset_version"] == preprocessing["dataset_version"]
    assert report["model_roc_auc"] > 0.8 and report["baseline_roc_auc"] > 0.8  # the seeded rule is learnable


def test_training_refuses_when_the_curate_stage_fitted_nothing_for_this_version(group_run: GroupRun) -> None:
    """Training never fits its own pipeline: with the saved one gone, it stops and says which asset to run."""
    store = group_run.artifacts.model_store()
    version = group_run.metadata(group_run.curate, keys.DIABETES_PREPROCESSING)["dataset_version"]
    folder = store.preprocessing_folder("t2d_risk", version)
    hidden = folder.with_name(folder.name + ".hidden")
    folder.rename(hidden)
    try:
        result = materialize([train.diabetes_model, *CURATE_DIABETES], resources=group_run.resources,
                             selection=[keys.DIABETES_MODEL], raise_on_error=False)
        assert not result.success
        failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
        assert "materialise curate/diabetes_preprocessing first" in str(failure.event_specific_data.error)
    finally:
        if folder.exists():  # looking for the pipeline created the (empty) version folder again
            shutil.rmtree(folder)
        hidden.rename(folder)


def test_lesion_dataset_accounts_for_every_mask_and_keeps_studies_together(group_run: GroupRun) -> None:
    meta = group_run.metadata(group_run.curate, keys.LESION_DATASET)
    assert meta["records_in"] == IMAGES and meta["reconciled"]
    assert meta["removed[no_released_pixels]"] == 1 and meta["removed[modality_not_in_spec]"] == 1
    assert meta["records_out"] == IMAGES - 2
    splits = group_run.warehouse.read_table(*warehouse_location(keys.LESION_SPLITS))
    assert splits.groupby("study_key")["split"].nunique().max() == 1
    assert group_run.metadata(group_run.curate, keys.LESION_SPLITS)["leakage_check"]["passed"]
