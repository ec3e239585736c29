"""The imaging models materialised through Dagster (issue 11 item 2): the lesion segmentation UNet and the lesion
classifier CNN on the small hospital's de-identified slices, each one MLflow run in its spec's experiment, registered
under the spec id with alias challenger; the classifier then compressed (static int8, ONNX, structured pruning)
against fp32 with the tolerance gate, and distilled into a smaller CNN.

The part of the graph they rest on (ingestion through curate/lesion_segmentation_splits) is materialised once in its
own MEDLLM_HOME; every test reads that run.
"""

from __future__ import annotations

import numpy as np
import pytest

from medllm_pipelines.defs import keys
from medllm_pipelines_tests.conftest_lifecycle import run_lifecycle_in, stop_services, through

pytestmark = pytest.mark.slow

MODELS = {keys.LESION_SEGMENTATION_MODEL: ("lesion_segmentation", "unet", "dice"),
          keys.LESION_CLASSIFIER_MODEL: ("lesion_classifier", "cnn", "roc_auc")}
# Floors on the small hospital's test split, 5-8 slices whose draw depends on the installation's pseudonym key:
# Dice 0.78-0.89 was measured over training seeds and 0.67 on one more key's draw (2026-12-07), the classifier's
# ROC-AUC 0.67-1.0 over nine split draws (docs/models_imaging.md). The floors catch a broken model (chance: Dice
# ~0.03, ROC-AUC 0.5), not the targets; the segmentation model must also match its intensity baseline (below).
FLOORS = {"dice": 0.5, "roc_auc": 0.5}


@pytest.fixture(scope="module")
def imaging_run(tmp_path_factory, small_hospital):
    home = tmp_path_factory.mktemp("imaging_home")
    try:
        yield run_lifecycle_in(home, small_hospital, bad_input=False,
                               selection=through(*MODELS, keys.LESION_CLASSIFIER_COMPRESSED,
                                                 keys.LESION_CLASSIFIER_DISTILLED), log_level="WARNING")
    finally:
        stop_services(home)


@pytest.fixture(scope="module")
def client(imaging_run):
    from mlflow.tracking import MlflowClient

    uri = imaging_run.settings.mlflow_tracking_uri
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def test_both_imaging_models_train_on_the_small_hospital(imaging_run) -> None:
    assert imaging_run.result.success, imaging_run.result.failed_checks()
    checks = {(e.asset_key, e.check_name): e.passed for e in imaging_run.check_evaluations()}
    for key in MODELS:
        meta = imaging_run.materialization(key)
        assert meta["trained"] is True and meta["data_needs_met"] is True, key.to_user_string()
        assert checks[(key, keys.CHECK_MODEL_TRAINED)] is True
        assert meta["rows_per_split"]["test"] > 0 and meta["train_seconds"] > 0
    # both models rest on the same curated images, hence one dataset version
    versions = {imaging_run.materialization(key)["dataset_version"] for key in MODELS}
    assert len(versions) == 1


@pytest.mark.parametrize("key", list(MODELS), ids=lambda k: k.path[-1])
def test_each_model_is_one_run_with_curves_inputs_and_a_registered_challenger(imaging_run, client, key) -> None:
    spec_id, family, headline = MODELS[key]
    meta = imaging_run.materialization(key)
    run = client.get_run(meta["mlflow_run_id"])
    assert client.get_experiment(run.info.experiment_id).name.endswith(spec_id)
    assert run.data.tags["dagster_asset"] == key.to_user_string()
    assert run.data.tags["dataset_version"] == meta["dataset_version"] and run.data.tags["ethics_approval"]
    assert {d.dataset.name for d in run.inputs.dataset_inputs} == {f"{spec_id}-{s}" for s in ("train", "validation", "test")}
    curve = client.get_metric_history(run.info.run_id, "val_loss")
    assert len(curve) == meta["epochs_run"] > 1 and sorted(m.step for m in curve) == list(range(len(curve)))
    assert int(run.data.params["best_epoch"]) == meta["best_epoch"] and "train_seconds" in run.data.params
    assert run.data.metrics[f"best_val_{headline}"] == pytest.approx(meta["validation_metrics"][f"val_{headline}"], abs=1e-4)
    assert f"baseline_test_{headline}" in run.data.metrics
    version = client.get_model_version_by_alias(spec_id, "challenger")
    assert version.run_id == run.info.run_id and version.tags["family"] == family == meta["family"]
    assert meta["registered_model"] == spec_id and meta["aliases"] == ["challenger"]


def test_the_models_beat_their_floors_on_the_test_split(imaging_run) -> None:
    for key, (spec_id, _, headline) in MODELS.items():
        meta = imaging_run.materialization(key)
        assert meta["test_metrics"][f"test_{headline}"] > FLOORS[headline], (spec_id, meta["test_metrics"])
    segmentation = imaging_run.materialization(keys.LESION_SEGMENTATION_MODEL)
    # on a par with its intensity baseline: the split follows the run's fresh pseudonym key, so the 5-8 test slices
    # differ per run and a draw once gave 0.722 vs 0.732 (the next 0.8+); a broken model is far below, not 0.01
    assert segmentation["test_metrics"]["test_dice"] >= segmentation["baseline_metrics"]["baseline_test_dice"] - 0.05


def test_the_registered_segmentation_model_loads_and_outlines_a_bright_lesion(imaging_run) -> None:
    """What a user of the registry does: load the challenger as a pyfunc and segment a slice."""
    import mlflow

    mlflow.set_tracking_uri(imaging_run.settings.mlflow_tracking_uri)
    model = mlflow.pyfunc.load_model("models:/lesion_segmentation@challenger")
    yy, xx = np.mgrid[0:64, 0:64]
    body = ((yy - 32) / 22.0) ** 2 + ((xx - 32) / 26.0) ** 2 <= 1.0
    lesion = (yy - 30) ** 2 + (xx - 38) ** 2 <= 25
    rng = np.random.default_rng(0)
    slices = np.stack([1064.0 + 1040.0 * body + 250.0 * lesion + rng.normal(0, 12, body.shape),
                       1064.0 + 1040.0 * body + rng.normal(0, 12, body.shape)]).astype(np.float32)
    masks = model.predict(slices)
    assert masks.shape == (2, 64, 64)
    overlap = 2.0 * np.logical_and(masks[0], lesion).sum() / (masks[0].sum() + lesion.sum())
    assert overlap > 0.5 and masks[1].sum() < lesion.sum()


def test_the_classifier_is_compressed_against_fp32_and_gated(imaging_run, client) -> None:
    meta = imaging_run.materialization(keys.LESION_CLASSIFIER_COMPRESSED)
    assert meta["trained"] is True and set(meta["variants"]) == {"pruned_structured", "int8_static", "onnx"}
    assert "onnx" in meta["variants_within_tolerance"]  # an fp32 export loses nothing
    assert set(meta["registered"]) == set(meta["variants_within_tolerance"])
    for variant in meta["variants_within_tolerance"]:
        assert client.get_model_version_by_alias(f"lesion_classifier-{variant}", "challenger").run_id == meta["mlflow_run_id"]
    run = client.get_run(meta["mlflow_run_id"])
    assert run.data.tags["stage"] == "compression" and "onnx_speedup_p50" in run.data.metrics
    assert meta["teacher_mlflow_run_id"] == imaging_run.materialization(keys.LESION_CLASSIFIER_MODEL)["mlflow_run_id"]


def test_a_smaller_cnn_is_distilled_from_the_classifier(imaging_run, client) -> None:
    meta = imaging_run.materialization(keys.LESION_CLASSIFIER_DISTILLED)
    assert meta["trained"] is True and meta["student_parameters"] < meta["teacher_parameters"]
    run = client.get_run(meta["mlflow_run_id"])
    assert run.data.tags["stage"] == "distillation" and len(client.get_metric_history(run.info.run_id, "val_loss")) > 1
    assert int(run.data.params["distillation_temperature"].split(".")[0]) == 4
    assert meta["teacher_mlflow_run_id"] == imaging_run.materialization(keys.LESION_CLASSIFIER_MODEL)["mlflow_run_id"]
    registered = meta["registered"]["registered"]
    assert registered == meta["within_tolerance"]  # the gate: registered only within the declared tolerance
    names = {m.name for m in client.search_registered_models()}
    assert ("lesion_classifier-distilled" in names) == registered
