"""One training of a spec inside its MLflow run: inputs, summary, registry; a NaN loss fails it cleanly."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from medllm_pipelines.lib.curate.dataset import SplitDataset
from medllm_pipelines.lib.curate.spec import load_spec
from medllm_pipelines.lib.train.optim import TrainingDivergedError
from medllm_pipelines.lib.train.registry import CHALLENGER, list_registered
from medllm_pipelines.lib.train.runs import train_spec_model
from medllm_pipelines.lib.train.tabular import TrainConfig
from medllm_pipelines.lib.train.tracking import FAILURE_REASON_TAG
from medllm_pipelines_tests.lib.train.datasets import fitted_preprocessing

FrameAndFeatures = tuple[pd.DataFrame, list[str]]
SMALL = TrainConfig(hidden_sizes=(8,), max_epochs=3, lr=1e-2, seed=3)


@pytest.fixture()
def experiment_id(tmp_path: Path) -> Iterator[str]:
    import mlflow.tracking._tracking_service.utils as tracking_utils

    previous = tracking_utils._tracking_uri
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    try:
        yield mlflow.create_experiment("runs", artifact_location=(tmp_path / "artifacts").as_uri())
    finally:
        if mlflow.active_run() is not None:
            mlflow.end_run()
        mlflow.set_tracking_uri(previous)


def _train(cancer_frame: FrameAndFeatures, tmp_path: Path, experiment_id: str, config: TrainConfig):
    frame, features = cancer_frame
    dataset = SplitDataset(frame=frame, version="f" * 64)
    spec = load_spec("t2d_risk")
    with mlflow.start_run(experiment_id=experiment_id) as run:
        trained = train_spec_model(dataset, fitted_preprocessing(frame, features), spec, tmp_path / "model",
                                   run.info.run_id, {"dagster_run_id": "r1"}, config=config, size="demo")
    return run, trained, features


def test_a_training_records_its_inputs_and_summary_and_is_registered(
    cancer_frame: FrameAndFeatures, tmp_path: Path, experiment_id: str
) -> None:
    run, trained, features = _train(cancer_frame, tmp_path, experiment_id, SMALL)
    finished = MlflowClient().get_run(run.info.run_id)
    assert finished.info.status == "FINISHED"
    inputs = {i.dataset.name: {t.key: t.value for t in i.tags} for i in finished.inputs.dataset_inputs}
    assert inputs["t2d_risk-train"]["mlflow.data.context"] == "training"
    assert inputs["t2d_risk-validation"]["mlflow.data.context"] == "validation"
    params = finished.data.params
    assert params["training_size"] == "demo" and params["best_epoch"] == str(trained.result.best_epoch)
    assert finished.data.metrics["best_val_roc_auc"] == pytest.approx(trained.result.val_metrics["val_roc_auc"])

    meta = trained.as_metadata()
    assert (meta["registered_model"], meta["registered_version"], meta["aliases"]) == ("t2d_risk", "1", [CHALLENGER])
    [entry] = list_registered()
    assert entry.run_id == run.info.run_id and entry.dataset_version == "f" * 64 and entry.family == "mlp"
    assert entry.metrics["val_roc_auc"] == pytest.approx(trained.result.val_metrics["val_roc_auc"])


def test_a_nan_loss_fails_the_run_with_its_reason_and_registers_nothing(
    cancer_frame: FrameAndFeatures, tmp_path: Path, experiment_id: str
) -> None:
    diverging = TrainConfig(hidden_sizes=(8,), optimizer="sgd", momentum=0.0, lr=1e30, max_epochs=3, dropout=0.0)
    with pytest.raises(TrainingDivergedError, match=r"spec t2d_risk: training loss became (nan|inf) at epoch 0"):
        _train(cancer_frame, tmp_path, experiment_id, diverging)
    [run] = MlflowClient().search_runs([experiment_id])
    assert run.info.status == "FAILED"
    assert run.data.tags[FAILURE_REASON_TAG].startswith("TrainingDivergedError: spec t2d_risk: training loss became")
    assert list_registered() == []
