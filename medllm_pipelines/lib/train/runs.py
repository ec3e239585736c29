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
from medllm_pipelines.lib.train.tabular import TrainConfig, TrainResult, train_tabular_classifier
from medllm_pipelines.lib.train.tracking import LoggedTraining, log_training, make_mlflow_epoch_logger

LABEL_COLUMN = "label"


@dataclass(frozen=True)
class SpecTraining:
    """A trained model of a spec: where it is, how training went, and its MLflow run."""

    spec: ModelSpec
    dataset_version: str
    config: TrainConfig
    result: TrainResult
    logged: LoggedTraining
    preprocessing: FittedPreprocessing

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
            "preprocessing_fingerprint": self.preprocessing.fingerprint(),
            "model_inputs": selected or self.preprocessing.output_features,
            "missing_values": self.preprocessing.missing_values,
        }


def spec_run_tags(spec: ModelSpec, dagster_run_id: str, dagster_asset: str, **extra: str) -> dict[str, str]:
    """The tags every MLflow run of a spec carries: where it came from and on which code."""
    from medllm_pipelines.lib.common.versions import code_version

    return {"dagster_run_id": dagster_run_id, "dagster_asset": dagster_asset, "model_spec": f"{spec.id}@{spec.version}",
            "scenario": spec.scenario, "code_version": code_version(), **extra}


def train_spec_model(
    dataset: SplitDataset,
    preprocessing: FittedPreprocessing,
    spec: ModelSpec,
    output_dir: Path,
    run_id: str,
    tags: dict[str, str],
    attachments: list[Path] | None = None,
) -> SpecTraining:
    """Train ``spec``'s network on ``dataset`` with the curate stage's ``preprocessing``; log to run ``run_id``.

    ``attachments`` (e.g. the dataset card) that exist are logged to the run as artifacts under ``foundations/``.
    """
    if preprocessing.dataset_version not in (None, dataset.version):
        raise ValueError(
            f"preprocessing was fitted for dataset version {preprocessing.dataset_version[:16]}, "
            f"not {dataset.version[:16]}: materialise curate/{spec.id} preprocessing again"
        )
    config = TrainConfig.from_dict(spec.training)
    result = train_tabular_classifier(
        dataset.frame, preprocessing, LABEL_COLUMN, config, output_dir, on_epoch_metrics=make_mlflow_epoch_logger(run_id)
    )
    logged = log_training(result, config, dataset.version, tags=tags, log_history=False)
    import mlflow

    for path in attachments or []:
        if path.is_file():
            mlflow.log_artifact(str(path), artifact_path="foundations")
    return SpecTraining(spec, dataset.version, config, result, logged, preprocessing)
