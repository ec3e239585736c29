"""One seeded training of an imaging spec: the config a spec declares, the fit, the kept checkpoint, the model folder.

``train_lesion_segmentation`` and ``train_lesion_classifier`` take the
curate stage's image rows (``split`` column: train, validation, test) and
the folder of de-identified pixels; they fit on train, keep the checkpoint
with the lowest validation loss, score it on validation and test, and write
``<output_dir>/model`` (``predictor.load_imaging_predictor`` reads it in a
fresh process). Deterministic on the CPU: lightning.seed_everything,
``deterministic=True``, seeded MONAI transforms, loaders in the main process.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Mapping
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pandas as pd
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

from medllm_pipelines.lib.common.versions import package_versions
from medllm_pipelines.lib.train.imaging.data import (
    LesionClassificationDataModule,
    LesionSegmentationDataModule,
    augmentation_settings,
)
from medllm_pipelines.lib.train.imaging.images import LesionImages, load_lesion_images
from medllm_pipelines.lib.train.imaging.networks import (
    CLASSIFICATION_FAMILIES,
    REGISTRY_FAMILY,
    SEGMENTATION_FAMILIES,
    build_classification_network,
    build_segmentation_network,
    network_description,
    parameter_count,
)
from medllm_pipelines.lib.train.imaging.predictor import (
    FORMAT_VERSION,
    MODEL_DIRNAME,
    MODEL_SPEC_FILENAME,
    NETWORK_WEIGHTS_FILENAME,
    ImagingPredictor,
    sha256_file,
)
from medllm_pipelines.lib.train.imaging.systems import LesionClassificationSystem, LesionSegmentationSystem
from medllm_pipelines.lib.train.callbacks import EpochHistory, EpochMetricsCallback, quiet_lightning
from medllm_pipelines.lib.train.hardware import HardwareSettings, maybe_compile
from medllm_pipelines.lib.train.optim import OPTIMIZER_NAMES, SCHEDULER_NAMES, check_component

SEGMENTATION = "segmentation"
CLASSIFICATION = "classification"
TASKS = {SEGMENTATION: SEGMENTATION_FAMILIES, CLASSIFICATION: CLASSIFICATION_FAMILIES}
SPLITS = ("train", "validation", "test")
CHECKPOINT_DIRNAME = "checkpoints"
BEST_CHECKPOINT_NAME = "best"
MONITOR = "val_loss"  # the kept checkpoint: lowest validation loss (DiceCE / BCE), defined even without lesions
VERSIONED_PACKAGES = ("torch", "lightning", "monai", "numpy")



@dataclass(frozen=True)
class ImagingConfig:
    """Everything that decides the trained weights of an imaging model (rows M3, M4, M10).

    ``network`` is the family's full description (networks.network_description);
    ``crop_size`` is the training crop and the sliding-window size (segmentation);
    ``augmentation`` the probabilities and strengths of data.AUGMENTATION_DEFAULTS.
    """

    task: str
    network: dict[str, Any]
    optimizer: str = "adam"
    scheduler: str = "none"
    scheduler_options: dict[str, Any] | None = None
    lr: float = 1e-3
    weight_decay: float = 0.0
    momentum: float = 0.9
    batch_size: int = 16
    max_epochs: int = 20
    early_stopping_patience: int = 5
    seed: int = 42
    crop_size: int = 32
    crops_per_image: int = 2
    sw_overlap: float = 0.25
    sw_batch_size: int = 8
    threshold: float = 0.5
    augmentation: dict[str, float] = field(default_factory=dict)
    # placement and scale (lib/train/hardware.py): accelerator, devices, num_nodes, strategy, precision, compile
    hardware: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        HardwareSettings.from_mapping(self.hardware)
        if self.task not in TASKS:
            raise ValueError(f"imaging task must be one of {sorted(TASKS)}, got {self.task!r}")
        object.__setattr__(self, "augmentation", augmentation_settings(self.augmentation))
        problems = []
        if self.lr <= 0 or self.weight_decay < 0 or not 0.0 <= self.momentum < 1.0:
            problems.append("lr must be positive, weight_decay >= 0, momentum in [0, 1)")
        if self.batch_size < 1 or self.max_epochs < 1 or self.early_stopping_patience < 0:
            problems.append("batch_size and max_epochs must be >= 1, early_stopping_patience >= 0")
        if self.crop_size < 8 or self.crops_per_image < 1 or not 0.0 <= self.sw_overlap < 1.0:
            problems.append("crop_size must be >= 8, crops_per_image >= 1, sw_overlap in [0, 1)")
        if not 0.0 < self.threshold < 1.0:
            problems.append("threshold must be in (0, 1)")
        if problems:
            raise ValueError("invalid ImagingConfig: " + "; ".join(problems))

    @classmethod
    def from_spec(cls, spec_id: str, task: str, network: Mapping[str, Any], training: Mapping[str, Any]) -> ImagingConfig:
        """The config of a spec's ``network`` and ``training`` blocks at one size (ModelSpec.network_for/training_for).

        Unknown networks, optimisers and schedulers raise UnknownComponentError
        naming the spec; unknown keys a ValueError naming the spec: before any run opens.
        """
        if task not in TASKS:
            raise ValueError(f"spec {spec_id}: imaging task must be one of {sorted(TASKS)}, got {task!r}")
        description = network_description(network, TASKS[task], spec_id)
        training = dict(training or {})
        check_component("optimizer", training.get("optimizer", cls.optimizer), OPTIMIZER_NAMES, spec_id)
        check_component("scheduler", training.get("scheduler", cls.scheduler), SCHEDULER_NAMES, spec_id)
        HardwareSettings.from_mapping(training.get("hardware"), spec_id=spec_id)
        known = {f.name for f in fields(cls)} - {"task", "network"}
        unknown = sorted(set(training) - known)
        if unknown:
            raise ValueError(f"spec {spec_id}: unknown training keys {unknown}; known: {sorted(known)}")
        try:
            augmentation_settings(training.get("augmentation"), spec_id)
            return cls(task=task, network=description, **training)
        except (TypeError, ValueError) as invalid:
            raise ValueError(f"spec {spec_id}: {invalid}") from None

    @property
    def registry_family(self) -> str:
        return REGISTRY_FAMILY[self.network["family"]]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def as_params(self) -> dict[str, str]:
        """Flat MLflow params: network.<key>, augmentation.<key>, and the training keys."""
        params = {f"network.{k}": str(v) for k, v in self.network.items()}
        params.update({f"augmentation.{k}": str(v) for k, v in self.augmentation.items()})
        params.update({k: str(v) for k, v in self.to_dict().items() if k not in ("network", "augmentation", "hardware")})
        params.update({k: str(v) for k, v in HardwareSettings.from_mapping(self.hardware).as_params().items()})
        return params


@dataclass
class ImagingTrainResult:
    """Where the trained artefacts are, how training went, and the kept checkpoint's scores (epochs 0-based)."""

    task: str
    checkpoint_path: Path
    model_dir: Path
    best_epoch: int
    epochs_run: int
    stopped_early: bool
    train_seconds: float
    history: list[dict[str, float]]
    val_metrics: dict[str, float]
    test_metrics: dict[str, float]
    rows_per_split: dict[str, int]
    parameters: int

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["checkpoint_path"], data["model_dir"] = str(self.checkpoint_path), str(self.model_dir)
        return data


def _quiet() -> AbstractContextManager[None]:
    """Lightning's banners and MONAI's per-slice crop warnings (a lesion-free slice gives background crops) off."""
    return quiet_lightning(r".*[Nn]um foregrounds 0.*", r".*does not have many workers.*")


def split_images(frame: pd.DataFrame, images_folder: Path) -> dict[str, LesionImages]:
    """The rows of each split with their pixels and masks (the split column as the curate stage wrote it)."""
    return {split: load_lesion_images(frame[frame["split"] == split].sort_values("image_id"), images_folder)
            for split in SPLITS}


def untrainable_reason(frame: pd.DataFrame, task: str) -> str | None:
    """Why a model of ``task`` cannot be fitted on ``frame``'s splits (None when it can): said, never raised.

    A split without rows, a training split without a lesion (segmentation) or
    without both classes (classification).
    """
    counts = {split: int((frame["split"] == split).sum()) for split in ("train", "validation")}
    if min(counts.values()) == 0:
        return f"needs training and validation images, has {counts['train']} and {counts['validation']}"
    train_presence = frame.loc[frame["split"] == "train", "lesion"].astype(bool)
    if task == SEGMENTATION and not train_presence.any():
        return "the training split holds no lesion to segment"
    if task == CLASSIFICATION and train_presence.nunique() < 2:
        return "the training split holds one class only (every slice with, or every slice without, a lesion)"
    return None


def _system_and_data(config: ImagingConfig, images: dict[str, LesionImages], spec_id: str) -> tuple[Any, Any, Any]:
    optimisation = {"optimizer": config.optimizer, "lr": config.lr, "weight_decay": config.weight_decay,
                    "momentum": config.momentum, "scheduler": config.scheduler,
                    "scheduler_options": config.scheduler_options, "spec_id": spec_id}
    if config.task == SEGMENTATION:
        network = build_segmentation_network(config.network)
        system = LesionSegmentationSystem(network, roi_size=config.crop_size, sw_batch_size=config.sw_batch_size,
                                          sw_overlap=config.sw_overlap, **optimisation)
        data = LesionSegmentationDataModule(images["train"], images["validation"], batch_size=config.batch_size,
                                            seed=config.seed, crop_size=config.crop_size,
                                            crops_per_image=config.crops_per_image, augmentation=config.augmentation)
    else:
        network = build_classification_network(config.network)
        system = LesionClassificationSystem(network, **optimisation)
        data = LesionClassificationDataModule(images["train"], images["validation"], batch_size=config.batch_size,
                                              seed=config.seed, augmentation=config.augmentation)
    return network, system, data


def train_imaging_model(
    frame: pd.DataFrame,
    images_folder: Path,
    config: ImagingConfig,
    output_dir: str | Path,
    on_epoch_metrics: EpochMetricsCallback | None = None,
    *,
    spec_id: str = "",
    dataset_version: str | None = None,
) -> ImagingTrainResult:
    """Fit ``config.task`` on the train split, keep the lowest-val-loss checkpoint, score validation and test.

    ``frame``: curate/lesion_segmentation_dataset rows joined with their
    ``split``. Files we own under ``output_dir`` (checkpoints/, model/) are
    replaced. A NaN or infinite loss raises TrainingDivergedError naming the spec and the epoch.
    """
    started = time.perf_counter()
    output_dir = Path(output_dir)
    checkpoint_dir, model_dir = output_dir / CHECKPOINT_DIRNAME, output_dir / MODEL_DIRNAME
    for owned in (checkpoint_dir, model_dir):
        if owned.exists():
            shutil.rmtree(owned)
    L.seed_everything(config.seed, workers=True, verbose=False)
    images = split_images(frame, images_folder)
    network, system, data = _system_and_data(config, images, spec_id)
    hardware = HardwareSettings.from_mapping(config.hardware, spec_id=spec_id)
    system.network = maybe_compile(network, hardware)
    history = EpochHistory(on_epoch_metrics)
    checkpoint = ModelCheckpoint(dirpath=checkpoint_dir, filename=BEST_CHECKPOINT_NAME, monitor=MONITOR, mode="min",
                                 save_top_k=1, enable_version_counter=False)
    stopping = EarlyStopping(monitor=MONITOR, mode="min", patience=config.early_stopping_patience)
    with _quiet():
        trainer = L.Trainer(**hardware.trainer_kwargs(), max_epochs=config.max_epochs,
                            callbacks=[history, checkpoint, stopping], logger=False, enable_progress_bar=False,
                            enable_model_summary=False, num_sanity_val_steps=0, default_root_dir=output_dir)
        trainer.fit(system, datamodule=data)
    if not checkpoint.best_model_path:
        raise RuntimeError(f"spec {spec_id or '?'}: no checkpoint was saved: the validation loss was never finite")
    checkpoint_path = Path(checkpoint.best_model_path)
    state = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
    network.load_state_dict({k.removeprefix("network.").removeprefix("_orig_mod."): v  # compiled: "_orig_mod."
                             for k, v in state["state_dict"].items() if k.startswith("network.")})
    network.cpu().eval()
    model_dir.mkdir(parents=True)
    weights_path = model_dir / NETWORK_WEIGHTS_FILENAME
    torch.save(network.state_dict(), weights_path)
    description = {
        "format_version": FORMAT_VERSION,
        "task": config.task,
        "network": config.network,
        "roi_size": config.crop_size,
        "sw_overlap": config.sw_overlap,
        "sw_batch_size": config.sw_batch_size,
        "threshold": config.threshold,
        "normalisation": "per-slice z-score (monai NormalizeIntensity)",
        "dataset_version": dataset_version,
        "spec_id": spec_id,
        "train_config": config.to_dict(),
        "files": {"network_weights": NETWORK_WEIGHTS_FILENAME},
        "sha256": {"network_weights": sha256_file(weights_path)},
        "versions": package_versions(VERSIONED_PACKAGES),
    }
    (model_dir / MODEL_SPEC_FILENAME).write_text(json.dumps(description, indent=2, sort_keys=True) + "\n")
    predictor = ImagingPredictor.load(model_dir)
    val_metrics = {f"val_{k}": v for k, v in predictor.score(images["validation"]).items()}
    test_metrics = {f"test_{k}": v for k, v in predictor.score(images["test"]).items()}
    description.update(best_epoch=int(state["epoch"]), epochs_run=len(history.history),
                       val_metrics=val_metrics, test_metrics=test_metrics)
    (model_dir / MODEL_SPEC_FILENAME).write_text(json.dumps(description, indent=2, sort_keys=True) + "\n")
    epochs_run = len(history.history)
    return ImagingTrainResult(
        task=config.task, checkpoint_path=checkpoint_path, model_dir=model_dir, best_epoch=int(state["epoch"]),
        epochs_run=epochs_run, stopped_early=epochs_run < config.max_epochs,
        train_seconds=time.perf_counter() - started, history=history.history, val_metrics=val_metrics,
        test_metrics=test_metrics, rows_per_split={split: len(images[split]) for split in SPLITS},
        parameters=parameter_count(network),
    )
