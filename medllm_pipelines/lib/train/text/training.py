"""Training the Transformer-encoder text classifier with Lightning, and its held-out evaluation.

``train_text_classifier`` is the one entry point: it seeds everything, builds
the network from the spec's architecture and the tokenizer's vocabulary,
trains on the train split, keeps the checkpoint with the lowest validation
loss (early stopping), evaluates it on the test split against the
majority-class baseline and writes a folder that
``TextClassifierPredictor.load`` reads in a fresh process.
"""

from __future__ import annotations

import json
import platform
import shutil
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pandas as pd
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

from medllm_pipelines.lib.common.versions import package_versions
from medllm_pipelines.lib.train.callbacks import EpochHistory, EpochMetricsCallback, quiet_lightning
from medllm_pipelines.lib.train.hardware import HardwareSettings, maybe_compile
from medllm_pipelines.lib.train.optim import OPTIMIZER_NAMES, SCHEDULER_NAMES, check_component
from medllm_pipelines.lib.train.text.data import (
    TEST_SPLIT,
    TextClassificationDataModule,
    class_indices,
    encode_texts,
)
from medllm_pipelines.lib.train.text.networks import (
    NETWORK_KEYS,
    TRANSFORMER_ENCODER,
    EncoderConfig,
    TransformerEncoderClassifier,
    count_parameters,
)
from medllm_pipelines.lib.train.text.predictor import (
    MODEL_SPEC_FILENAME,
    MODEL_SPEC_FORMAT_VERSION,
    NETWORK_WEIGHTS_FILENAME,
    TEXT_CLASSIFIER_TASK,
    sha256_file,
)
from medllm_pipelines.lib.train.text.systems import TextClassificationSystem, classification_metrics, majority_class_metrics
from medllm_pipelines.lib.train.text.tokenizer import TOKENIZER_FILE, check_tokenizer_matches, tokenizer_sha256

TEXT_NETWORK_FAMILIES = (TRANSFORMER_ENCODER,)
CHECKPOINT_DIRNAME = "checkpoints"
MODEL_DIRNAME = "model"
VERSIONED_PACKAGES = ("torch", "lightning", "tokenizers", "numpy", "pandas")


@dataclass(frozen=True)
class TextTrainConfig:
    """Everything that decides the trained weights (architecture from ``network``, the rest from ``training``)."""

    d_model: int = 64
    n_heads: int = 4
    n_layers: int = 2
    dim_feedforward: int = 128
    dropout: float = 0.1
    max_length: int = 128
    optimizer: str = "adamw"
    scheduler: str = "none"
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 0.0
    batch_size: int = 32
    max_epochs: int = 20
    early_stopping_patience: int = 5
    early_stopping_min_delta: float = 0.0
    label_smoothing: float = 0.0
    token_dropout: float = 0.0
    seed: int = 42
    # intra-op CPU threads while training (0: torch's default). A demo-size encoder multiplies matrices too small
    # to share: on 2 busy cores, torch's default threads made one training 5x slower (139 s against 28 s).
    cpu_threads: int = 1
    # placement and scale (lib/train/hardware.py): accelerator, devices, num_nodes, strategy, precision, compile
    hardware: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        HardwareSettings.from_mapping(self.hardware)
        check_component("optimizer", self.optimizer, OPTIMIZER_NAMES)
        check_component("scheduler", self.scheduler, SCHEDULER_NAMES)
        problems = []
        if self.lr <= 0 or self.weight_decay < 0:
            problems.append("lr must be positive and weight_decay >= 0")
        if self.batch_size < 1 or self.max_epochs < 1 or self.early_stopping_patience < 0:
            problems.append("batch_size and max_epochs must be >= 1, early_stopping_patience >= 0")
        if self.cpu_threads < 0:
            problems.append("cpu_threads must be >= 0 (0: torch's default)")
        if not 0.0 <= self.label_smoothing < 1.0 or not 0.0 <= self.token_dropout < 1.0:
            problems.append("label_smoothing and token_dropout must be in [0, 1)")
        if problems:
            raise ValueError("invalid TextTrainConfig: " + "; ".join(problems))

    def encoder(self, vocab_size: int, n_outputs: int) -> EncoderConfig:
        return EncoderConfig(vocab_size=vocab_size, n_outputs=n_outputs,
                             **{key: getattr(self, key) for key in NETWORK_KEYS})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_spec(cls, spec_id: str, network: dict[str, Any], training: dict[str, Any]) -> TextTrainConfig:
        """The config of a spec's ``network`` and ``training`` blocks at one size (ModelSpec.network_for/training_for).

        An unknown network family, optimiser or scheduler raises
        UnknownComponentError naming the spec; unknown keys a ValueError naming
        the spec: both before any MLflow run is opened.
        """
        network = dict(network or {})
        check_component("network", network.pop("family", None), TEXT_NETWORK_FAMILIES, spec_id)
        check_component("optimizer", training.get("optimizer", cls.optimizer), OPTIMIZER_NAMES, spec_id)
        check_component("scheduler", training.get("scheduler", cls.scheduler), SCHEDULER_NAMES, spec_id)
        HardwareSettings.from_mapping(training.get("hardware"), spec_id=spec_id)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(network) - set(NETWORK_KEYS)) + sorted(set(training) - (known - set(NETWORK_KEYS)))
        if unknown:
            raise ValueError(f"spec {spec_id}: unknown training/network keys {unknown}; known: {sorted(known)}")
        try:
            config = cls(**{**network, **training})
            config.encoder(vocab_size=2, n_outputs=1)  # the architecture is valid before any data is read
        except ValueError as invalid:
            raise ValueError(f"spec {spec_id}: {invalid}") from None
        return config


@dataclass
class TextTrainResult:
    """Where the model is, how training went, and its held-out figures; epochs are 0-based as in Lightning."""

    model_dir: Path
    checkpoint_path: Path
    best_epoch: int
    epochs_run: int
    history: list[dict[str, float]]
    val_metrics: dict[str, float]
    test_metrics: dict[str, float]
    baseline_metrics: dict[str, float]
    classes: list[str]
    n_train: int
    n_val: int
    n_test: int
    parameters: int
    stopped_early: bool
    train_seconds: float
    test_accuracy_by_language: dict[str, float] = field(default_factory=dict)
    confusion: dict[str, dict[str, int]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["model_dir"], data["checkpoint_path"] = str(self.model_dir), str(self.checkpoint_path)
        return data


@contextmanager
def cpu_threads(count: int) -> Iterator[None]:
    """torch's intra-op thread count set to ``count`` (0: unchanged) for the block, then restored."""
    previous = torch.get_num_threads()
    if count > 0:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _logits(network: torch.nn.Module, input_ids: torch.Tensor, batch_size: int = 512) -> np.ndarray:
    network.eval()
    with torch.no_grad():
        return torch.cat([network(input_ids[i:i + batch_size]) for i in range(0, len(input_ids), batch_size)]
                         or [torch.zeros(0, 1)]).float().numpy()


def _confusion(truth: Sequence[str], predicted: Sequence[str]) -> dict[str, dict[str, int]]:
    table: dict[str, dict[str, int]] = {}
    for true, guess in zip(truth, predicted, strict=True):
        table.setdefault(str(true), {}).setdefault(str(guess), 0)
        table[str(true)][str(guess)] += 1
    return {k: dict(sorted(v.items())) for k, v in sorted(table.items())}


def train_text_classifier(
    frame: pd.DataFrame,
    tokenizer: Any,
    classes: Sequence[str],
    config: TextTrainConfig,
    output_dir: str | Path,
    on_epoch_metrics: EpochMetricsCallback | None = None,
    *,
    spec_id: str = "",
    dataset_version: str | None = None,
    text_column: str = "text",
    label_column: str = "label",
    split_column: str = "split",
) -> TextTrainResult:
    """Train on the train split, select on validation, evaluate on test; write a loadable model folder.

    Files we own under ``output_dir`` (checkpoints/, model/) are replaced. A
    loss that becomes NaN raises TrainingDivergedError naming ``spec_id``.
    """
    started = time.perf_counter()
    output_dir = Path(output_dir)
    checkpoint_dir, model_dir = output_dir / CHECKPOINT_DIRNAME, output_dir / MODEL_DIRNAME
    for owned in (checkpoint_dir, model_dir):
        if owned.exists():
            shutil.rmtree(owned)
    classes = list(classes)
    L.seed_everything(config.seed, workers=True, verbose=False)
    data = TextClassificationDataModule(frame, tokenizer, classes, text_column=text_column, label_column=label_column,
                                        split_column=split_column, max_length=config.max_length,
                                        batch_size=config.batch_size, seed=config.seed)
    data.setup("fit")
    assert data.train_dataset is not None and data.val_dataset is not None
    network = TransformerEncoderClassifier(config.encoder(tokenizer.get_vocab_size(), len(classes)))
    check_tokenizer_matches(tokenizer, network.vocab_size, spec_id=spec_id)
    system = TextClassificationSystem(network, optimizer=config.optimizer, scheduler=config.scheduler, lr=config.lr,
                                      weight_decay=config.weight_decay, momentum=config.momentum,
                                      label_smoothing=config.label_smoothing, token_dropout=config.token_dropout,
                                      spec_id=spec_id)
    hardware = HardwareSettings.from_mapping(config.hardware, spec_id=spec_id)
    system.network = maybe_compile(network, hardware)
    history = EpochHistory(on_epoch_metrics)
    checkpoint = ModelCheckpoint(dirpath=checkpoint_dir, filename="best", monitor="val_loss", mode="min", save_top_k=1,
                                 enable_version_counter=False)
    stopping = EarlyStopping(monitor="val_loss", mode="min", patience=config.early_stopping_patience,
                             min_delta=config.early_stopping_min_delta)
    with quiet_lightning(), cpu_threads(config.cpu_threads):
        trainer = L.Trainer(**hardware.trainer_kwargs(), max_epochs=config.max_epochs,
                            callbacks=[history, checkpoint, stopping], logger=False, enable_progress_bar=False,
                            enable_model_summary=False, num_sanity_val_steps=0, default_root_dir=output_dir)
        trainer.fit(system, datamodule=data)
    if not checkpoint.best_model_path:
        raise RuntimeError(f"spec {spec_id}: no checkpoint was saved: the validation loss was never finite")
    checkpoint_path = Path(checkpoint.best_model_path)
    state = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
    network.load_state_dict({k.removeprefix("network.").removeprefix("_orig_mod."): v  # compiled: "_orig_mod."
                             for k, v in state["state_dict"].items() if k.startswith("network.")})
    network.cpu().eval()

    val_ids, val_labels = data.val_dataset.tensors
    val_logits = _logits(network, val_ids)
    val_metrics = {"val_loss": float(torch.nn.functional.cross_entropy(torch.from_numpy(val_logits), val_labels)),
                   **{f"val_{k}": v for k, v in classification_metrics(val_logits, val_labels.numpy()).items()}}
    test_rows = frame[frame[split_column] == TEST_SPLIT]
    test_labels = class_indices(test_rows[label_column].tolist(), classes, TEST_SPLIT).numpy()
    test_logits = _logits(network, encode_texts(tokenizer, test_rows[text_column].tolist(), config.max_length))
    test_metrics = {f"test_{k}": v for k, v in classification_metrics(test_logits, test_labels).items()}
    train_labels = data.train_dataset.tensors[1].numpy()
    baseline = {f"baseline_test_{k}": v
                for k, v in majority_class_metrics(train_labels, test_labels, len(classes)).items()}
    predicted = [classes[i] for i in test_logits.argmax(axis=1)] if len(test_rows) else []
    by_language: dict[str, float] = {}
    if "language" in test_rows.columns and len(test_rows):
        correct = pd.Series(np.asarray(predicted) == test_rows[label_column].to_numpy(), index=test_rows.index)
        by_language = {str(k): float(v) for k, v in correct.groupby(test_rows["language"]).mean().items()}

    model_dir.mkdir(parents=True, exist_ok=True)
    weights_path = model_dir / NETWORK_WEIGHTS_FILENAME
    torch.save(network.state_dict(), weights_path)
    (model_dir / TOKENIZER_FILE).write_text(tokenizer.to_str(pretty=False))
    epochs_run = len(history.history)
    spec = {
        "format_version": MODEL_SPEC_FORMAT_VERSION,
        "task": TEXT_CLASSIFIER_TASK,
        "spec_id": spec_id,
        "classes": classes,
        "text": "patient turns of a pre-consultation dialogue, one per line",
        "network": {**network.config.as_dict(), "class": f"{TransformerEncoderClassifier.__module__}."
                    f"{TransformerEncoderClassifier.__qualname__}"},
        "parameters": count_parameters(network),
        "train_config": config.to_dict(),
        "dataset_version": dataset_version,
        "best_epoch": int(state["epoch"]),
        "epochs_run": epochs_run,
        "val_metrics": val_metrics,
        "test_metrics": test_metrics,
        "baseline_metrics": baseline,
        "files": {"network_weights": NETWORK_WEIGHTS_FILENAME, "tokenizer": TOKENIZER_FILE},
        "sha256": {"network_weights": sha256_file(weights_path), "tokenizer": tokenizer_sha256(tokenizer)},
        "versions": {"python": platform.python_version(), **package_versions(VERSIONED_PACKAGES)},
    }
    spec["network"].pop("class")
    spec["network_class"] = f"{TransformerEncoderClassifier.__module__}.{TransformerEncoderClassifier.__qualname__}"
    (model_dir / MODEL_SPEC_FILENAME).write_text(json.dumps(spec, indent=2, sort_keys=True) + "\n")
    return TextTrainResult(
        model_dir=model_dir, checkpoint_path=checkpoint_path, best_epoch=int(state["epoch"]), epochs_run=epochs_run,
        history=history.history, val_metrics=val_metrics, test_metrics=test_metrics, baseline_metrics=baseline,
        classes=classes, n_train=len(data.train_dataset), n_val=len(data.val_dataset), n_test=len(test_rows),
        parameters=count_parameters(network), stopped_early=epochs_run < config.max_epochs,
        train_seconds=time.perf_counter() - started, test_accuracy_by_language=by_language,
        confusion=_confusion(test_rows[label_column].tolist(), predicted),
    )
