"""Training a binary classifier on a per-patient feature table with Lightning.

Network (`TabularMLP`), training system (`BinaryClassificationSystem`) and
data (`TabularDataModule`) are separate, as Lightning intends, so that each
can change without touching the others. `train_tabular_classifier` is the
one entry point a pipeline calls: it seeds everything, stops early on the
validation loss, keeps the best checkpoint and writes a model directory
that `TabularPredictor.load` reads in a fresh process.
"""

from __future__ import annotations

import json
import math
import platform
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pandas as pd
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from sklearn.metrics import roc_auc_score
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from medllm_pipelines.lib.common.versions import package_versions
from medllm_pipelines.lib.train.callbacks import EpochHistory, EpochMetricsCallback, quiet_lightning
from medllm_pipelines.lib.train.dp_sgd import (
    PrivateTraining,
    poisson_loader,
    require_dp_trainable,
)
from medllm_pipelines.lib.train.hardware import HardwareSettings, maybe_compile
from medllm_pipelines.lib.train.networks import ACTIVATIONS, TabularMLP
from medllm_pipelines.lib.train.optim import (
    OPTIMIZER_NAMES,
    SCHEDULER_NAMES,
    attach_scheduler,
    build_optimizer,
    check_component,
    check_finite_loss,
)
from medllm_pipelines.lib.train.predictor import (
    MODEL_SPEC_FILENAME,
    MODEL_SPEC_FORMAT_VERSION,
    NETWORK_WEIGHTS_FILENAME,
    TabularPredictor,
    sha256_file,
)
from medllm_pipelines.lib.curate.preprocessing import (
    DESCRIPTION_FILE,
    PIPELINE_FILE,
    FittedPreprocessing,
    save_preprocessing,
)

__all__ = [
    "BinaryClassificationSystem",
    "EpochMetricsCallback",
    "TabularDataModule",
    "TabularMLP",
    "TabularPredictor",
    "TrainConfig",
    "TrainResult",
    "train_tabular_classifier",
]

# The network families this module trains; a spec naming another is refused before any run opens.
TABULAR_NETWORK_FAMILIES = ("mlp",)
NETWORK_KEYS = ("hidden_sizes", "activation", "dropout")  # TrainConfig fields a spec's network block sets
TRAIN_SPLIT = "train"
VALIDATION_SPLIT = "validation"
CHECKPOINT_DIRNAME = "checkpoints"
MODEL_DIRNAME = "model"
BEST_CHECKPOINT_NAME = "best"
VERSIONED_PACKAGES = ("torch", "lightning", "scikit-learn", "numpy", "pandas", "joblib")



@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides the trained weights, and nothing else (M3, M4, M10).

    `optimizer` and `scheduler` are names from lib/train/optim.py (adam, adamw,
    rmsprop, adagrad, sgd; none, cosine, step, plateau, onecycle). `weight_decay`
    is torch's coupled L2 term, decoupled for adamw; `momentum` is sgd's.
    `pos_weight` multiplies the loss of positive rows: None for 1, a float, or
    "balanced" for n_negative / n_positive in train.
    """

    hidden_sizes: tuple[int, ...] = (64, 32)
    activation: str = "relu"
    dropout: float = 0.1
    optimizer: str = "adam"
    scheduler: str = "none"
    scheduler_options: dict[str, Any] | None = None  # e.g. {step_size: 5, gamma: 0.5}: optim.attach_scheduler
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 0.0
    batch_size: int = 64
    max_epochs: int = 100
    early_stopping_patience: int = 10
    seed: int = 42
    pos_weight: float | str | None = None
    early_stopping_min_delta: float = 0.0
    # DP-SGD (Opacus) when set: the (epsilon, delta) budget of the whole training run.
    dp_target_epsilon: float | None = None
    dp_delta: float = 1e-5
    dp_max_grad_norm: float = 1.0
    # placement and scale (lib/train/hardware.py): accelerator, devices, num_nodes, strategy, precision, compile
    hardware: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "hidden_sizes", tuple(int(size) for size in self.hidden_sizes))
        HardwareSettings.from_mapping(self.hardware)
        check_component("optimizer", self.optimizer, OPTIMIZER_NAMES)
        check_component("scheduler", self.scheduler, SCHEDULER_NAMES)
        problems = []
        if self.activation not in ACTIVATIONS:
            problems.append(f"activation must be one of {sorted(ACTIVATIONS)}")
        if not 0.0 <= self.momentum < 1.0:
            problems.append("momentum must be in [0, 1)")
        if not 0.0 <= self.dropout < 1.0:
            problems.append("dropout must be in [0, 1)")
        if self.lr <= 0:
            problems.append("lr must be positive")
        if self.weight_decay < 0:
            problems.append("weight_decay must be >= 0")
        if self.batch_size < 1 or self.max_epochs < 1 or self.early_stopping_patience < 0:
            problems.append("batch_size and max_epochs must be >= 1, early_stopping_patience >= 0")
        if self.scheduler_options is not None and not isinstance(self.scheduler_options, dict):
            problems.append("scheduler_options must be a mapping")
        if any(size < 1 for size in self.hidden_sizes):
            problems.append("hidden sizes must be positive")
        if isinstance(self.pos_weight, str) and self.pos_weight != "balanced":
            problems.append('pos_weight must be None, a positive number or "balanced"')
        if isinstance(self.pos_weight, (int, float)) and self.pos_weight <= 0:
            problems.append("pos_weight must be positive")
        if self.dp_target_epsilon is not None and self.dp_target_epsilon <= 0:
            problems.append("dp_target_epsilon must be positive (or None for no DP-SGD)")
        if not 0.0 < self.dp_delta < 1.0 or self.dp_max_grad_norm <= 0:
            problems.append("dp_delta must be in (0, 1) and dp_max_grad_norm positive")
        if problems:
            raise ValueError("invalid TrainConfig: " + "; ".join(problems))

    @property
    def private(self) -> bool:
        return self.dp_target_epsilon is not None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["hidden_sizes"] = list(self.hidden_sizes)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        return cls(**data)

    @classmethod
    def from_spec(cls, spec_id: str, network: dict[str, Any], training: dict[str, Any]) -> TrainConfig:
        """The config of a spec's ``network`` and ``training`` blocks (at one size, ModelSpec.training_for).

        Unknown network families, optimisers and schedulers raise
        UnknownComponentError naming the spec, the kind and the choices;
        unknown keys a ValueError naming the spec: both before anything trains.
        """
        network = dict(network or {})
        check_component("network", network.pop("family", "mlp"), TABULAR_NETWORK_FAMILIES, spec_id)
        check_component("optimizer", training.get("optimizer", cls.optimizer), OPTIMIZER_NAMES, spec_id)
        check_component("scheduler", training.get("scheduler", cls.scheduler), SCHEDULER_NAMES, spec_id)
        HardwareSettings.from_mapping(training.get("hardware"), spec_id=spec_id)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(network) - set(NETWORK_KEYS)) + sorted(set(training) - known)
        if unknown:
            raise ValueError(f"spec {spec_id}: unknown training/network keys {unknown}; known: {sorted(known)}")
        try:
            return cls(**{**network, **training})
        except ValueError as invalid:
            raise ValueError(f"spec {spec_id}: {invalid}") from None


@dataclass
class TrainResult:
    """Where the trained artefacts are and how training went; epochs are 0-based as in Lightning."""

    checkpoint_path: Path
    preprocessor_path: Path
    model_dir: Path
    best_epoch: int
    epochs_run: int
    history: list[dict[str, float]]
    val_metrics: dict[str, float]
    n_train: int
    n_val: int
    feature_names_out: list[str]
    stopped_early: bool = False
    train_seconds: float = 0.0
    missing_values: dict[str, Any] = field(default_factory=dict)
    privacy: dict[str, Any] = field(default_factory=dict)  # DP-SGD's guarantee when trained privately

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary, e.g. for asset metadata."""
        data = asdict(self)
        for key in ("checkpoint_path", "preprocessor_path", "model_dir"):
            data[key] = str(data[key])
        return data


class BinaryClassificationSystem(L.LightningModule):
    """Loss, optimiser and per-epoch metrics around any network that returns logits."""

    def __init__(
        self,
        network: nn.Module,
        optimizer: str = "adam",
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        pos_weight: float | None = None,
        privacy: PrivateTraining | None = None,
        *,
        scheduler: str = "none",
        scheduler_options: dict[str, Any] | None = None,
        momentum: float = 0.9,
        spec_id: str = "",
    ) -> None:
        super().__init__()
        check_component("optimizer", optimizer, OPTIMIZER_NAMES, spec_id)
        check_component("scheduler", scheduler, SCHEDULER_NAMES, spec_id)
        self.save_hyperparameters(ignore=["network", "privacy"])
        self.scheduler_options = dict(scheduler_options or {})
        self.network = network
        self.privacy = privacy
        weight = None if pos_weight is None else torch.tensor(float(pos_weight))
        self.loss_fn = nn.BCEWithLogitsLoss(pos_weight=weight)
        self._val_probabilities: list[torch.Tensor] = []
        self._val_labels: list[torch.Tensor] = []

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.network(features)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        features, labels = batch
        loss = self.loss_fn(self(features), labels)
        check_finite_loss(loss, spec_id=self.hparams["spec_id"], epoch=self.current_epoch)
        self.log("train_loss", loss, on_step=False, on_epoch=True, batch_size=len(labels))
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        features, labels = batch
        logits = self(features)
        self.log("val_loss", self.loss_fn(logits, labels), on_step=False, on_epoch=True, batch_size=len(labels))
        self._val_probabilities.append(torch.sigmoid(logits).detach().cpu())
        self._val_labels.append(labels.detach().cpu())

    def on_validation_epoch_end(self) -> None:
        labels = torch.cat(self._val_labels).numpy()
        probabilities = torch.cat(self._val_probabilities).numpy()
        self._val_probabilities.clear()
        self._val_labels.clear()
        # One class only: AUC is undefined; NaN says so instead of a made-up 0 or 0.5.
        auc = float(roc_auc_score(labels, probabilities)) if len(np.unique(labels)) == 2 else float("nan")
        self.log("val_roc_auc", auc)

    def predict_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> torch.Tensor:
        return torch.sigmoid(self(batch[0]))

    def configure_optimizers(self) -> torch.optim.Optimizer | dict[str, Any]:
        """The spec's optimiser (lib/train/optim.py), made private for DP-SGD, with its learning-rate schedule."""
        hparams = self.hparams
        optimizer = build_optimizer(hparams["optimizer"], self.parameters(), lr=hparams["lr"],
                                    weight_decay=hparams["weight_decay"], momentum=hparams["momentum"],
                                    spec_id=hparams["spec_id"])
        if hparams["scheduler"] == "none" and self.privacy is None:
            return optimizer  # nothing needs the trainer: callable on a bare system
        data = self.trainer.datamodule
        max_epochs = int(self.trainer.max_epochs)
        if self.privacy is not None:
            # The plain loader only tells Opacus the sampling rate; batches come from the data module's Poisson loader.
            rate_loader = DataLoader(data.train_dataset, batch_size=data.batch_size)
            optimizer = self.privacy.make_private(self.network, optimizer, rate_loader, max_epochs)
        # Poisson batches vary in number: a spare step per epoch keeps OneCycle from running past its end.
        steps_per_epoch = math.ceil(len(data.train_dataset) / data.batch_size) + (1 if self.privacy is not None else 0)
        return attach_scheduler(optimizer, hparams["scheduler"], lr=hparams["lr"], max_epochs=max_epochs,
                                steps_per_epoch=steps_per_epoch, spec_id=hparams["spec_id"],
                                options=self.scheduler_options)


class TabularDataModule(L.LightningDataModule):
    """Turns the split feature table into tensors with the preprocessing the curate stage fitted.

    Nothing is fitted here: the pipeline was fitted on the training split and
    saved with the dataset version (lib/curate/preprocessing.py). Rows of any
    split other than train and validation (the test split) are never read.
    """

    def __init__(
        self,
        frame: pd.DataFrame,
        preprocessing: FittedPreprocessing,
        label_column: str,
        split_column: str = "split",
        batch_size: int = 64,
        seed: int = 42,
        poisson_sampling: bool = False,
    ) -> None:
        super().__init__()
        for column in (label_column, split_column):
            if column not in frame.columns:
                raise KeyError(f"frame lacks column {column!r}")
        self.frame = frame
        self.preprocessing = preprocessing
        self.label_column = label_column
        self.split_column = split_column
        self.batch_size = batch_size
        self.seed = seed
        self.poisson_sampling = poisson_sampling
        self.train_dataset: TensorDataset | None = None
        self.val_dataset: TensorDataset | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.train_dataset is not None:
            return
        train_rows = self.frame[self.frame[self.split_column] == TRAIN_SPLIT]
        val_rows = self.frame[self.frame[self.split_column] == VALIDATION_SPLIT]
        if len(train_rows) == 0 or len(val_rows) == 0:
            raise ValueError(
                f"need rows with {self.split_column}={TRAIN_SPLIT!r} and {VALIDATION_SPLIT!r}; "
                f"got {len(train_rows)} and {len(val_rows)}"
            )
        train_labels = self._labels(train_rows, TRAIN_SPLIT)
        if len(np.unique(train_labels)) < 2:
            raise ValueError("the training split holds only one class; a classifier cannot be fitted")
        self.train_dataset = self._dataset(train_rows, train_labels)
        self.val_dataset = self._dataset(val_rows, self._labels(val_rows, VALIDATION_SPLIT))

    def _labels(self, rows: pd.DataFrame, split: str) -> np.ndarray:
        labels = pd.to_numeric(rows[self.label_column], errors="coerce")
        bad = int((~labels.isin([0, 1])).sum())
        if bad:
            raise ValueError(f"{bad} rows of the {split} split have a {self.label_column!r} that is not 0 or 1")
        return labels.to_numpy(dtype=np.float32)

    def _dataset(self, rows: pd.DataFrame, labels: np.ndarray) -> TensorDataset:
        return TensorDataset(torch.from_numpy(self.preprocessing.transform_array(rows)), torch.from_numpy(labels))

    @property
    def n_features(self) -> int:
        return self.preprocessing.n_features_out

    def train_dataloader(self) -> DataLoader:
        assert self.train_dataset is not None
        generator = torch.Generator().manual_seed(self.seed)
        loader = DataLoader(self.train_dataset, batch_size=self.batch_size, shuffle=True, generator=generator)
        return poisson_loader(loader, self.seed) if self.poisson_sampling else loader

    def val_dataloader(self) -> DataLoader:
        assert self.val_dataset is not None
        return DataLoader(self.val_dataset, batch_size=max(self.batch_size, 1024), shuffle=False)


def _resolve_pos_weight(config: TrainConfig, train_labels: torch.Tensor) -> float | None:
    if config.pos_weight == "balanced":
        n_positive = float(train_labels.sum())
        return (len(train_labels) - n_positive) / n_positive
    return None if config.pos_weight is None else float(config.pos_weight)


def _package_versions() -> dict[str, str]:
    return {"python": platform.python_version(), **package_versions(VERSIONED_PACKAGES)}


def train_tabular_classifier(
    frame: pd.DataFrame,
    preprocessing: FittedPreprocessing,
    label_column: str,
    config: TrainConfig,
    output_dir: str | Path,
    on_epoch_metrics: EpochMetricsCallback | None = None,
    *,
    split_column: str = "split",
    spec_id: str = "",
) -> TrainResult:
    """Train on the train split, select on the validation split, write a loadable model directory.

    `preprocessing` is the pipeline the curate stage fitted on this frame's
    training split (its declared inputs are the model's); it is applied
    unchanged and copied into the model directory, so that the predictor
    serves exactly it. `on_epoch_metrics(metrics, epoch)` is called after
    each epoch (validation included) with train_loss, val_loss, val_roc_auc and lr,
    e.g. to stream curves to MLflow. Files we own under output_dir
    (checkpoints/, model/) are replaced. A loss that becomes NaN or infinite
    raises TrainingDivergedError naming ``spec_id`` and the epoch.
    """
    started = time.perf_counter()
    output_dir = Path(output_dir)
    checkpoint_dir = output_dir / CHECKPOINT_DIRNAME
    model_dir = output_dir / MODEL_DIRNAME
    for owned in (checkpoint_dir, model_dir):
        if owned.exists():
            shutil.rmtree(owned)

    L.seed_everything(config.seed, workers=True, verbose=False)
    data = TabularDataModule(
        frame, preprocessing, label_column, split_column, batch_size=config.batch_size, seed=config.seed,
        poisson_sampling=config.private,
    )
    data.setup("fit")
    assert data.train_dataset is not None and data.val_dataset is not None
    pos_weight = _resolve_pos_weight(config, data.train_dataset.tensors[1])
    network = TabularMLP(data.n_features, config.hidden_sizes, config.activation, config.dropout)
    privacy = None
    if config.private:
        require_dp_trainable(network)  # before any epoch: name the layers DP-SGD cannot train
        privacy = PrivateTraining(config.dp_target_epsilon, config.dp_delta, config.dp_max_grad_norm)
    system = BinaryClassificationSystem(network, config.optimizer, config.lr, config.weight_decay, pos_weight, privacy,
                                        scheduler=config.scheduler, scheduler_options=config.scheduler_options,
                                        momentum=config.momentum, spec_id=spec_id)

    hardware = HardwareSettings.from_mapping(config.hardware, spec_id=spec_id)
    system.network = maybe_compile(network, hardware)
    history = EpochHistory(on_epoch_metrics)
    checkpoint = ModelCheckpoint(
        dirpath=checkpoint_dir,
        filename=BEST_CHECKPOINT_NAME,
        monitor="val_loss",
        mode="min",
        save_top_k=1,
        enable_version_counter=False,
    )
    early_stopping = EarlyStopping(
        monitor="val_loss",
        mode="min",
        patience=config.early_stopping_patience,
        min_delta=config.early_stopping_min_delta,
    )
    trainer = L.Trainer(
        **hardware.trainer_kwargs(),
        max_epochs=config.max_epochs,
        callbacks=[history, checkpoint, early_stopping],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=output_dir,
    )
    with quiet_lightning():
        trainer.fit(system, datamodule=data)
    if not checkpoint.best_model_path:
        raise RuntimeError("no checkpoint was saved: the validation loss was never finite")

    checkpoint_path = Path(checkpoint.best_model_path)
    # Our own checkpoint: tensors and plain containers only, so weights_only loading works.
    state = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
    best_epoch = int(state["epoch"])
    network_state = {  # a compiled network's keys carry torch.compile's "_orig_mod." wrapper prefix
        key.removeprefix("network.").removeprefix("_orig_mod."): value
        for key, value in state["state_dict"].items() if key.startswith("network.")
    }
    network.load_state_dict(network_state)
    network.eval()
    val_features, val_labels = data.val_dataset.tensors
    with torch.no_grad():
        val_logits = network(val_features)
        val_loss = float(system.loss_fn(val_logits, val_labels))
    val_probabilities = torch.sigmoid(val_logits).numpy()
    labels = val_labels.numpy()
    val_auc = float(roc_auc_score(labels, val_probabilities)) if len(np.unique(labels)) == 2 else float("nan")
    val_metrics = {"val_loss": val_loss, "val_roc_auc": val_auc}

    preprocessor_path = Path(save_preprocessing(preprocessing, model_dir)["pipeline"])
    weights_path = model_dir / NETWORK_WEIGHTS_FILENAME
    torch.save(network.state_dict(), weights_path)
    epochs_run = len(history.history)
    spec = {
        "format_version": MODEL_SPEC_FORMAT_VERSION,
        "task": "binary_classification",
        "label_column": label_column,
        "feature_columns": {
            "numeric": list(preprocessing.spec.numeric_columns),
            "categorical": list(preprocessing.spec.categorical_columns),
        },
        "feature_names_out": preprocessing.output_features,
        "preprocessing_fingerprint": preprocessing.fingerprint(),
        "dataset_version": preprocessing.dataset_version,
        "network": {
            "class": f"{TabularMLP.__module__}.{TabularMLP.__qualname__}",
            "n_inputs": data.n_features,
            "hidden_sizes": list(config.hidden_sizes),
            "activation": config.activation,
            "dropout": config.dropout,
        },
        "train_config": config.to_dict(),
        "resolved_pos_weight": pos_weight,
        "decision_threshold": 0.5,
        "best_epoch": best_epoch,
        "epochs_run": epochs_run,
        "val_metrics": val_metrics,
        "n_train": len(data.train_dataset),
        "n_val": len(data.val_dataset),
        "files": {
            "network_weights": NETWORK_WEIGHTS_FILENAME,
            "preprocessor": PIPELINE_FILE,
            "preprocessor_config": DESCRIPTION_FILE,
        },
        "sha256": {"network_weights": sha256_file(weights_path), "preprocessor": sha256_file(preprocessor_path)},
        "versions": _package_versions(),
        "privacy": privacy.report() if privacy is not None else None,
    }
    (model_dir / MODEL_SPEC_FILENAME).write_text(json.dumps(spec, indent=2, sort_keys=True) + "\n")

    return TrainResult(
        checkpoint_path=checkpoint_path,
        preprocessor_path=preprocessor_path,
        model_dir=model_dir,
        best_epoch=best_epoch,
        epochs_run=epochs_run,
        history=history.history,
        val_metrics=val_metrics,
        n_train=len(data.train_dataset),
        n_val=len(data.val_dataset),
        feature_names_out=list(preprocessing.output_features),
        stopped_early=epochs_run < config.max_epochs,
        train_seconds=time.perf_counter() - started,
        missing_values=dict(preprocessing.missing_values),
        privacy=privacy.report() if privacy is not None else {},
    )
