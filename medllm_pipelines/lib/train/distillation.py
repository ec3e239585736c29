"""Knowledge distillation: a small student learns from a trained teacher's softened outputs (issue 11 item 5, row M8).

Hinton et al. (2015): loss = alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T))
+ (1 - alpha) * CE(student, hard label). T^2 keeps the soft term's gradients on the scale of
the hard term's as T grows. A binary network returning one logit z per row is treated as the
two-class logits [0, z] (softmax of those is sigmoid(z)), so one loss serves the tabular MLP and
a multi-class CNN. The training system (`DistillationSystem`) sits beside the networks and takes
any student, any teacher (`AveragedTeacher` averages several) and any data module yielding
(inputs, labels); `distil_tabular` applies it to a trained TabularPredictor, `distil_imaging` to the
lesion CNN and `lib/train/text/distillation.distil_text` to the triage Transformer encoder.
"""

from __future__ import annotations

import copy
import json
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pandas as pd
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint
from torch import nn
from torch.nn import functional as F

from medllm_pipelines.lib.evaluate.metrics import roc_auc_or_none
from medllm_pipelines.lib.train.callbacks import quiet_lightning
from medllm_pipelines.lib.train.compression import CompressionConfig, tabular_evaluation_data, torch_runner
from medllm_pipelines.lib.train.compression_metrics import (
    SCORE_METRICS,
    GroupedMetrics,
    Latency,
    grouped_metrics,
    measure_latency,
    parameter_count,
    points_lost,
    state_dict_bytes,
)
from medllm_pipelines.lib.train.optim import lightning_optimizers

EpochHook = Callable[[dict[str, float], int], None]
# (validation logits, labels) -> metrics logged as val_<name> each epoch; None: the binary ROC-AUC
ValidationMetrics = Callable[[np.ndarray, np.ndarray], dict[str, float]]
STUDENT_DIRNAME = "student"
CHECKPOINT_DIRNAME = "checkpoints"


def two_class_logits(logits: torch.Tensor) -> torch.Tensor:
    """(N,) binary logits -> (N, 2) as [0, z]; (N, C) logits unchanged."""
    if logits.ndim == 1:
        return torch.stack([torch.zeros_like(logits), logits], dim=-1)
    return logits


def hard_loss(student_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    if student_logits.ndim == 1:
        return F.binary_cross_entropy_with_logits(student_logits, labels.float())
    return F.cross_entropy(student_logits, labels.long())


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor, *,
                      temperature: float, alpha: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(total, soft, hard): alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * CE(student, labels)."""
    if temperature <= 0 or not 0.0 <= alpha <= 1.0:
        raise ValueError(f"temperature must be > 0 and alpha in [0, 1], got T={temperature}, alpha={alpha}")
    student_log_probs = F.log_softmax(two_class_logits(student_logits) / temperature, dim=-1)
    teacher_probs = F.softmax(two_class_logits(teacher_logits) / temperature, dim=-1)
    soft = F.kl_div(student_log_probs, teacher_probs, reduction="batchmean") * temperature**2
    hard = hard_loss(student_logits, labels)
    return alpha * soft + (1.0 - alpha) * hard, soft, hard


class AveragedTeacher(nn.Module):
    """Several trained networks as one teacher: the mean of their logits."""

    def __init__(self, members: Sequence[nn.Module]) -> None:
        super().__init__()
        if not members:
            raise ValueError("an averaged teacher needs at least one member")
        self.members = nn.ModuleList(members)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return torch.stack([member(inputs) for member in self.members]).mean(dim=0)


class DistillationSystem(L.LightningModule):
    """Trains ``student`` on the distillation loss against a frozen ``teacher`` (kept in eval mode)."""

    def __init__(self, student: nn.Module, teacher: nn.Module, *, temperature: float = 4.0, alpha: float = 0.7,
                 optimizer: str = "adam", lr: float = 1e-3, weight_decay: float = 0.0, spec_id: str = "",
                 validation_metrics: ValidationMetrics | None = None) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["student", "teacher", "validation_metrics"])
        self.student = student
        self.teacher = teacher.eval()
        for parameter in self.teacher.parameters():
            parameter.requires_grad_(False)
        self.validation_metrics = validation_metrics
        self._val_logits: list[torch.Tensor] = []
        self._val_labels: list[torch.Tensor] = []

    def train(self, mode: bool = True) -> DistillationSystem:
        super().train(mode)
        self.teacher.eval()  # no dropout in the teacher: its soft labels are its predictions
        return self

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.student(inputs)

    def _losses(self, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, ...]:
        inputs, labels = batch
        student_logits = self.student(inputs)
        with torch.no_grad():
            teacher_logits = self.teacher(inputs)
        total, soft, hard = distillation_loss(student_logits, teacher_logits, labels,
                                              temperature=self.hparams["temperature"], alpha=self.hparams["alpha"])
        return total, soft, hard, student_logits, labels

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        total, soft, hard, _, labels = self._losses(batch)
        if not torch.isfinite(total):
            raise FloatingPointError(f"spec {self.hparams['spec_id'] or '?'}: the distillation loss became {float(total)}")
        size = len(labels)
        self.log("train_loss", total, on_step=False, on_epoch=True, batch_size=size)
        self.log("train_soft_loss", soft, on_step=False, on_epoch=True, batch_size=size)
        self.log("train_hard_loss", hard, on_step=False, on_epoch=True, batch_size=size)
        return total

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        total, _, hard, logits, labels = self._losses(batch)
        self.log("val_loss", hard, on_step=False, on_epoch=True, batch_size=len(labels))  # the label loss selects
        self.log("val_distillation_loss", total, on_step=False, on_epoch=True, batch_size=len(labels))
        self._val_logits.append(logits.detach().cpu())
        self._val_labels.append(labels.detach().cpu())

    def on_validation_epoch_end(self) -> None:
        if self._val_logits:
            logits, labels = torch.cat(self._val_logits), torch.cat(self._val_labels)
            if self.validation_metrics is not None:  # e.g. accuracy and macro-F1 of a multi-class student
                for name, value in self.validation_metrics(logits.float().numpy(), labels.numpy()).items():
                    self.log(f"val_{name}", value)
            else:
                scores = torch.sigmoid(logits) if logits.ndim == 1 else torch.softmax(logits, dim=-1)[:, -1]
                auc = roc_auc_or_none((labels.numpy() > 0).astype(np.int64), scores.numpy())
                self.log("val_roc_auc", float("nan") if auc is None else auc)
        self._val_logits.clear()
        self._val_labels.clear()

    def configure_optimizers(self) -> Any:
        return lightning_optimizers(self.hparams["optimizer"], self.student.parameters(), lr=self.hparams["lr"],
                                    weight_decay=self.hparams["weight_decay"], spec_id=self.hparams["spec_id"])


@dataclass(frozen=True)
class DistillationConfig:
    """How a student is distilled (the ``distillation`` block of configs/compression.yaml)."""

    temperature: float = 4.0
    alpha: float = 0.7
    optimizer: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    batch_size: int = 64
    max_epochs: int = 50
    early_stopping_patience: int = 8
    seed: int = 7
    tolerance_points: float = 2.0
    gate_metrics: tuple[str, ...] = ("roc_auc",)
    student: dict[str, Any] = field(default_factory=dict)
    cpu_threads: int = 0  # intra-op threads while training (0: torch's default); tiny encoders train fastest on 1

    @classmethod
    def from_compression(cls, config: CompressionConfig) -> DistillationConfig:
        raw = dict(config.distillation)
        if "gate_metrics" in raw:
            raw["gate_metrics"] = tuple(raw["gate_metrics"])
        return cls(**raw)

    def params(self) -> dict[str, str]:
        return {f"distillation_{k}": str(v) for k, v in asdict(self).items()}


class _EpochForwarder(Callback):
    def __init__(self, hook: EpochHook | None) -> None:
        self.hook = hook
        self.history: list[dict[str, float]] = []

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        metrics = {name: float(value) for name, value in trainer.callback_metrics.items()}
        self.history.append({**metrics, "epoch": float(trainer.current_epoch)})
        if self.hook is not None:
            self.hook(metrics, trainer.current_epoch)


@dataclass
class DistilledStudent:
    """The trained student (best validation checkpoint) and how training went."""

    student: nn.Module
    best_epoch: int
    epochs_run: int
    train_seconds: float
    history: list[dict[str, float]]
    checkpoint_path: Path


def distil(student: nn.Module, teacher: nn.Module, data: L.LightningDataModule, config: DistillationConfig,
           output_dir: str | Path, *, on_epoch_metrics: EpochHook | None = None, spec_id: str = "",
           validation_metrics: ValidationMetrics | None = None) -> DistilledStudent:
    """Train ``student`` against ``teacher`` on ``data``'s train split, keep the best validation-loss checkpoint."""
    from medllm_pipelines.lib.train.text.training import cpu_threads

    started = time.perf_counter()
    checkpoint_dir = Path(output_dir) / CHECKPOINT_DIRNAME
    if checkpoint_dir.exists():
        shutil.rmtree(checkpoint_dir)
    L.seed_everything(config.seed, workers=True, verbose=False)
    system = DistillationSystem(student, copy.deepcopy(teacher), temperature=config.temperature, alpha=config.alpha,
                                optimizer=config.optimizer, lr=config.lr, weight_decay=config.weight_decay, spec_id=spec_id,
                                validation_metrics=validation_metrics)
    history = _EpochForwarder(on_epoch_metrics)
    checkpoint = ModelCheckpoint(dirpath=checkpoint_dir, filename="best", monitor="val_loss", mode="min", save_top_k=1,
                                 enable_version_counter=False)
    trainer = L.Trainer(accelerator="cpu", devices=1, max_epochs=config.max_epochs, logger=False,
                        callbacks=[history, checkpoint, EarlyStopping("val_loss", patience=config.early_stopping_patience)],
                        enable_progress_bar=False, enable_model_summary=False, deterministic=True,
                        num_sanity_val_steps=0, default_root_dir=output_dir)
    # the frozen teacher is in eval mode on purpose
    with quiet_lightning(r".*module\(s\) in eval mode.*"), cpu_threads(config.cpu_threads):
        trainer.fit(system, datamodule=data)
    if not checkpoint.best_model_path:
        raise RuntimeError(f"spec {spec_id or '?'}: no student checkpoint was saved: the validation loss was never finite")
    state = torch.load(checkpoint.best_model_path, map_location="cpu", weights_only=True)
    student.load_state_dict({k.removeprefix("student."): v for k, v in state["state_dict"].items() if k.startswith("student.")})
    return DistilledStudent(student.eval(), int(state["epoch"]), len(history.history), time.perf_counter() - started,
                            history.history, Path(checkpoint.best_model_path))


@dataclass(frozen=True)
class DistillationReport:
    """Student against teacher on the evaluation split: metrics (overall, per subgroup), size, latency."""

    spec_id: str
    teacher_metrics: GroupedMetrics
    student_metrics: GroupedMetrics
    teacher_parameters: int
    student_parameters: int
    teacher_bytes: int
    student_bytes: int
    teacher_latency: Latency
    student_latency: Latency
    tolerance_points: float
    gate_metrics: tuple[str, ...]
    best_epoch: int
    epochs_run: int
    train_seconds: float
    student_dir: Path
    config: DistillationConfig
    # the metrics compared in points (a multi-class student: accuracy, macro_f1, top3_accuracy) and shown in the table
    score_metrics: tuple[str, ...] = SCORE_METRICS
    table_metrics: tuple[str, ...] = ("roc_auc", "accuracy", "f1")

    @property
    def drop_points(self) -> dict[str, float | None]:
        return points_lost(self.teacher_metrics.overall, self.student_metrics.overall, self.score_metrics)

    @property
    def within_tolerance(self) -> bool:
        drops = self.drop_points
        return all(drops.get(m) is not None and drops[m] <= self.tolerance_points + 1e-9 for m in self.gate_metrics
                   if self.teacher_metrics.overall.get(m) is not None)

    @property
    def speedup_p50(self) -> float:
        return round(self.teacher_latency.p50_ms / self.student_latency.p50_ms, 3) if self.student_latency.p50_ms else float("nan")

    def table(self) -> list[dict[str, Any]]:
        rows = []
        for role, metrics, params, size, latency in (
            ("teacher", self.teacher_metrics, self.teacher_parameters, self.teacher_bytes, self.teacher_latency),
            ("student", self.student_metrics, self.student_parameters, self.student_bytes, self.student_latency),
        ):
            rows.append({"model": role, "parameters": params, "file_bytes": size, "p50_ms": latency.p50_ms,
                         "p95_ms": latency.p95_ms, **{k: metrics.overall.get(k) for k in self.table_metrics}})
        return rows

    def mlflow_metrics(self) -> dict[str, float]:
        metrics: dict[str, float] = {}
        for row in self.table():
            metrics |= {f"{row['model']}_{k}": float(v) for k, v in row.items() if k != "model" and v is not None}
        metrics |= {f"{k}_points_lost": float(v) for k, v in self.drop_points.items() if v is not None}
        return metrics

    def as_dict(self) -> dict[str, Any]:
        return {"spec_id": self.spec_id, "teacher": self.teacher_metrics.as_dict(), "student": self.student_metrics.as_dict(),
                "table": self.table(), "drop_points": self.drop_points, "tolerance_points": self.tolerance_points,
                "gate_metrics": list(self.gate_metrics), "within_tolerance": self.within_tolerance,
                "speedup_p50": self.speedup_p50, "best_epoch": self.best_epoch, "epochs_run": self.epochs_run,
                "train_seconds": round(self.train_seconds, 2), "student_dir": str(self.student_dir),
                "config": asdict(self.config)}

    def summary(self) -> str:
        headline = self.gate_metrics[0] if self.gate_metrics else "roc_auc"
        label = "ROC-AUC" if headline == "roc_auc" else headline
        return (f"distilled {self.spec_id}: student {self.student_parameters} vs teacher {self.teacher_parameters} "
                f"parameters, {label} {self.student_metrics.overall.get(headline)} vs "
                f"{self.teacher_metrics.overall.get(headline)}, x{self.speedup_p50} p50")

    def as_metadata(self) -> dict[str, Any]:
        return {"trained": True, "teacher_parameters": self.teacher_parameters, "student_parameters": self.student_parameters,
                "teacher_bytes": self.teacher_bytes, "student_bytes": self.student_bytes,
                "teacher_metrics": self.teacher_metrics.overall, "student_metrics": self.student_metrics.overall,
                "points_lost": self.drop_points, "tolerance_points": self.tolerance_points,
                "within_tolerance": self.within_tolerance, "speedup_p50": self.speedup_p50,
                "best_epoch": self.best_epoch, "epochs_run": self.epochs_run, "train_seconds": round(self.train_seconds, 2),
                "student_dir": str(self.student_dir)}


def _write_student_dir(teacher_dir: Path, student_dir: Path, student: nn.Module, network: dict[str, Any],
                       distilled: DistilledStudent, config: DistillationConfig) -> None:
    """The student in the teacher's model-directory layout (same preprocessing), so TabularPredictor.load reads it."""
    from medllm_pipelines.lib.train.predictor import MODEL_SPEC_FILENAME, sha256_file

    if student_dir.exists():
        shutil.rmtree(student_dir)
    spec = json.loads((teacher_dir / MODEL_SPEC_FILENAME).read_text())
    shutil.copytree(teacher_dir, student_dir, ignore=shutil.ignore_patterns(spec["files"]["network_weights"]))
    weights = student_dir / spec["files"]["network_weights"]
    torch.save(student.state_dict(), weights)
    spec["network"] = network
    spec["sha256"]["network_weights"] = sha256_file(weights)
    spec["best_epoch"], spec["epochs_run"] = distilled.best_epoch, distilled.epochs_run
    spec["distillation"] = {**asdict(config), "teacher_model_dir": str(teacher_dir)}
    (student_dir / MODEL_SPEC_FILENAME).write_text(json.dumps(spec, indent=2, sort_keys=True, default=list) + "\n")


def distil_tabular(teacher_dir: str | Path, frame: pd.DataFrame, compression: CompressionConfig, output_dir: str | Path, *,
                   patients: pd.DataFrame | None = None, on_epoch_metrics: EpochHook | None = None) -> DistillationReport:
    """Distil the trained MLP in ``teacher_dir`` into the configured smaller MLP; report both on the evaluation split."""
    from medllm_pipelines.lib.train.networks import TabularMLP
    from medllm_pipelines.lib.train.predictor import TabularPredictor
    from medllm_pipelines.lib.train.tabular import TabularDataModule

    config = DistillationConfig.from_compression(compression)
    teacher_dir, output_dir = Path(teacher_dir), Path(output_dir)
    predictor = TabularPredictor.load(teacher_dir)
    data = TabularDataModule(frame, predictor.preprocessing, "label", batch_size=config.batch_size, seed=config.seed)
    data.setup("fit")
    network = {"class": f"{TabularMLP.__module__}.{TabularMLP.__qualname__}", "n_inputs": data.n_features,
               "hidden_sizes": list(config.student.get("hidden_sizes", [8])),
               "activation": config.student.get("activation", "relu"), "dropout": float(config.student.get("dropout", 0.0))}
    L.seed_everything(config.seed, workers=True, verbose=False)
    student = TabularMLP(network["n_inputs"], network["hidden_sizes"], network["activation"], network["dropout"])
    distilled = distil(student, predictor.network, data, config, output_dir, on_epoch_metrics=on_epoch_metrics,
                       spec_id=compression.spec_id)
    student_dir = output_dir / STUDENT_DIRNAME
    _write_student_dir(teacher_dir, student_dir, distilled.student, network, distilled, config)

    evaluation = tabular_evaluation_data(predictor, frame, compression, patients)
    timing = {"calls": compression.latency_calls, "batch_size": compression.latency_batch_size}
    reports = {}
    for role, network_module in (("teacher", predictor.network), ("student", distilled.student)):
        run = torch_runner(network_module)
        scores = 1.0 / (1.0 + np.exp(-run(evaluation.inputs).astype(np.float64)))
        reports[role] = (grouped_metrics(evaluation.labels, scores, evaluation.groups, threshold=evaluation.threshold,
                                         min_rows=compression.subgroup_min_rows),
                         parameter_count(network_module), state_dict_bytes(network_module),
                         measure_latency(run, evaluation.inputs, **timing))
    teacher, student_part = reports["teacher"], reports["student"]
    return DistillationReport(compression.spec_id, teacher[0], student_part[0], teacher[1], student_part[1], teacher[2],
                              student_part[2], teacher[3], student_part[3], config.tolerance_points, config.gate_metrics,
                              distilled.best_epoch, distilled.epochs_run, distilled.train_seconds, student_dir, config)


REPORT_ARTIFACT = "distillation_report.json"
TABLE_ARTIFACT = "distillation_table.json"


def _log_tabular_student(report: DistillationReport) -> str:
    """The MLP student as a pt2 torch model (zeros as input example) and its model folder; its model URI."""
    import mlflow
    import mlflow.pytorch

    from medllm_pipelines.lib.train.predictor import TabularPredictor
    from medllm_pipelines.lib.train.tracking import pinned_pip_requirements

    student = TabularPredictor.load(report.student_dir)
    example = np.zeros((2, student.network.n_inputs), dtype=np.float32)  # zeros, never real rows
    info = mlflow.pytorch.log_model(student.network, name="student", pip_requirements=pinned_pip_requirements(),
                                    serialization_format="pt2", input_example=example)
    mlflow.log_artifacts(str(report.student_dir), artifact_path="student_dir")
    return info.model_uri


def log_distillation(report: DistillationReport, *, dataset_version: str, tracking_uri: str | None = None,
                     log_student: Callable[[DistillationReport], str] | None = None) -> dict[str, Any]:
    """Params, summary, metrics, report and table into the active run; the student logged (``log_student``,
    default the MLP's: pt2, zeros as input example) and registered as ``<spec>-distilled`` (family distilled)
    only when within tolerance."""
    import mlflow

    from medllm_pipelines.lib.train.registry import register_model
    from medllm_pipelines.lib.train.tracking import log_training_summary

    mlflow.log_params({**report.config.params(), "dataset_version": dataset_version})
    log_training_summary(best_epoch=report.best_epoch, epochs_run=report.epochs_run,
                         stopped_early=report.epochs_run < report.config.max_epochs, train_seconds=report.train_seconds,
                         kept_metrics={f"test_{k}": v for k, v in report.student_metrics.overall.items() if v is not None})
    mlflow.log_metrics(report.mlflow_metrics())
    mlflow.log_dict(report.as_dict(), REPORT_ARTIFACT)
    mlflow.log_table(pd.DataFrame(report.table()), TABLE_ARTIFACT)
    model_uri = (log_student or _log_tabular_student)(report)
    if not report.within_tolerance:
        return {"student_model_uri": model_uri, "registered": False}
    registered = register_model(model_uri, report.spec_id, family="distilled", dataset_version=dataset_version,
                                metrics={f"test_{k}": v for k, v in report.student_metrics.overall.items() if v is not None},
                                tracking_uri=tracking_uri, name=f"{report.spec_id}-distilled")
    return {"student_model_uri": model_uri, "registered": True, **registered.as_metadata()}


# ------------------------------------------------------------------------------------ the imaging CNN
class _OneLogit(nn.Module):
    """A MONAI classifier's (N, 1) output as (N,): the binary form distillation_loss reads as [0, z]."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.network(inputs).reshape(-1)


class _SliceDataModule(L.LightningDataModule):
    """Normalised slices (n, 1, H, W) and presence labels of the train and validation splits, as (inputs, labels)."""

    def __init__(self, train: tuple[np.ndarray, np.ndarray], validation: tuple[np.ndarray, np.ndarray], *,
                 batch_size: int, seed: int) -> None:
        super().__init__()
        self.train_arrays, self.validation_arrays = train, validation
        self.batch_size, self.seed = int(batch_size), int(seed)

    @staticmethod
    def _dataset(arrays: tuple[np.ndarray, np.ndarray]) -> torch.utils.data.TensorDataset:
        return torch.utils.data.TensorDataset(torch.from_numpy(arrays[0]), torch.from_numpy(arrays[1].astype(np.float32)))

    def train_dataloader(self) -> torch.utils.data.DataLoader:
        return torch.utils.data.DataLoader(self._dataset(self.train_arrays), batch_size=self.batch_size, shuffle=True,
                                           generator=torch.Generator().manual_seed(self.seed))

    def val_dataloader(self) -> torch.utils.data.DataLoader:
        return torch.utils.data.DataLoader(self._dataset(self.validation_arrays), batch_size=self.batch_size)


def _write_imaging_student_dir(teacher_dir: Path, student_dir: Path, student: nn.Module, network: dict[str, Any],
                               distilled: DistilledStudent, config: DistillationConfig) -> None:
    """The student in the imaging model-folder layout (same normalisation), so ImagingPredictor.load reads it."""
    from medllm_pipelines.lib.train.imaging.predictor import MODEL_SPEC_FILENAME, sha256_file

    if student_dir.exists():
        shutil.rmtree(student_dir)
    student_dir.mkdir(parents=True)
    spec = json.loads((teacher_dir / MODEL_SPEC_FILENAME).read_text())
    weights = student_dir / spec["files"]["network_weights"]
    torch.save(student.state_dict(), weights)
    spec.update(network=network, best_epoch=distilled.best_epoch, epochs_run=distilled.epochs_run,
                distillation={**asdict(config), "teacher_model_dir": str(teacher_dir)})
    spec["sha256"]["network_weights"] = sha256_file(weights)
    for stale in ("val_metrics", "test_metrics", "train_config"):  # the teacher's, not the student's
        spec.pop(stale, None)
    (student_dir / MODEL_SPEC_FILENAME).write_text(json.dumps(spec, indent=2, sort_keys=True, default=list) + "\n")


def distil_imaging(teacher_dir: str | Path, frame: pd.DataFrame, images_folder: str | Path,
                   compression: CompressionConfig, output_dir: str | Path, *, patients: pd.DataFrame | None = None,
                   on_epoch_metrics: EpochHook | None = None) -> DistillationReport:
    """Distil the trained lesion classifier in ``teacher_dir`` into the configured smaller MONAI CNN (the
    ``student`` block: a network description as the spec writes one); both judged on the evaluation split."""
    from medllm_pipelines.lib.train.compression import imaging_evaluation_data
    from medllm_pipelines.lib.train.imaging.networks import (
        CLASSIFICATION_FAMILIES, build_classification_network, network_description,
    )
    from medllm_pipelines.lib.train.imaging.predictor import ImagingPredictor
    from medllm_pipelines.lib.train.imaging.training import split_images

    config = DistillationConfig.from_compression(compression)
    teacher_dir, output_dir = Path(teacher_dir), Path(output_dir)
    predictor = ImagingPredictor.load(teacher_dir)
    if predictor.task != "classification":
        raise ValueError(f"spec {compression.spec_id}: only the lesion classifier is distilled, not a {predictor.task} model")
    images = split_images(frame, Path(images_folder))
    arrays = {split: (np.stack(images[split].images).astype(np.float32), images[split].presence)
              for split in ("train", "validation") if len(images[split])}
    if len(arrays) < 2:
        raise ValueError(f"spec {compression.spec_id}: distillation needs training and validation images")
    network = network_description(config.student or {"family": "densenet"}, CLASSIFICATION_FAMILIES, compression.spec_id)
    L.seed_everything(config.seed, workers=True, verbose=False)
    student = build_classification_network(network)
    data = _SliceDataModule(arrays["train"], arrays["validation"], batch_size=config.batch_size, seed=config.seed)
    distilled = distil(_OneLogit(student), _OneLogit(predictor.network), data, config, output_dir,
                       on_epoch_metrics=on_epoch_metrics, spec_id=compression.spec_id)
    distilled.student = distilled.student.network
    student_dir = output_dir / STUDENT_DIRNAME
    _write_imaging_student_dir(teacher_dir, student_dir, distilled.student, network, distilled, config)

    evaluation = imaging_evaluation_data(predictor, frame, images_folder, compression, patients)
    timing = {"calls": compression.latency_calls, "batch_size": compression.latency_batch_size}
    reports = {}
    for role, module in (("teacher", predictor.network), ("student", distilled.student)):
        run = torch_runner(module)
        scores = 1.0 / (1.0 + np.exp(-run(evaluation.inputs).astype(np.float64).reshape(-1)))
        reports[role] = (grouped_metrics(evaluation.labels, scores, evaluation.groups, threshold=evaluation.threshold,
                                         min_rows=compression.subgroup_min_rows),
                         parameter_count(module), state_dict_bytes(module), measure_latency(run, evaluation.inputs, **timing))
    teacher, student_part = reports["teacher"], reports["student"]
    return DistillationReport(compression.spec_id, teacher[0], student_part[0], teacher[1], student_part[1], teacher[2],
                              student_part[2], teacher[3], student_part[3], config.tolerance_points, config.gate_metrics,
                              distilled.best_epoch, distilled.epochs_run, distilled.train_seconds, student_dir, config)


def log_imaging_student(report: DistillationReport) -> str:
    """The CNN student as the imaging pyfunc (slices in, lesion probabilities out); for ``log_distillation``."""
    from medllm_pipelines.lib.train.imaging.runs import log_imaging_pyfunc

    return log_imaging_pyfunc(report.student_dir, "classification", name="student")
