"""One training of the deterioration spec inside an active MLflow run: what the train asset calls.

The asset reads the de-identified vitals and the curated windows, opens the
run and writes the record; between the two, everything is here: the dataset
inputs, params, per-epoch curves, the kept checkpoint's metrics, the test
metrics next to NEWS2 and the synthetic generator's optimum, the network
logged with a signature and an input example (zeros), and the registration
under the spec id with alias ``challenger`` (family ``lstm``: the recurrent family).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from medllm_pipelines.lib.curate.dataset import SplitDataset
from medllm_pipelines.lib.curate.sequences import HOUR
from medllm_pipelines.lib.curate.spec import ModelSpec
from medllm_pipelines.lib.train.registry import RegisteredModel
from medllm_pipelines.lib.train.sequence.training import (
    SequenceTrainConfig,
    SequenceTrainResult,
    generator_optimum,
    train_deterioration_model,
    train_forecast_model,
)

# registry.FAMILIES' recurrent families: each cell is registered under its own family (gru or lstm)
REGISTRY_FAMILY = {"gru": "gru", "lstm": "lstm"}
DEFAULT_WINDOW_HOURS = 24
DEFAULT_HORIZON_HOURS = 12


def sequence_training_config(spec: ModelSpec, size: str = "demo") -> SequenceTrainConfig:
    """The spec's config at ``size``; an unknown cell, optimiser, scheduler or key is refused naming the spec."""
    return SequenceTrainConfig.from_spec(
        spec.id, spec.network_for(size), spec.training_for(size),
        window_hours=int(spec.dataset.get("window_hours", DEFAULT_WINDOW_HOURS)),
        horizon_hours=int(spec.target.get("horizon_hours", 0 if spec.task == "regression" else DEFAULT_HORIZON_HOURS)))


@dataclass(frozen=True)
class SequenceSpecTraining:
    """A trained early-warning model: where it is, how it did against NEWS2 and the optimum, its run."""

    spec: ModelSpec
    dataset_version: str
    config: SequenceTrainConfig
    result: SequenceTrainResult
    run_id: str
    model_uri: str
    optimum: dict[str, float]
    registered: RegisteredModel | None = None
    size: str = "demo"

    def record(self, experiment_id: str, dagster_run_id: str) -> dict[str, Any]:
        return {
            "mlflow_run_id": self.run_id, "mlflow_experiment_id": experiment_id, "mlflow_model_uri": self.model_uri,
            "dataset_version": self.dataset_version, "model_dir": str(self.result.model_dir),
            "dagster_run_id": dagster_run_id,
            **({"registered_model": self.registered.name, "registered_version": self.registered.version}
               if self.registered else {}),
        }

    def summary(self) -> str:
        r = self.result
        if self.spec.task == "regression":
            return (f"trained {self.spec.id} ({self.config.cell}): best epoch {r.best_epoch} of {r.epochs_run} in "
                    f"{r.train_seconds:.1f} s, test RMSE {r.test_metrics.get('test_rmse', float('nan')):.2f} R^2 "
                    f"{r.test_metrics.get('test_r2', float('nan')):.3f} (training mean: RMSE "
                    f"{r.baseline_metrics.get('baseline_mean_test_rmse', float('nan')):.2f})")
        return (f"trained {self.spec.id} ({self.config.cell}): best epoch {r.best_epoch} of {r.epochs_run} in "
                f"{r.train_seconds:.1f} s, test ROC-AUC {r.test_metrics.get('test_roc_auc', float('nan')):.3f} "
                f"(NEWS2 {r.baseline_metrics.get('baseline_news2_test_roc_auc', float('nan')):.3f}, generator optimum "
                f"{self.optimum.get('test_generator_optimum_roc_auc', float('nan')):.3f})")

    def as_metadata(self) -> dict[str, Any]:
        r = self.result

        def rounded(metrics: dict[str, float]) -> dict[str, float | None]:
            return {k: (None if math.isnan(v) else round(v, 4)) for k, v in metrics.items()}

        return {
            "trained": True,
            "dataset_version": self.dataset_version,
            "mlflow_run_id": self.run_id,
            "mlflow_model_uri": self.model_uri,
            "network_cell": self.config.cell,
            "best_epoch": r.best_epoch,
            "epochs_run": r.epochs_run,
            "stopped_early": r.stopped_early,
            "train_seconds": round(r.train_seconds, 2),
            "n_train": r.n_train,
            "n_validation": r.n_val,
            "n_test": r.n_test,
            "parameters": r.parameters,
            "validation_metrics": rounded(r.val_metrics),
            "test_metrics": rounded(r.test_metrics),
            "baseline": self.spec.baseline,
            "baseline_metrics": rounded(r.baseline_metrics),
            "generator_optimum": rounded(self.optimum),
            "training_config": self.config.to_dict(),
            "training_size": self.size,
            **(self.registered.as_metadata() if self.registered else {}),
        }


def _log_model(result: SequenceTrainResult, network: Any) -> str:
    import mlflow
    import numpy as np
    from mlflow.models import infer_signature

    from medllm_pipelines.lib.train.sequence.data import CHANNELS
    from medllm_pipelines.lib.train.tracking import (
        MODEL_ARTIFACT_NAME,
        MODEL_DIR_ARTIFACT_PATH,
        pinned_pip_requirements,
    )

    example = np.zeros((2, result_window(result), len(CHANNELS)), dtype=np.float32)  # zeros, never real rows
    info = mlflow.pytorch.log_model(network, name=MODEL_ARTIFACT_NAME, serialization_format="pickle",
                                    signature=infer_signature(example, np.zeros((2,), dtype=np.float32)),
                                    input_example=example, pip_requirements=pinned_pip_requirements())
    mlflow.log_artifacts(str(result.model_dir), artifact_path=MODEL_DIR_ARTIFACT_PATH)
    return info.model_uri


def result_window(result: SequenceTrainResult) -> int:
    import json

    return int(json.loads((result.model_dir / "model_spec.json").read_text())["window_hours"])


def load_network(model_dir: Path) -> Any:
    """The kept network from a model folder (``model_spec.json`` + weights), in eval mode."""
    import json

    import torch

    from medllm_pipelines.lib.train.sequence.networks import RecurrentConfig, RecurrentEarlyWarning

    spec = json.loads((Path(model_dir) / "model_spec.json").read_text())
    network = RecurrentEarlyWarning(RecurrentConfig(**spec["network"]))
    network.load_state_dict(torch.load(Path(model_dir) / spec["files"]["network_weights"], map_location="cpu",
                                       weights_only=True))
    return network.eval()


def train_sequence_spec_model(
    vitals: pd.DataFrame,
    dataset: SplitDataset,
    spec: ModelSpec,
    output_dir: Path,
    run_id: str,
    *,
    config: SequenceTrainConfig | None = None,
    size: str = "demo",
    register: bool = True,
    with_generator_optimum: bool = True,
) -> SequenceSpecTraining:
    """Train ``spec``'s recurrent network on ``dataset`` (windows with splits) over ``vitals`` in run ``run_id``:
    the deterioration classifier, or for a ``task: regression`` spec the next-value forecast (column ``target``).

    Any failure (a NaN loss among them) tags the run ``failure_reason`` and re-raises: the run ends FAILED and
    nothing is registered.
    """
    import mlflow

    from medllm_pipelines.lib.train.registry import register_model
    from medllm_pipelines.lib.train.tracking import (
        TRAINING_SUMMARY_ARTIFACT,
        log_dataset_input,
        log_training_summary,
        make_mlflow_epoch_logger,
        mark_failed,
    )

    config = config or sequence_training_config(spec, size)
    regression = spec.task == "regression"
    target = "target" if regression else "label"
    try:
        for split, context in (("train", "training"), ("validation", "validation"), ("test", "testing")):
            log_dataset_input(dataset.split(split)[[HOUR, target]].reset_index(drop=True), name=f"{spec.id}-{split}",
                              dataset_version=dataset.version, context=context, targets=target)
        mlflow.log_params({**{k: str(v) for k, v in config.to_dict().items()}, "training_size": size,
                           "dataset_version": dataset.version, "network_family": REGISTRY_FAMILY[config.cell],
                           **{f"n_{k}": v for k, v in dataset.rows_per_split.items()}}, synchronous=True)
        mlflow.set_tags({"dataset_version": dataset.version, "model_family": REGISTRY_FAMILY[config.cell],
                         "network_cell": config.cell})
        trainer = train_forecast_model if regression else train_deterioration_model
        result = trainer(vitals, dataset.frame, config, output_dir, on_epoch_metrics=make_mlflow_epoch_logger(run_id),
                         spec_id=spec.id, dataset_version=dataset.version)
        log_training_summary(best_epoch=result.best_epoch, epochs_run=result.epochs_run,
                             stopped_early=result.stopped_early, train_seconds=result.train_seconds,
                             kept_metrics={k: v for k, v in result.val_metrics.items() if not math.isnan(v)})
        optimum = (generator_optimum(vitals, dataset.frame, config.horizon_hours)
                   if with_generator_optimum and not regression else {})
        finite = {k: v for k, v in {**result.test_metrics, **result.baseline_metrics, **optimum}.items()
                  if not math.isnan(v)}
        mlflow.log_param("parameters", result.parameters)
        mlflow.log_metrics(finite, synchronous=True)
        model_uri = _log_model(result, load_network(result.model_dir))
        mlflow.log_dict(result.to_dict(), TRAINING_SUMMARY_ARTIFACT)
        registered = None
        if register:
            registered = register_model(model_uri, spec.id, family=REGISTRY_FAMILY[config.cell],
                                        dataset_version=dataset.version,
                                        metrics={k: v for k, v in {**result.test_metrics, **result.val_metrics}.items()
                                                 if not math.isnan(v)},
                                        tracking_uri=mlflow.get_tracking_uri())
    except Exception as failure:
        mark_failed(f"{type(failure).__name__}: {failure}")
        raise
    return SequenceSpecTraining(spec, dataset.version, config, result, run_id, model_uri, optimum, registered, size)
