"""One seeded training of the early-warning network, and its held-out evaluation against NEWS2.

``train_deterioration_model`` seeds everything, builds windows (train split
only for the scaler), trains with early stopping on the validation loss, keeps
the best checkpoint, scores the test windows and writes a model folder
(weights + ``model_spec.json`` with the scaler and the window layout).
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pandas as pd
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

from medllm_pipelines.lib.curate.sequences import HOUR, STAY_KEYS, VITALS
from medllm_pipelines.lib.train.callbacks import EpochHistory, EpochMetricsCallback, quiet_lightning
from medllm_pipelines.lib.train.hardware import HardwareSettings, maybe_compile
from medllm_pipelines.lib.train.optim import OPTIMIZER_NAMES, SCHEDULER_NAMES, check_component
from medllm_pipelines.lib.train.sequence.data import (
    CHANNELS,
    TEST_SPLIT,
    DeteriorationDataModule,
)
from medllm_pipelines.lib.train.sequence.networks import (
    NETWORK_KEYS,
    RECURRENT_CELLS,
    RecurrentConfig,
    RecurrentEarlyWarning,
    count_parameters,
)
from medllm_pipelines.lib.train.sequence.systems import (
    DeteriorationSystem,
    ForecastSystem,
    binary_metrics,
    regression_metrics,
)

MODEL_SPEC_FILENAME = "model_spec.json"
WEIGHTS_FILENAME = "network.pt"
ACVPU_INDEX = {"A": 0, "C": 1, "V": 2, "P": 3, "U": 4}


@dataclass(frozen=True)
class SequenceTrainConfig:
    """Everything that decides the trained weights: architecture, window and optimisation."""

    cell: str = "gru"
    hidden_size: int = 32
    num_layers: int = 1
    dropout: float = 0.0
    window_hours: int = 24
    horizon_hours: int = 12
    optimizer: str = "adam"
    scheduler: str = "none"
    lr: float = 5e-3
    momentum: float = 0.9
    weight_decay: float = 0.0
    batch_size: int = 128
    max_epochs: int = 30
    early_stopping_patience: int = 6
    early_stopping_min_delta: float = 0.0
    pos_weight: float | str = "balanced"
    cpu_threads: int = 1
    seed: int = 11
    # placement and scale (lib/train/hardware.py): accelerator, devices, num_nodes, strategy, precision, compile
    hardware: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        HardwareSettings.from_mapping(self.hardware)
        check_component("optimizer", self.optimizer, OPTIMIZER_NAMES)
        check_component("scheduler", self.scheduler, SCHEDULER_NAMES)
        if self.window_hours < 1 or self.batch_size < 1 or self.max_epochs < 1 or self.lr <= 0:
            raise ValueError("window_hours, batch_size and max_epochs must be >= 1 and lr positive")
        if not (self.pos_weight == "balanced" or isinstance(self.pos_weight, int | float)):
            raise ValueError("pos_weight must be 'balanced' or a number")

    def network(self) -> RecurrentConfig:
        return RecurrentConfig(input_size=len(CHANNELS), **{k: getattr(self, k) for k in NETWORK_KEYS})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_spec(cls, spec_id: str, network: dict[str, Any], training: dict[str, Any], *, window_hours: int,
                  horizon_hours: int) -> SequenceTrainConfig:
        """The config of a spec's blocks at one size; an unknown family, optimiser, scheduler or key is refused
        naming the spec, before any MLflow run is opened."""
        network = dict(network or {})
        cell = check_component("network", network.pop("family", None), RECURRENT_CELLS, spec_id)
        check_component("optimizer", training.get("optimizer", cls.optimizer), OPTIMIZER_NAMES, spec_id)
        check_component("scheduler", training.get("scheduler", cls.scheduler), SCHEDULER_NAMES, spec_id)
        HardwareSettings.from_mapping(training.get("hardware"), spec_id=spec_id)
        known = {f.name for f in fields(cls)} - {"cell", "window_hours", "horizon_hours"}
        unknown = sorted(set(network) - set(NETWORK_KEYS)) + sorted(set(training) - (known - set(NETWORK_KEYS)))
        if unknown:
            raise ValueError(f"spec {spec_id}: unknown training/network keys {unknown}; known: {sorted(known)}")
        try:
            config = cls(cell=cell, window_hours=window_hours, horizon_hours=horizon_hours, **network, **training)
            config.network()
        except (TypeError, ValueError) as invalid:
            raise ValueError(f"spec {spec_id}: {invalid}") from None
        return config


@dataclass
class SequenceTrainResult:
    """Where the model is, how training went, and its held-out figures next to NEWS2 (epochs 0-based)."""

    model_dir: Path
    checkpoint_path: Path
    best_epoch: int
    epochs_run: int
    history: list[dict[str, float]]
    val_metrics: dict[str, float]
    test_metrics: dict[str, float]
    baseline_metrics: dict[str, float]
    n_train: int
    n_val: int
    n_test: int
    parameters: int
    stopped_early: bool
    train_seconds: float
    test_scores: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0))

    def to_dict(self) -> dict[str, Any]:
        data = {k: v for k, v in asdict(self).items() if k != "test_scores"}
        data["model_dir"], data["checkpoint_path"] = str(self.model_dir), str(self.checkpoint_path)
        return data


def _probabilities(network: torch.nn.Module, windows: torch.Tensor) -> np.ndarray:
    network.eval()
    with torch.no_grad():
        chunks = [torch.sigmoid(network(windows[i:i + 1024])) for i in range(0, len(windows), 1024)]
    return torch.cat(chunks).numpy() if chunks else np.zeros(0)


def stay_readings(stay: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(hours, 5) numeric readings (NaN where missing) and (hours,) ACVPU levels (-1 missing) of one stay's rows."""
    hourly = stay.set_index(HOUR).reindex(range(int(stay[HOUR].max()) + 1))
    levels = hourly["acvpu"].map(ACVPU_INDEX).fillna(-1).astype(int).to_numpy()
    return hourly[list(VITALS)].astype(float).to_numpy(), levels


def _fit(system: Any, data: DeteriorationDataModule, config: SequenceTrainConfig, output_dir: Path,
         on_epoch_metrics: EpochMetricsCallback | None, spec_id: str) -> tuple[Path, dict[str, Any], EpochHistory]:
    """Lightning fit with early stopping on the validation loss; the kept checkpoint's path and state."""
    from medllm_pipelines.lib.train.text.training import cpu_threads

    hardware = HardwareSettings.from_mapping(config.hardware, spec_id=spec_id)
    system.network = maybe_compile(system.network, hardware)
    history = EpochHistory(on_epoch_metrics)
    checkpoint = ModelCheckpoint(dirpath=output_dir / "checkpoints", filename="best", monitor="val_loss", mode="min",
                                 save_top_k=1, enable_version_counter=False)
    stopping = EarlyStopping(monitor="val_loss", mode="min", patience=config.early_stopping_patience,
                             min_delta=config.early_stopping_min_delta)
    with quiet_lightning(r".*does not have many workers.*"), cpu_threads(config.cpu_threads):
        trainer = L.Trainer(**hardware.trainer_kwargs(), max_epochs=config.max_epochs,
                            callbacks=[history, checkpoint, stopping], logger=False, enable_progress_bar=False,
                            enable_model_summary=False, num_sanity_val_steps=0, default_root_dir=output_dir)
        trainer.fit(system, datamodule=data)
    if not checkpoint.best_model_path:
        raise RuntimeError(f"spec {spec_id}: no checkpoint was saved: the validation loss was never finite")
    checkpoint_path = Path(checkpoint.best_model_path)
    system.cpu()  # evaluation and the saved model run on the CPU whatever the training ran on
    return checkpoint_path, torch.load(checkpoint_path, map_location="cpu", weights_only=True), history


def _fresh(output_dir: str | Path) -> Path:
    output_dir = Path(output_dir)
    for owned in (output_dir / "checkpoints", output_dir / "model"):
        if owned.exists():
            shutil.rmtree(owned)
    return output_dir


def train_deterioration_model(vitals: pd.DataFrame, windows: pd.DataFrame, config: SequenceTrainConfig,
                              output_dir: str | Path, on_epoch_metrics: EpochMetricsCallback | None = None, *,
                              spec_id: str = "", dataset_version: str | None = None) -> SequenceTrainResult:
    """Train on the train windows, keep the lowest validation loss, score the test windows (and NEWS2 on them)."""
    started = time.perf_counter()
    output_dir = _fresh(output_dir)
    model_dir = output_dir / "model"
    L.seed_everything(config.seed, workers=True, verbose=False)
    data = DeteriorationDataModule(vitals, windows, window_hours=config.window_hours, batch_size=config.batch_size,
                                   seed=config.seed)
    data.setup("fit")
    assert data.train_dataset is not None and data.val_dataset is not None and data.test_dataset is not None
    train_labels = data.train_dataset.tensors[1].numpy()
    positives = float(train_labels.sum())
    pos_weight = (float(len(train_labels) - positives) / max(positives, 1.0) if config.pos_weight == "balanced"
                  else float(config.pos_weight))
    network = RecurrentEarlyWarning(config.network())
    system = DeteriorationSystem(network, optimizer=config.optimizer, scheduler=config.scheduler, lr=config.lr,
                                 weight_decay=config.weight_decay, momentum=config.momentum, pos_weight=pos_weight,
                                 spec_id=spec_id)
    checkpoint_path, state, history = _fit(system, data, config, output_dir, on_epoch_metrics, spec_id)
    network.load_state_dict({k.removeprefix("network.").removeprefix("_orig_mod."): v  # compiled: "_orig_mod."
                             for k, v in state["state_dict"].items() if k.startswith("network.")})
    network.eval()
    val_windows, val_labels = data.val_dataset.tensors
    val_scores = _probabilities(network, val_windows)
    val_loss = float(torch.nn.functional.binary_cross_entropy(torch.from_numpy(val_scores).clamp(1e-7, 1 - 1e-7),
                                                              val_labels)) if len(val_scores) else float("nan")
    val_metrics = {"val_loss": val_loss,
                   **{f"val_{k}": v for k, v in binary_metrics(val_scores, val_labels.numpy()).items()}}
    test_windows, test_labels = data.test_dataset.tensors
    test_scores = _probabilities(network, test_windows)
    test_metrics = {f"test_{k}": v for k, v in binary_metrics(test_scores, test_labels.numpy()).items()}
    test_rows = windows[windows["split"] == TEST_SPLIT]
    news2 = test_rows["news2"].to_numpy(dtype=float)
    baseline = {f"baseline_news2_test_{k}": v for k, v in binary_metrics(news2 / 20.0, test_labels.numpy()).items()
                if k != "brier"}
    model_dir.mkdir(parents=True, exist_ok=True)
    torch.save(network.state_dict(), model_dir / WEIGHTS_FILENAME)
    epochs_run = len(history.history)
    (model_dir / MODEL_SPEC_FILENAME).write_text(json.dumps({
        "task": "deterioration_early_warning", "spec_id": spec_id, "dataset_version": dataset_version,
        "network": network.config.as_dict(), "channels": list(CHANNELS), "scaler": data.scaler.as_dict(),
        "window_hours": config.window_hours, "horizon_hours": config.horizon_hours,
        "train_config": config.to_dict(), "best_epoch": int(state["epoch"]), "epochs_run": epochs_run,
        "val_metrics": val_metrics, "test_metrics": test_metrics, "baseline_metrics": baseline,
        "files": {"network_weights": WEIGHTS_FILENAME},
    }, indent=2, sort_keys=True, default=str) + "\n")
    return SequenceTrainResult(
        model_dir=model_dir, checkpoint_path=checkpoint_path, best_epoch=int(state["epoch"]), epochs_run=epochs_run,
        history=history.history, val_metrics=val_metrics, test_metrics=test_metrics, baseline_metrics=baseline,
        n_train=len(data.train_dataset), n_val=len(data.val_dataset), n_test=len(test_rows),
        parameters=count_parameters(network), stopped_early=epochs_run < config.max_epochs,
        train_seconds=time.perf_counter() - started, test_scores=test_scores,
    )


def generator_optimum(vitals: pd.DataFrame, windows: pd.DataFrame, horizon: int,
                      split: str = TEST_SPLIT) -> dict[str, float]:
    """ROC-AUC of the synthetic generator's Bayes-optimal risk on ``split``'s windows (docs/synthetic_vitals.md).

    Meaningful only on data the synthetic hospital wrote: the particle filter knows its process.
    """
    from medllm_pipelines.lib.synth.vitals import bayes_optimal_risk

    rows = windows[windows["split"] == split]
    if not len(rows):
        return {}
    stays = rows[STAY_KEYS].drop_duplicates()
    grouped = dict(list(vitals.merge(stays, on=STAY_KEYS).groupby(STAY_KEYS, sort=False)))
    keys = [tuple(k) for k in stays.itertuples(index=False, name=None)]
    risks = bayes_optimal_risk([stay_readings(grouped[k]) for k in keys], horizon)
    risk_of = {k: r for k, r in zip(keys, risks, strict=True)}
    scores = np.array([risk_of[tuple(k)][min(int(h), len(risk_of[tuple(k)]) - 1)]
                       for k, h in zip(rows[STAY_KEYS].itertuples(index=False, name=None), rows[HOUR], strict=True)])
    metrics = binary_metrics(np.nan_to_num(scores), rows["label"].to_numpy())
    return {f"{split}_generator_optimum_{k}": v for k, v in metrics.items() if k != "brier"}


def train_forecast_model(vitals: pd.DataFrame, windows: pd.DataFrame, config: SequenceTrainConfig,
                         output_dir: str | Path, on_epoch_metrics: EpochMetricsCallback | None = None, *,
                         spec_id: str = "", dataset_version: str | None = None) -> SequenceTrainResult:
    """Next-value regression on the same windows: MSE, kept at the lowest validation loss; test MSE/MAE/RMSE/R^2
    against the training mean and the last value carried forward."""
    started = time.perf_counter()
    output_dir = _fresh(output_dir)
    model_dir = output_dir / "model"
    L.seed_everything(config.seed, workers=True, verbose=False)
    data = DeteriorationDataModule(vitals, windows, window_hours=config.window_hours, batch_size=config.batch_size,
                                   seed=config.seed, target_column="target")
    data.setup("fit")
    assert data.train_dataset is not None and data.val_dataset is not None and data.test_dataset is not None
    train_target = data.train_dataset.tensors[1].numpy()
    mean, scale = float(train_target.mean()), float(train_target.std() or 1.0)
    network = RecurrentEarlyWarning(config.network())
    system = ForecastSystem(network, target_mean=mean, target_scale=scale, optimizer=config.optimizer,
                            scheduler=config.scheduler, lr=config.lr, weight_decay=config.weight_decay,
                            momentum=config.momentum, spec_id=spec_id)
    checkpoint_path, state, history = _fit(system, data, config, output_dir, on_epoch_metrics, spec_id)
    system.load_state_dict(state["state_dict"])
    system.eval()

    def predicted(dataset: Any) -> np.ndarray:
        with torch.no_grad():
            return system.predict_values(dataset.tensors[0]).numpy()

    val_metrics = {f"val_{k}": v for k, v in regression_metrics(predicted(data.val_dataset),
                                                                data.val_dataset.tensors[1].numpy()).items()}
    val_metrics["val_loss"] = float(val_metrics["val_mse"] / scale**2) if len(data.val_dataset) > 1 else float("nan")
    test_target = data.test_dataset.tensors[1].numpy()
    test_metrics = {f"test_{k}": v for k, v in regression_metrics(predicted(data.test_dataset), test_target).items()}
    test_rows = windows[windows["split"] == TEST_SPLIT]
    baseline = {
        **{f"baseline_mean_test_{k}": v for k, v in regression_metrics(np.full(len(test_target), mean),
                                                                       test_target).items()},
        **{f"baseline_last_value_test_{k}": v for k, v in regression_metrics(
            test_rows["last_value"].fillna(mean).to_numpy(dtype=float), test_target).items()},
    }
    model_dir.mkdir(parents=True, exist_ok=True)
    torch.save(network.state_dict(), model_dir / WEIGHTS_FILENAME)
    epochs_run = len(history.history)
    (model_dir / MODEL_SPEC_FILENAME).write_text(json.dumps({
        "task": "next_value_regression", "spec_id": spec_id, "dataset_version": dataset_version,
        "network": network.config.as_dict(), "channels": list(CHANNELS), "scaler": data.scaler.as_dict(),
        "target_mean": mean, "target_scale": scale, "window_hours": config.window_hours,
        "train_config": config.to_dict(), "best_epoch": int(state["epoch"]), "epochs_run": epochs_run,
        "val_metrics": val_metrics, "test_metrics": test_metrics, "baseline_metrics": baseline,
        "files": {"network_weights": WEIGHTS_FILENAME},
    }, indent=2, sort_keys=True, default=str) + "\n")
    return SequenceTrainResult(
        model_dir=model_dir, checkpoint_path=checkpoint_path, best_epoch=int(state["epoch"]), epochs_run=epochs_run,
        history=history.history, val_metrics=val_metrics, test_metrics=test_metrics, baseline_metrics=baseline,
        n_train=len(data.train_dataset), n_val=len(data.val_dataset), n_test=len(test_rows),
        parameters=count_parameters(network), stopped_early=epochs_run < config.max_epochs,
        train_seconds=time.perf_counter() - started)


__all__ = ["SequenceTrainConfig", "SequenceTrainResult", "generator_optimum",
           "train_deterioration_model", "train_forecast_model"]
