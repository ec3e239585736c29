from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import mlflow
import mlflow.pytorch
import numpy as np
import pandas as pd
import pytest
import torch
from mlflow.tracking import MlflowClient

from medllm_pipelines.lib.train.tabular import TabularPredictor, TrainResult
from medllm_pipelines.lib.train.tracking import (
    DATASET_VERSION_TAG,
    FAILURE_REASON_TAG,
    LoggedTraining,
    log_dataset_input,
    log_training,
    log_training_summary,
    make_mlflow_epoch_logger,
    mark_failed,
)
from medllm_pipelines_tests.lib.train.conftest import FAST_CONFIG

FrameAndFeatures = tuple[pd.DataFrame, list[str]]


@pytest.fixture(scope="module")
def tracking_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One throwaway SQLite store per module (creating its schema takes ~1.5 s); the global URI is restored."""
    import mlflow.tracking._tracking_service.utils as tracking_utils

    root = tmp_path_factory.mktemp("mlflow")
    previous_uri = tracking_utils._tracking_uri
    with pytest.MonkeyPatch.context() as patch:
        uri = f"sqlite:///{root}/mlflow.db"
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        mlflow.set_tracking_uri(uri)
        try:
            yield root
        finally:
            mlflow.set_tracking_uri(previous_uri)


@pytest.fixture()
def experiment_id(tracking_store: Path, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh experiment whose artifacts stay under the temporary store, never the cwd."""
    name = request.node.name
    yield mlflow.create_experiment(name, artifact_location=(tracking_store / name).as_uri())
    if mlflow.active_run() is not None:
        mlflow.end_run()


@pytest.mark.parametrize("serialization_format", ["pt2", "pickle"])
def test_training_is_logged_and_the_model_loads_back(
    trained: TrainResult,
    cancer_frame: FrameAndFeatures,
    experiment_id: str,
    tmp_path: Path,
    serialization_format: str,
) -> None:
    with mlflow.start_run(experiment_id=experiment_id) as run:
        logged = log_training(
            trained,
            FAST_CONFIG,
            dataset_version="ds-2026-11-28",
            tags={"dagster_run_id": "run-123"},
            serialization_format=serialization_format,
        )
    assert isinstance(logged, LoggedTraining) and logged.run_id == run.info.run_id

    client = MlflowClient()
    data = client.get_run(run.info.run_id).data
    assert data.params["optimizer"] == FAST_CONFIG.optimizer
    assert data.params["hidden_sizes"] == "[32, 16]"
    assert data.params["dataset_version"] == "ds-2026-11-28"
    assert data.tags[DATASET_VERSION_TAG] == "ds-2026-11-28" and data.tags["dagster_run_id"] == "run-123"
    # The summary is params (one value, no one-point chart); the kept checkpoint's metrics are best_*.
    assert data.params["best_epoch"] == str(trained.best_epoch) and data.params["epochs_run"] == str(trained.epochs_run)
    assert data.params["stopped_early"] == str(trained.stopped_early) and "train_seconds" in data.params
    assert not {"best_epoch", "epochs_run", "stopped_early", "train_seconds"} & set(data.metrics)
    assert data.metrics["best_val_roc_auc"] == pytest.approx(trained.val_metrics["val_roc_auc"])
    assert data.metrics["best_val_loss"] == pytest.approx(trained.val_metrics["val_loss"])
    [kept] = client.get_metric_history(run.info.run_id, "best_val_roc_auc")
    assert kept.step == trained.best_epoch
    for key in ("train_loss", "val_loss", "val_roc_auc"):
        curve = client.get_metric_history(run.info.run_id, key)
        assert [point.step for point in curve] == list(range(trained.epochs_run))
        assert [point.value for point in curve] == pytest.approx([entry[key] for entry in trained.history])

    frame, _ = cancer_frame
    predictor = TabularPredictor.load(trained.model_dir)
    features = torch.from_numpy(predictor.preprocessing.transform_array(frame))
    network = mlflow.pytorch.load_model(logged.model_uri)
    with torch.no_grad():
        from_mlflow = torch.sigmoid(network(features)).numpy()
    np.testing.assert_allclose(from_mlflow, predictor.predict_proba(frame), atol=1e-6)

    downloaded = mlflow.artifacts.download_artifacts(logged.model_dir_artifact_uri, dst_path=str(tmp_path / "dl"))
    np.testing.assert_allclose(
        TabularPredictor.load(downloaded).predict_proba(frame), predictor.predict_proba(frame), atol=0
    )


def test_epoch_logger_streams_curves_while_training(experiment_id: str) -> None:
    with mlflow.start_run(experiment_id=experiment_id) as run:
        log_epoch = make_mlflow_epoch_logger()
        for epoch, loss in enumerate([0.7, 0.5, 0.4]):
            log_epoch({"val_loss": loss}, epoch)
    curve = MlflowClient().get_metric_history(run.info.run_id, "val_loss")
    assert [(point.step, point.value) for point in curve] == [(0, 0.7), (1, 0.5), (2, 0.4)]


def test_logging_without_an_active_run_is_refused(trained: TrainResult, experiment_id: str) -> None:
    with pytest.raises(RuntimeError, match="no active MLflow run"):
        log_training(trained, FAST_CONFIG, dataset_version="v1")


def test_the_dataset_is_recorded_as_a_run_input(cancer_frame: FrameAndFeatures, experiment_id: str) -> None:
    frame, features = cancer_frame
    training_rows = frame[frame["split"] == "train"][[*features, "label"]]
    with mlflow.start_run(experiment_id=experiment_id) as run:
        log_dataset_input(training_rows, name="wdbc-train", dataset_version="0123456789abcdef" * 4, targets="label")
    [logged] = MlflowClient().get_run(run.info.run_id).inputs.dataset_inputs
    assert logged.dataset.name == "wdbc-train" and logged.dataset.digest == "0123456789abcdef" * 2
    assert {tag.key: tag.value for tag in logged.tags}["mlflow.data.context"] == "training"
    assert json.loads(logged.dataset.profile)["num_rows"] == len(training_rows)
    assert {column["name"] for column in json.loads(logged.dataset.schema)["mlflow_colspec"]} == {*features, "label"}


def test_summary_values_are_params_and_kept_metrics_are_best(experiment_id: str) -> None:
    with mlflow.start_run(experiment_id=experiment_id) as run:
        log_training_summary(best_epoch=4, epochs_run=9, stopped_early=True, train_seconds=3.14159,
                             kept_metrics={"val_roc_auc": 0.894})
    data = MlflowClient().get_run(run.info.run_id).data
    assert data.params == {"best_epoch": "4", "epochs_run": "9", "stopped_early": "True", "train_seconds": "3.14"}
    assert data.metrics == {"best_val_roc_auc": 0.894}


def test_a_failed_training_is_marked_with_its_reason(experiment_id: str) -> None:
    with pytest.raises(FloatingPointError), mlflow.start_run(experiment_id=experiment_id) as run:
        try:
            raise FloatingPointError("spec t2d_risk: training loss became nan at epoch 3")
        except FloatingPointError as failure:
            mark_failed(str(failure))
            raise
    finished = MlflowClient().get_run(run.info.run_id)
    assert finished.info.status == "FAILED"
    assert finished.data.tags[FAILURE_REASON_TAG] == "spec t2d_risk: training loss became nan at epoch 3"
