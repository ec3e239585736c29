"""One training of an imaging spec inside an active MLflow run: what the train/lesion_* assets call.

The asset reads the curate stage's image rows and splits and opens the run;
everything between is here: the split frames as MLflow inputs (columns only,
no pixels, no person key), params, per-epoch curves, the training summary
(best epoch, epochs run, stopped early, seconds as params; the kept
checkpoint's validation metrics as ``best_*``), test metrics beside the
spec's baseline, the model logged as a pyfunc (slices in, masks or lesion
probabilities out) with a signature and an input example, and the
registration under the spec id with alias ``challenger`` (family ``unet`` for
UNet/SegResNet, ``cnn`` for ResNet/DenseNet). Any failure tags the run
``failure_reason`` and re-raises, so that the run ends FAILED and nothing is
registered.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from medllm_pipelines.lib.curate.dataset import SplitDataset
from medllm_pipelines.lib.curate.spec import DataNeeds, ModelSpec
from medllm_pipelines.lib.train.imaging.baselines import BaselineScores, classification_baseline, segmentation_baseline
from medllm_pipelines.lib.train.imaging.images import PRESENCE_KEY, SPLIT_FRAME_COLUMNS
from medllm_pipelines.lib.train.imaging.training import (
    CLASSIFICATION,
    SEGMENTATION,
    ImagingConfig,
    ImagingTrainResult,
    split_images,
    train_imaging_model,
    untrainable_reason,
)
from medllm_pipelines.lib.train.registry import RegisteredModel

# The spec's ``task`` -> the imaging trainer's task.
SPEC_TASKS = {"binary_segmentation": SEGMENTATION, "binary_classification": CLASSIFICATION}
MODEL_ARTIFACT_NAME = "model"
TRAINING_SUMMARY_ARTIFACT = "training_summary.json"
COUNT_KEYS = ("n_images", "n_lesion_images")  # per-split counts: params, not metric charts
INPUT_EXAMPLE_SHAPE = (1, 64, 64)  # zeros, never a patient's pixels: an input example is stored in clear


def imaging_task(spec: ModelSpec) -> str:
    """``segmentation`` or ``classification`` for an imaging spec; any other task is refused, naming the spec."""
    try:
        return SPEC_TASKS[spec.task]
    except KeyError:
        raise ValueError(f"spec {spec.id}: task {spec.task!r} is not an imaging task; "
                         f"choose one of {', '.join(SPEC_TASKS)}") from None


def imaging_training_config(spec: ModelSpec, size: str = "demo") -> ImagingConfig:
    """The spec's imaging config at ``size``; call it before opening the MLflow run (bad specs fail here).

    An unknown network, optimiser or scheduler raises UnknownComponentError
    naming the spec; an unknown key a ValueError naming the spec.
    """
    return ImagingConfig.from_spec(spec.id, imaging_task(spec), spec.network_for(size), spec.training_for(size))


@dataclass(frozen=True)
class ImagingDataNeeds:
    """Whether an imaging spec can train: its ``min_rows`` images, and splits its task can fit on (said, never raised).

    A small hospital may hold images enough but no lesion in its training
    split, or no validation image: that is trained=false with the reason, not a failure.
    """

    rows: DataNeeds
    split_problem: str | None = None

    @property
    def met(self) -> bool:
        return self.rows.met and not self.split_problem

    @property
    def reason(self) -> str:
        if not self.rows.met:
            return self.rows.reason
        return f"spec {self.rows.spec_id}: {self.split_problem}" if self.split_problem else ""

    def as_metadata(self) -> dict[str, Any]:
        return {**self.rows.as_metadata(), "data_needs_met": self.met, **({"reason": self.reason} if not self.met else {})}


def imaging_data_needs(spec: ModelSpec, frame: pd.DataFrame, task: str) -> ImagingDataNeeds:
    """``spec``'s data needs against the image rows with their ``split`` (training.untrainable_reason for the task)."""
    rows = spec.needs_met_by(len(frame))
    return ImagingDataNeeds(rows, untrainable_reason(frame, task) if rows.met else None)


def split_frame(dataset: SplitDataset, split: str) -> pd.DataFrame:
    """The rows of ``split`` as MLflow records them: the declared columns only (no pixels, masks or person key)."""
    rows = dataset.frame[dataset.frame["split"] == split]
    return rows[[c for c in SPLIT_FRAME_COLUMNS if c in rows.columns]].reset_index(drop=True)


def _finite(metrics: dict[str, float]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items()
            if not k.endswith(COUNT_KEYS) and isinstance(v, (int, float)) and math.isfinite(float(v))}


def _counts(metrics: dict[str, float]) -> dict[str, int]:
    return {k: int(v) for k, v in metrics.items() if k.endswith(COUNT_KEYS) and math.isfinite(float(v))}


@dataclass(frozen=True)
class ImagingSpecTraining:
    """A trained imaging model of a spec: where it is, how it did, its MLflow run and registry entry."""

    spec: ModelSpec
    dataset_version: str
    config: ImagingConfig
    result: ImagingTrainResult
    run_id: str
    model_uri: str
    baseline: BaselineScores
    registered: RegisteredModel | None = None
    size: str = "demo"

    @property
    def headline(self) -> str:
        """The spec's first metric (dice, roc_auc): what the summary and the benchmarks quote."""
        return self.spec.metrics[0]

    def record(self, experiment_id: str, dagster_run_id: str) -> dict[str, Any]:
        """What the model store keeps beside the model: how evaluation and retraining find it."""
        return {
            "mlflow_run_id": self.run_id, "mlflow_experiment_id": experiment_id, "mlflow_model_uri": self.model_uri,
            "dataset_version": self.dataset_version, "model_dir": str(self.result.model_dir),
            "dagster_run_id": dagster_run_id, "task": self.result.task,
            **({"registered_model": self.registered.name, "registered_version": self.registered.version}
               if self.registered else {}),
        }

    def summary(self) -> str:
        r, name = self.result, self.headline
        return (f"trained {self.spec.id} ({self.config.network['family']}): best epoch {r.best_epoch} of "
                f"{r.epochs_run} in {r.train_seconds:.1f} s, test {name} {r.test_metrics.get(f'test_{name}', math.nan):.3f} "
                f"({self.baseline.name} {self.baseline.metrics.get(f'baseline_test_{name}', math.nan):.3f})")

    def as_metadata(self) -> dict[str, Any]:
        r = self.result
        return {
            "trained": True,
            "dataset_version": self.dataset_version,
            "mlflow_run_id": self.run_id,
            "mlflow_model_uri": self.model_uri,
            "task": r.task,
            "network_family": self.config.network["family"],
            "best_epoch": r.best_epoch,
            "epochs_run": r.epochs_run,
            "stopped_early": r.stopped_early,
            "train_seconds": round(r.train_seconds, 2),
            "rows_per_split": r.rows_per_split,
            "parameters": r.parameters,
            "validation_metrics": {k: round(v, 4) for k, v in _finite(r.val_metrics).items()},
            "test_metrics": {k: round(v, 4) for k, v in _finite(r.test_metrics).items()},
            **self.baseline.as_metadata(),
            "training_config": self.config.to_dict(),
            "training_size": self.size,
            **(self.registered.as_metadata() if self.registered else {}),
        }


def _baseline(task: str, dataset: SplitDataset, images_folder: Path) -> BaselineScores:
    images = split_images(dataset.frame, images_folder)
    if task == SEGMENTATION:
        return segmentation_baseline(images["train"], images["test"])
    return classification_baseline(images["train"], images["test"])


def log_imaging_pyfunc(model_dir: Path, task: str, name: str = MODEL_ARTIFACT_NAME) -> str:
    """An imaging model folder as an MLflow pyfunc with a tensor signature and a zeros input example; its model URI."""
    import mlflow
    import numpy as np

    from medllm_pipelines.lib.train.imaging.pyfunc import LesionImagingModel, signature
    from medllm_pipelines.lib.train.tracking import pinned_pip_requirements

    # The class is pickled by reference to this package (MLflow warns about pickling all the same).
    info = mlflow.pyfunc.log_model(
        name=name,
        python_model=LesionImagingModel(),
        artifacts={"model_dir": str(model_dir)},
        signature=signature(task),
        input_example=np.zeros(INPUT_EXAMPLE_SHAPE, dtype=np.float32),
        pip_requirements=[*pinned_pip_requirements(("torch", "monai", "numpy")), "mlflow"],
    )
    return info.model_uri


def train_imaging_spec_model(
    dataset: SplitDataset,
    images_folder: Path,
    spec: ModelSpec,
    output_dir: Path,
    run_id: str,
    *,
    config: ImagingConfig | None = None,
    size: str = "demo",
    register: bool = True,
) -> ImagingSpecTraining:
    """Train ``spec``'s network on ``dataset`` (curate/lesion_segmentation_dataset rows with ``split``) in run ``run_id``.

    ``images_folder``: the de-identified pixel arrays (the artifact store's
    ``deidentified/images``). A split the task cannot fit on (see
    training.untrainable_reason) raises ValueError naming the spec: the asset
    asks ``untrainable_reason`` first and reports trained=false instead.
    """
    import mlflow

    from medllm_pipelines.lib.train.registry import register_model
    from medllm_pipelines.lib.train.tracking import (
        log_dataset_input,
        log_training_summary,
        make_mlflow_epoch_logger,
        mark_failed,
    )

    try:
        config = config or imaging_training_config(spec, size)
        reason = untrainable_reason(dataset.frame, config.task)
        if reason:
            raise ValueError(f"spec {spec.id}: {reason}")
        for split, context in (("train", "training"), ("validation", "validation"), ("test", "testing")):
            log_dataset_input(split_frame(dataset, split), name=f"{spec.id}-{split}", dataset_version=dataset.version,
                              context=context, targets=PRESENCE_KEY)
        mlflow.log_params({**config.as_params(), "training_size": size, "dataset_version": dataset.version,
                           "network_family": config.network["family"], "baseline": spec.baseline,
                           **{f"n_{split}": int((dataset.frame["split"] == split).sum())
                              for split in ("train", "validation", "test")}}, synchronous=True)
        mlflow.set_tags({"dataset_version": dataset.version, "model_family": config.registry_family})
        baseline = _baseline(config.task, dataset, images_folder)
        result = train_imaging_model(dataset.frame, images_folder, config, output_dir,
                                     on_epoch_metrics=make_mlflow_epoch_logger(run_id), spec_id=spec.id,
                                     dataset_version=dataset.version)
        log_training_summary(best_epoch=result.best_epoch, epochs_run=result.epochs_run,
                             stopped_early=result.stopped_early, train_seconds=result.train_seconds,
                             kept_metrics=_finite(result.val_metrics))
        mlflow.log_params({"parameters": result.parameters, "baseline_threshold": baseline.threshold,
                           **_counts(result.val_metrics), **_counts(result.test_metrics)})
        mlflow.log_metrics({**_finite(result.test_metrics), **_finite(baseline.metrics)}, synchronous=True)
        model_uri = log_imaging_pyfunc(result.model_dir, result.task)
        mlflow.log_dict({**result.to_dict(), "baseline": baseline.as_metadata()}, TRAINING_SUMMARY_ARTIFACT)
        registered = None
        if register:
            registered = register_model(model_uri, spec.id, family=config.registry_family,
                                        dataset_version=dataset.version,
                                        metrics={**_finite(result.test_metrics), **_finite(result.val_metrics)},
                                        tracking_uri=mlflow.get_tracking_uri())
    except Exception as failure:
        mark_failed(f"{type(failure).__name__}: {failure}")
        raise
    return ImagingSpecTraining(spec, dataset.version, config, result, run_id, model_uri, baseline, registered, size)
