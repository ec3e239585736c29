"""Training out of the Dagster process through Dagster Pipes (issue 11 item 8; MEDLLM_TRAINING_PROCESS=subprocess).

The part of the graph the MLP rests on is materialised once with the setting on; the model trains in a child
process launched by PipesSubprocessClient, into the MLflow run the asset opened, and registers as in process.
"""

from __future__ import annotations

import pytest

from medllm_pipelines.defs import keys
from medllm_pipelines_tests.conftest_lifecycle import run_lifecycle_in, stop_services, through

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def pipes_run(tmp_path_factory, small_hospital):
    home = tmp_path_factory.mktemp("pipes_home")
    try:
        yield run_lifecycle_in(home, small_hospital, {"MEDLLM_TRAINING_PROCESS": "subprocess"}, bad_input=False,
                               selection=through(keys.DIABETES_MODEL), log_level="WARNING")
    finally:
        stop_services(home)


def test_the_model_trains_in_a_child_process_and_reports_back(pipes_run) -> None:
    assert pipes_run.result.success, pipes_run.result.failed_checks()
    meta = pipes_run.materialization(keys.DIABETES_MODEL)
    assert meta["training_process"] == "subprocess (Dagster Pipes)"
    assert meta["trained"] is True and meta["validation_metrics"]["val_roc_auc"] > 0.6
    assert meta["registered_model"] == "t2d_risk" and meta["aliases"] == ["challenger"]


def test_the_child_trained_into_the_assets_mlflow_run_and_left_no_copy_of_the_rows(pipes_run) -> None:
    from mlflow.tracking import MlflowClient

    meta = pipes_run.materialization(keys.DIABETES_MODEL)
    uri = pipes_run.settings.mlflow_tracking_uri
    run = MlflowClient(tracking_uri=uri, registry_uri=uri).get_run(meta["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.tags["dagster_asset"] == keys.DIABETES_MODEL.to_user_string()
    assert {d.dataset.name for d in run.inputs.dataset_inputs} == {"t2d_risk-train", "t2d_risk-validation"}
    assert "best_val_roc_auc" in run.data.metrics
    models = pipes_run.settings.home / "artifacts" / "models"
    assert not list(models.rglob("dataset.parquet"))


def test_an_unknown_training_process_is_refused() -> None:
    from medllm_pipelines.settings import training_process

    assert training_process({"MEDLLM_TRAINING_PROCESS": "Subprocess"}) == "subprocess"
    with pytest.raises(ValueError, match="MEDLLM_TRAINING_PROCESS must be one of in_process, subprocess"):
        training_process({"MEDLLM_TRAINING_PROCESS": "k8s"})
