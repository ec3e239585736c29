from __future__ import annotations

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
    LoggedTraining,
    log_training,
    make_mlflow_epoch_logger,
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
    assert data.metrics["best_epoch"] == trained.best_epoch
    assert data.metrics["best_val_roc_auc"] == pytest.approx(trained.val_metrics["val_roc_auc"])
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
