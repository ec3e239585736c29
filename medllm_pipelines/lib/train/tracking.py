"""Recording a training run in the active MLflow run (M5, M6, V7 traceability).

These helpers never choose a tracking URI, experiment or run: the caller
(the Dagster MLflow resource) owns those, so that one materialisation is one
run tagged with the Dagster run id, as CONVENTIONS rule 9 asks.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import metadata
from typing import Any, Literal

import mlflow
import mlflow.pytorch
import numpy as np
import pandas as pd
from mlflow.entities import Metric
from mlflow.models import infer_signature
from mlflow.tracking import MlflowClient

from medllm_pipelines.lib.train.predictor import TabularPredictor
from medllm_pipelines.lib.train.registry import TRAINING_EXPERIMENT_TAGS
from medllm_pipelines.lib.train.tabular import EpochMetricsCallback, TrainConfig, TrainResult

MODEL_ARTIFACT_NAME = "model"
MODEL_DIR_ARTIFACT_PATH = "model_dir"
TRAINING_SUMMARY_ARTIFACT = "training_summary.json"
DATASET_VERSION_TAG = "dataset_version"
PINNED_PACKAGES = ("torch", "lightning", "scikit-learn", "numpy", "pandas")
FAILURE_REASON_TAG = "failure_reason"
SUMMARY_PARAMS = ("best_epoch", "epochs_run", "stopped_early", "train_seconds")
_MLFLOW_BATCH_LIMIT = 1000  # MLflow accepts at most 1000 metrics per log_batch call.
_MLFLOW_TAG_LIMIT = 5000  # characters of a tag value MLflow keeps

__all__ = [
    "DATASET_VERSION_TAG", "FAILURE_REASON_TAG", "TRAINING_EXPERIMENT_TAGS", "LoggedTraining", "log_dataset_input",
    "log_training", "log_training_summary", "make_mlflow_epoch_logger", "mark_failed", "pinned_pip_requirements",
]


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


def log_dataset_input(
    frame: pd.DataFrame, *, name: str, dataset_version: str, context: str = "training", targets: str | None = None
) -> None:
    """Record ``frame`` as an input of the active run, so that its Datasets field names what it was trained on.

    Only the schema, the row count and a digest go to MLflow (no rows), so the
    frame must already be the de-identified one a model sees. The digest is
    the dataset version's prefix: two runs on the same version show the same dataset.
    """
    import mlflow.data

    _require_active_run()
    with warnings.catch_warnings():  # the label is an integer column: MLflow's hint is about model schemas
        warnings.filterwarnings("ignore", message=r".*Inferred schema contains integer column.*")
        dataset = mlflow.data.from_pandas(frame, name=name, targets=targets, digest=dataset_version[:32])
        mlflow.log_input(dataset, context=context, tags={DATASET_VERSION_TAG: dataset_version})  # schema is lazy


def log_training_summary(
    *, best_epoch: int, epochs_run: int, stopped_early: bool, train_seconds: float, kept_metrics: Mapping[str, float]
) -> None:
    """How training went, as params (one value each, not one-point charts), and the kept checkpoint's metrics.

    ``kept_metrics`` are the metrics of the checkpoint that is kept (the best
    epoch's, not the last one's), logged as ``best_<name>`` at the best epoch's step.
    """
    _require_active_run()
    mlflow.log_params(
        {"best_epoch": int(best_epoch), "epochs_run": int(epochs_run), "stopped_early": bool(stopped_early),
         "train_seconds": round(float(train_seconds), 2)},
        synchronous=True,
    )
    if kept_metrics:
        mlflow.log_metrics({f"best_{key}": float(value) for key, value in kept_metrics.items()},
                           step=int(best_epoch), synchronous=True)


def mark_failed(reason: str) -> None:
    """Tag the active run with ``failure_reason`` (the caller re-raises; the run context then ends it FAILED)."""
    if mlflow.active_run() is not None:
        mlflow.set_tag(FAILURE_REASON_TAG, str(reason)[:_MLFLOW_TAG_LIMIT])


def log_training(
    result: TrainResult,
    config: TrainConfig,
    dataset_version: str,
    tags: Mapping[str, str] | None = None,
    *,
    log_history: bool = True,
    serialization_format: Literal["pt2", "pickle"] = "pt2",
) -> LoggedTraining:
    """Log params, curves, the training summary, the network and the model directory to the active run.

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

    if log_history:
        _log_metrics_batched(client, run_id, _history_metrics(result.history))
    log_training_summary(best_epoch=result.best_epoch, epochs_run=result.epochs_run, stopped_early=result.stopped_early,
                         train_seconds=result.train_seconds, kept_metrics=result.val_metrics)

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
