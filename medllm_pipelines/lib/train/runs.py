"""One training of a model spec, inside an active MLflow run: what the train asset calls.

The asset reads the dataset and the fitted preprocessing, opens the MLflow
run and writes the record; everything between is here, so that a notebook or
a benchmark trains exactly as the pipeline does.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medllm_pipelines.lib.curate.dataset import SplitDataset
from medllm_pipelines.lib.curate.preprocessing import FittedPreprocessing
from medllm_pipelines.lib.curate.spec import ModelSpec
from medllm_pipelines.lib.train.registry import RegisteredModel, register_model
from medllm_pipelines.lib.train.tabular import (
    TRAIN_SPLIT,
    VALIDATION_SPLIT,
    TrainConfig,
    TrainResult,
    train_tabular_classifier,
)
from medllm_pipelines.lib.train.tracking import (
    LoggedTraining,
    log_dataset_input,
    log_training,
    make_mlflow_epoch_logger,
    mark_failed,
)

LABEL_COLUMN = "label"
SPLIT_COLUMN = "split"
MLP_FAMILY = "mlp"


@dataclass(frozen=True)
class SpecTraining:
    """A trained model of a spec: where it is, how training went, and its MLflow run."""

    spec: ModelSpec
    dataset_version: str
    config: TrainConfig
    result: TrainResult
    logged: LoggedTraining
    preprocessing: FittedPreprocessing
    registered: RegisteredModel | None = None
    size: str = "demo"

    def record(self, experiment_id: str, dagster_run_id: str) -> dict[str, Any]:
        """What the model store keeps beside the model: how evaluation and retraining find it."""
        return {
            "mlflow_run_id": self.logged.run_id,
            "mlflow_experiment_id": experiment_id,
            "mlflow_model_uri": self.logged.model_uri,
            "dataset_version": self.dataset_version,
            "model_dir": str(self.result.model_dir),
            "preprocessing_fingerprint": self.preprocessing.fingerprint(),
            "dagster_run_id": dagster_run_id,
            **({"registered_model": self.registered.name, "registered_version": self.registered.version}
               if self.registered else {}),
        }

    def summary(self) -> str:
        result = self.result
        return (f"trained {self.spec.id}: best epoch {result.best_epoch} of {result.epochs_run}, "
                f"val ROC-AUC {result.val_metrics.get('val_roc_auc')}")

    def as_metadata(self) -> dict[str, Any]:
        result = self.result
        selected = self.preprocessing.describe().get("feature_selection", {}).get("selected")
        return {
            "trained": True,
            "dataset_version": self.dataset_version,
            "mlflow_run_id": self.logged.run_id,
            "mlflow_model_uri": self.logged.model_uri,
            "best_epoch": result.best_epoch,
            "epochs_run": result.epochs_run,
            "stopped_early": result.stopped_early,
            "train_seconds": round(result.train_seconds, 2),
            "n_train": result.n_train,
            "n_validation": result.n_val,
            "validation_metrics": result.val_metrics,
            "training_config": self.config.to_dict(),
            "training_size": self.size,
            **(self.registered.as_metadata() if self.registered else {}),
            "preprocessing_fingerprint": self.preprocessing.fingerprint(),
            "model_inputs": selected or self.preprocessing.output_features,
            "missing_values": self.preprocessing.missing_values,
        }


def spec_run_tags(spec: ModelSpec, dagster_run_id: str, dagster_asset: str, **extra: str) -> dict[str, str]:
    """The tags every MLflow run of a spec carries: where it came from and on which code."""
    from medllm_pipelines.lib.common.versions import code_version

    return {"dagster_run_id": dagster_run_id, "dagster_asset": dagster_asset, "model_spec": f"{spec.id}@{spec.version}",
            "scenario": spec.scenario, "code_version": code_version(), **extra}


def training_config(spec: ModelSpec, size: str = "demo") -> TrainConfig:
    """The spec's MLP config at ``size`` ("demo" or "full"); call it before opening the MLflow run.

    An unknown network, optimiser or scheduler raises UnknownComponentError
    naming the spec, the kind and the choices, so no run is opened for a spec
    that cannot train. A spec without a network block is an MLP (specs before issue 11).
    """
    network = spec.network_for(size) or {"family": MLP_FAMILY}
    return TrainConfig.from_spec(spec.id, network, spec.training_for(size))


def _model_inputs(dataset: SplitDataset, preprocessing: FittedPreprocessing, split: str):
    """The de-identified rows of ``split`` as the model reads them: its declared inputs and the label, nothing else."""
    columns = [c for c in preprocessing.spec.numeric_columns + preprocessing.spec.categorical_columns
               if c in dataset.frame.columns]
    rows = dataset.frame[dataset.frame[SPLIT_COLUMN] == split]
    return rows[[*columns, LABEL_COLUMN]].reset_index(drop=True)


def train_spec_model(
    dataset: SplitDataset,
    preprocessing: FittedPreprocessing,
    spec: ModelSpec,
    output_dir: Path,
    run_id: str,
    tags: dict[str, str],
    attachments: list[Path] | None = None,
    *,
    config: TrainConfig | None = None,
    size: str = "demo",
    register: bool = True,
) -> SpecTraining:
    """Train ``spec``'s network on ``dataset`` with the curate stage's ``preprocessing``; log to run ``run_id``.

    Inside the active run: the training and validation frames as MLflow
    inputs, per-epoch curves, params, the summary, the model, then the model
    registered under the spec id with alias ``challenger``. Any failure (a NaN
    loss among them) tags the run ``failure_reason`` and re-raises, so the run
    ends FAILED and nothing is registered. ``attachments`` (e.g. the dataset
    card) that exist are logged to the run as artifacts under ``foundations/``.
    """
    import mlflow

    try:
        if preprocessing.dataset_version not in (None, dataset.version):
            raise ValueError(
                f"preprocessing was fitted for dataset version {preprocessing.dataset_version[:16]}, "
                f"not {dataset.version[:16]}: materialise curate/{spec.id} preprocessing again"
            )
        config = config or training_config(spec, size)
        for split, context in ((TRAIN_SPLIT, "training"), (VALIDATION_SPLIT, "validation")):
            log_dataset_input(_model_inputs(dataset, preprocessing, split), name=f"{spec.id}-{split}",
                              dataset_version=dataset.version, context=context, targets=LABEL_COLUMN)
        mlflow.log_param("training_size", size)
        result = train_tabular_classifier(
            dataset.frame, preprocessing, LABEL_COLUMN, config, output_dir,
            on_epoch_metrics=make_mlflow_epoch_logger(run_id), spec_id=spec.id,
        )
        logged = log_training(result, config, dataset.version, tags=tags, log_history=False)
        for path in attachments or []:
            if path.is_file():
                mlflow.log_artifact(str(path), artifact_path="foundations")
        registered = None
        if register:
            registered = register_model(logged.model_uri, spec.id, family=MLP_FAMILY, dataset_version=dataset.version,
                                        metrics=result.val_metrics, tracking_uri=mlflow.get_tracking_uri())
    except Exception as failure:
        mark_failed(f"{type(failure).__name__}: {failure}")
        raise
    return SpecTraining(spec, dataset.version, config, result, logged, preprocessing, registered, size)
