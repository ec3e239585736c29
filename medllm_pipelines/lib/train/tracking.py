"""Recording a training run in the active MLflow run (M5, M6, V7 traceability).

These helpers never choose a tracking URI, experiment or run: the caller
(the Dagster MLflow resource) owns those, so that one materialisation is one
run tagged with the Dagster run id, as CONVENTIONS rule 9 asks.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import metadata
from typing import Any, Literal

import mlflow
import mlflow.pytorch
import numpy as np
from mlflow.entities import Metric
from mlflow.models import infer_signature
from mlflow.tracking import MlflowClient

from medllm_pipelines.lib.train.predictor import TabularPredictor
from medllm_pipelines.lib.train.tabular import EpochMetricsCallback, TrainConfig, TrainResult

MODEL_ARTIFACT_NAME = "model"
MODEL_DIR_ARTIFACT_PATH = "model_dir"
TRAINING_SUMMARY_ARTIFACT = "training_summary.json"
DATASET_VERSION_TAG = "dataset_version"
PINNED_PACKAGES = ("torch", "lightning", "scikit-learn", "numpy", "pandas")
_MLFLOW_BATCH_LIMIT = 1000  # MLflow accepts at most 1000 metrics per log_batch call.


@dataclass(frozen=True)
class LoggedTraining:
    """Identifiers to put in asset metadata and to load the model back."""

    run_id: str
    model_id: str
    model_uri: str
    model_dir_artifact_uri: str
    seconds: float


def _require_active_run() -> mlflow.ActiveRun:
    run = mlflow.active_run()
    if run is None:
        raise RuntimeError("no active MLflow run: start one (mlflow.start_run) before logging training")
    return run


def pinned_pip_requirements(packages: tuple[str, ...] = PINNED_PACKAGES) -> list[str]:
    """`name==version` of the running packages, local build tags dropped (2.13.0+cpu -> 2.13.0).

    Passing these explicitly skips MLflow's requirement inference (~8 s -> ~0.1 s, STACK.md).
    """
    return [f"{package}=={metadata.version(package).split('+')[0]}" for package in packages]


def flatten_config(config: TrainConfig, prefix: str = "") -> dict[str, str]:
    """MLflow params are strings; lists keep their JSON-ish repr so a search can match them."""
    return {f"{prefix}{key}": str(value) for key, value in config.to_dict().items()}


def _history_metrics(history: list[dict[str, float]]) -> list[Metric]:
    timestamp = int(time.time() * 1000)
    metrics = []
    for entry in history:
        step = int(entry["epoch"])
        for key, value in entry.items():
            if key != "epoch":
                metrics.append(Metric(key=key, value=float(value), timestamp=timestamp, step=step))
    return metrics


def _log_metrics_batched(client: MlflowClient, run_id: str, metrics: list[Metric]) -> None:
    for start in range(0, len(metrics), _MLFLOW_BATCH_LIMIT):
        client.log_batch(run_id, metrics=metrics[start : start + _MLFLOW_BATCH_LIMIT], synchronous=True)


def make_mlflow_epoch_logger(run_id: str | None = None, tracking_uri: str | None = None) -> EpochMetricsCallback:
    """An `on_epoch_metrics` hook that streams each epoch's metrics to a run while training (M6).

    Bound to the run active when it is made (or `run_id`) and to the tracking
    URI current then (or `tracking_uri`), so it keeps logging to the right run
    whatever else starts runs or changes the URI meanwhile. When you use it, call
    `log_training(..., log_history=False)` so the curves are not logged twice.
    """
    bound_run_id = run_id or _require_active_run().info.run_id
    client = MlflowClient(tracking_uri=tracking_uri or mlflow.get_tracking_uri())

    def log_epoch(metrics: dict[str, float], epoch: int) -> None:
        timestamp = int(time.time() * 1000)
        batch = [Metric(key=k, value=float(v), timestamp=timestamp, step=epoch) for k, v in metrics.items()]
        client.log_batch(bound_run_id, metrics=batch, synchronous=True)

    return log_epoch


def log_training(
    result: TrainResult,
    config: TrainConfig,
    dataset_version: str,
    tags: Mapping[str, str] | None = None,
    *,
    log_history: bool = True,
    serialization_format: Literal["pt2", "pickle"] = "pt2",
) -> LoggedTraining:
    """Log params, curves, summary metrics, the network and the model directory to the active run.

    The MLflow model is the bare network (input: preprocessed float32
    features, output: one logit per row); the full predictor with its
    preprocessing is the `model_dir` artifact, loaded with
    `TabularPredictor.load` after `mlflow.artifacts.download_artifacts`.
    "pt2" (torch.export, ~0.5 s more) loads without unpickling code;
    "pickle" loads back as `TabularMLP` but runs pickled code on load.
    """
    started = time.perf_counter()
    run = _require_active_run()
    run_id = run.info.run_id
    client = MlflowClient()

    mlflow.set_tags({DATASET_VERSION_TAG: dataset_version, **dict(tags or {})})
    params: dict[str, Any] = {
        **flatten_config(config),
        "dataset_version": dataset_version,
        "n_train": result.n_train,
        "n_val": result.n_val,
        "n_features_out": len(result.feature_names_out),
    }
    mlflow.log_params(params, synchronous=True)

    metrics = _history_metrics(result.history) if log_history else []
    final_step = max(result.epochs_run - 1, 0)
    summary = {
        "best_epoch": float(result.best_epoch),
        "epochs_run": float(result.epochs_run),
        "stopped_early": float(result.stopped_early),
        "train_seconds": float(result.train_seconds),
        **{f"best_{key}": float(value) for key, value in result.val_metrics.items()},
    }
    timestamp = int(time.time() * 1000)
    metrics += [Metric(key=k, value=v, timestamp=timestamp, step=final_step) for k, v in summary.items()]
    _log_metrics_batched(client, run_id, metrics)

    predictor = TabularPredictor.load(result.model_dir)
    # Zeros, never real rows: an input example is stored in the artifact store in clear.
    example_features = np.zeros((2, len(result.feature_names_out)), dtype=np.float32)
    format_arguments: dict[str, Any] = (
        {"input_example": example_features}
        if serialization_format == "pt2"
        else {"signature": infer_signature(example_features, np.zeros((2,), dtype=np.float32))}
    )
    model_info = mlflow.pytorch.log_model(
        predictor.network,
        name=MODEL_ARTIFACT_NAME,
        pip_requirements=pinned_pip_requirements(),
        serialization_format=serialization_format,
        params={"dataset_version": dataset_version, "best_epoch": result.best_epoch},
        **format_arguments,
    )
    mlflow.log_artifacts(str(result.model_dir), artifact_path=MODEL_DIR_ARTIFACT_PATH)
    mlflow.log_dict(result.to_dict(), TRAINING_SUMMARY_ARTIFACT)

    return LoggedTraining(
        run_id=run_id,
        model_id=model_info.model_id,
        model_uri=model_info.model_uri,
        model_dir_artifact_uri=f"runs:/{run_id}/{MODEL_DIR_ARTIFACT_PATH}",
        seconds=time.perf_counter() - started,
    )
