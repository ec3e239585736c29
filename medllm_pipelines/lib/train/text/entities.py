"""Symptom/disease/drug recognition: the triage encoder with one BIO tag per token, trained with Lightning.

Reuses the text stack: the whole-word tokenizer (train/text_tokenizer), the
encoder (``TransformerTokenTagger`` in networks.py), the spec's optimiser and
schedule (lib/train/optim.py) and ``TextTrainConfig``. Tags come from the
curate stage's realigned character spans through the tokens' offsets; the
metrics are exact token spans (spans.py), against the dictionary baseline.
``train_entity_tagger`` writes a folder that ``EntityTaggerPredictor.load``
reads with torch and tokenizers only; ``train_entity_spec_model`` is the
MLflow run (inputs, params, curves, summary, model, registration).
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pandas as pd
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from medllm_pipelines.lib.train.callbacks import EpochHistory, EpochMetricsCallback, quiet_lightning
from medllm_pipelines.lib.train.hardware import HardwareSettings
from medllm_pipelines.lib.train.optim import attach_scheduler, build_optimizer, check_finite_loss
from medllm_pipelines.lib.train.text.networks import PAD_ID, TRANSFORMER_ENCODER, EncoderConfig, TransformerTokenTagger, count_parameters
from medllm_pipelines.lib.train.text.predictor import MODEL_SPEC_FILENAME, NETWORK_WEIGHTS_FILENAME, sha256_file
from medllm_pipelines.lib.train.text.spans import DictionaryTagger, Span, bio_labels, decode_bio, encode_bio, span_metrics
from medllm_pipelines.lib.train.text.systems import UNK_ID
from medllm_pipelines.lib.train.text.tokenizer import TOKENIZER_FILE, check_tokenizer_matches, load_tokenizer, tokenizer_sha256
from medllm_pipelines.lib.train.text.training import TextTrainConfig, cpu_threads

ENTITY_TAGGER_TASK = "token_classification"
IGNORE = -100  # padding positions: no loss, no metric
SPANS_COLUMN = "entities_json"
# The kept checkpoint and early stopping follow validation exact-span F1: the validation loss bottoms out within
# a few epochs (the model grows confident on the many O tokens) while span F1 still rises for tens of epochs.
MONITOR, MONITOR_MODE = "val_span_f1", "max"
INPUT_EXAMPLE = "I have had a cough and a fever for three days."  # written for the signature, never a patient's


def parse_spans(value: Any) -> list[Span]:
    return [(int(s), int(e), str(k)) for s, e, k in (json.loads(value) if isinstance(value, str) else value or [])]


def encode_tagged(tokenizer: Any, texts: Sequence[str], spans: Sequence[Sequence[Span]] | None, labels: Sequence[str],
                  max_length: int) -> tuple[torch.Tensor, torch.Tensor, list[list[tuple[int, int]]]]:
    """Token ids (n, max_length), tag ids (IGNORE on padding) and each text's kept token offsets."""
    index = {label: i for i, label in enumerate(labels)}
    ids = np.full((len(texts), max_length), PAD_ID, dtype=np.int64)
    tags = np.full((len(texts), max_length), IGNORE, dtype=np.int64)
    offsets = []
    for row, encoding in enumerate(tokenizer.encode_batch([str(t) for t in texts], add_special_tokens=False)):
        kept, where = encoding.ids[:max_length], [tuple(o) for o in encoding.offsets[:max_length]]
        ids[row, : len(kept)] = kept
        bio = encode_bio(where, spans[row]) if spans is not None else ["O"] * len(kept)
        tags[row, : len(kept)] = [index.get(t, 0) for t in bio]
        offsets.append(where)
    return torch.from_numpy(ids), torch.from_numpy(tags), offsets


def token_spans(tag_ids: np.ndarray, labels: Sequence[str]) -> list[Span]:
    return decode_bio([labels[int(t)] for t in tag_ids if t != IGNORE])


class TokenTaggingSystem(L.LightningModule):
    """Per-token cross-entropy (padding ignored), token dropout, validation exact-span F1 per epoch."""

    def __init__(self, network: nn.Module, labels: Sequence[str], entity_types: Sequence[str], *,
                 optimizer: str = "adamw", scheduler: str = "none", lr: float = 1e-3, weight_decay: float = 0.0,
                 momentum: float = 0.9, token_dropout: float = 0.0, spec_id: str = "") -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["network"])
        self.network = network
        self.loss_fn = nn.CrossEntropyLoss(ignore_index=IGNORE)
        self._val: list[tuple[np.ndarray, np.ndarray]] = []

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.network(input_ids)

    def _loss(self, logits: torch.Tensor, tags: torch.Tensor) -> torch.Tensor:
        return self.loss_fn(logits.reshape(-1, logits.shape[-1]), tags[:, : logits.shape[1]].reshape(-1))

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        input_ids, tags = batch
        rate = float(self.hparams["token_dropout"])
        if rate > 0:
            input_ids = input_ids.masked_fill((torch.rand(input_ids.shape) < rate) & (input_ids != PAD_ID), UNK_ID)
        loss = self._loss(self(input_ids), tags)
        check_finite_loss(loss, spec_id=self.hparams["spec_id"], epoch=self.current_epoch)
        self.log("train_loss", loss, on_step=False, on_epoch=True, batch_size=len(tags))
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        input_ids, tags = batch
        logits = self(input_ids)
        self.log("val_loss", self._loss(logits, tags), on_step=False, on_epoch=True, batch_size=len(tags))
        predicted = logits.argmax(dim=-1).cpu().numpy()
        truth = tags.cpu().numpy()
        self._val.extend(zip(truth, np.where(truth == IGNORE, IGNORE, predicted), strict=True))

    def on_validation_epoch_end(self) -> None:
        labels = self.hparams["labels"]
        truth = [token_spans(t, labels) for t, _ in self._val]
        guess = [token_spans(p, labels) for _, p in self._val]
        self._val.clear()
        metrics = span_metrics(truth, guess, self.hparams["entity_types"])
        for name in ("span_precision", "span_recall", "span_f1"):
            self.log(f"val_{name}", metrics[name])

    def configure_optimizers(self) -> Any:
        hparams = self.hparams
        optimizer = build_optimizer(hparams["optimizer"], self.parameters(), lr=hparams["lr"],
                                    weight_decay=hparams["weight_decay"], momentum=hparams["momentum"],
                                    spec_id=hparams["spec_id"])
        if hparams["scheduler"] == "none":
            return optimizer
        steps = math.ceil(len(self.trainer.datamodule.train_dataset) / self.trainer.datamodule.batch_size)
        return attach_scheduler(optimizer, hparams["scheduler"], lr=hparams["lr"], max_epochs=int(self.trainer.max_epochs),
                                steps_per_epoch=steps, spec_id=hparams["spec_id"])


class TaggedTextDataModule(L.LightningDataModule):
    def __init__(self, train: TensorDataset, validation: TensorDataset, batch_size: int, seed: int) -> None:
        super().__init__()
        self.train_dataset, self.val_dataset, self.batch_size, self.seed = train, validation, batch_size, seed

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_dataset, batch_size=self.batch_size, shuffle=True,
                          generator=torch.Generator().manual_seed(self.seed))

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_dataset, batch_size=max(self.batch_size, 256), shuffle=False)


@dataclass
class EntityTrainResult:
    model_dir: Path
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
    dictionary_entries: int
    stopped_early: bool
    train_seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "model_dir": str(self.model_dir)}


def _predict_tags(network: nn.Module, ids: torch.Tensor, batch_size: int = 256) -> np.ndarray:
    network.eval()
    with torch.no_grad():
        parts = [network(ids[i:i + batch_size]).argmax(dim=-1) for i in range(0, len(ids), batch_size)]
    return torch.cat(parts).numpy() if parts else np.zeros((0, ids.shape[1]), dtype=np.int64)


def evaluate_tagger(network: nn.Module, dictionary: DictionaryTagger, tokenizer: Any, rows: pd.DataFrame,
                    labels: Sequence[str], entity_types: Sequence[str], max_length: int) -> tuple[dict, dict]:
    """Exact token-span metrics of the network and of the dictionary on ``rows`` (text, entities_json)."""
    texts, spans = rows["text"].astype(str).tolist(), [parse_spans(v) for v in rows[SPANS_COLUMN]]
    ids, tags, offsets = encode_tagged(tokenizer, texts, spans, labels, max_length)
    truth = [token_spans(t, labels) for t in tags.numpy()]
    predicted = _predict_tags(network, ids)
    model = [token_spans(np.where(t == IGNORE, IGNORE, p), labels) for t, p in zip(tags.numpy(), predicted, strict=True)]
    baseline = [decode_bio(encode_bio(o, dictionary.tag(text))) for o, text in zip(offsets, texts, strict=True)]
    return span_metrics(truth, model, entity_types), span_metrics(truth, baseline, entity_types)


def train_entity_tagger(frame: pd.DataFrame, tokenizer: Any, entity_types: Sequence[str], config: TextTrainConfig,
                        output_dir: str | Path, on_epoch_metrics: EpochMetricsCallback | None = None, *,
                        spec_id: str = "", dataset_version: str | None = None) -> EntityTrainResult:
    """Train on split=train, keep the best validation span F1, evaluate on test against the dictionary."""
    started = time.perf_counter()
    output_dir = Path(output_dir)
    checkpoint_dir, model_dir = output_dir / "checkpoints", output_dir / "model"
    for owned in (checkpoint_dir, model_dir):
        if owned.exists():
            shutil.rmtree(owned)
    labels, entity_types = bio_labels(entity_types), list(entity_types)
    L.seed_everything(config.seed, workers=True, verbose=False)
    parts = {s: frame[frame["split"] == s] for s in ("train", "validation", "test")}
    if len(parts["train"]) == 0 or len(parts["validation"]) == 0:
        raise ValueError(f"spec {spec_id}: need train and validation rows; got {len(parts['train'])} and "
                         f"{len(parts['validation'])}")
    tensors = {s: encode_tagged(tokenizer, rows["text"].astype(str).tolist(),
                                [parse_spans(v) for v in rows[SPANS_COLUMN]], labels, config.max_length)
               for s, rows in parts.items() if s != "test"}
    data = TaggedTextDataModule(TensorDataset(*tensors["train"][:2]), TensorDataset(*tensors["validation"][:2]),
                                config.batch_size, config.seed)
    network = TransformerTokenTagger(config.encoder(tokenizer.get_vocab_size(), len(labels)))
    check_tokenizer_matches(tokenizer, network.vocab_size, spec_id=spec_id)
    system = TokenTaggingSystem(network, labels, entity_types, optimizer=config.optimizer, scheduler=config.scheduler,
                                lr=config.lr, weight_decay=config.weight_decay, momentum=config.momentum,
                                token_dropout=config.token_dropout, spec_id=spec_id)
    history = EpochHistory(on_epoch_metrics)
    checkpoint = ModelCheckpoint(dirpath=checkpoint_dir, filename="best", monitor=MONITOR, mode=MONITOR_MODE,
                                 save_top_k=1, enable_version_counter=False)
    stopping = EarlyStopping(monitor=MONITOR, mode=MONITOR_MODE, patience=config.early_stopping_patience,
                             min_delta=config.early_stopping_min_delta)
    hardware = HardwareSettings.from_mapping(config.hardware, spec_id=spec_id)
    with quiet_lightning(), cpu_threads(config.cpu_threads):
        trainer = L.Trainer(**hardware.trainer_kwargs(), max_epochs=config.max_epochs,
                            callbacks=[history, checkpoint, stopping], logger=False, enable_progress_bar=False,
                            enable_model_summary=False, num_sanity_val_steps=0, default_root_dir=output_dir)
        trainer.fit(system, datamodule=data)
    if not checkpoint.best_model_path:
        raise RuntimeError(f"spec {spec_id}: no checkpoint was saved: the validation span F1 was never finite")
    state = torch.load(checkpoint.best_model_path, map_location="cpu", weights_only=True)
    network.load_state_dict({k.removeprefix("network."): v for k, v in state["state_dict"].items()
                             if k.startswith("network.")})
    network.cpu().eval()  # evaluated and saved on the CPU, wherever it trained
    train = parts["train"]
    dictionary = DictionaryTagger(train["text"].astype(str).tolist(), [parse_spans(v) for v in train[SPANS_COLUMN]])
    val, _ = evaluate_tagger(network, dictionary, tokenizer, parts["validation"], labels, entity_types, config.max_length)
    with torch.no_grad():
        val_ids, val_tags = tensors["validation"][:2]
        logits = network(val_ids)
        val_loss = float(nn.functional.cross_entropy(logits.reshape(-1, len(labels)),
                                                     val_tags[:, : logits.shape[1]].reshape(-1), ignore_index=IGNORE))
    test, baseline = evaluate_tagger(network, dictionary, tokenizer, parts["test"], labels, entity_types,
                                     config.max_length)
    model_dir.mkdir(parents=True, exist_ok=True)
    weights = model_dir / NETWORK_WEIGHTS_FILENAME
    torch.save(network.state_dict(), weights)
    (model_dir / TOKENIZER_FILE).write_text(tokenizer.to_str(pretty=False))
    epochs_run = len(history.history)
    (model_dir / MODEL_SPEC_FILENAME).write_text(json.dumps({
        "format_version": 1, "task": ENTITY_TAGGER_TASK, "spec_id": spec_id, "labels": labels,
        "entity_types": entity_types, "network": network.config.as_dict(),
        "network_class": f"{TransformerTokenTagger.__module__}.{TransformerTokenTagger.__qualname__}",
        "train_config": config.to_dict(), "dataset_version": dataset_version, "best_epoch": int(state["epoch"]),
        "files": {"network_weights": NETWORK_WEIGHTS_FILENAME, "tokenizer": TOKENIZER_FILE},
        "sha256": {"network_weights": sha256_file(weights), "tokenizer": tokenizer_sha256(tokenizer)},
    }, indent=2, sort_keys=True) + "\n")
    return EntityTrainResult(
        model_dir=model_dir, best_epoch=int(state["epoch"]), epochs_run=epochs_run, history=history.history,
        val_metrics={"val_loss": val_loss, **{f"val_{k}": v for k, v in val.items()}},
        test_metrics={f"test_{k}": v for k, v in test.items()},
        baseline_metrics={f"baseline_test_{k}": v for k, v in baseline.items()},
        n_train=len(train), n_val=len(parts["validation"]), n_test=len(parts["test"]),
        parameters=count_parameters(network), dictionary_entries=len(dictionary),
        stopped_early=epochs_run < config.max_epochs, train_seconds=time.perf_counter() - started)


class EntityTaggerPredictor:
    """Texts in, character spans (start, end, type, surface) out, exactly as trained."""

    def __init__(self, network: TransformerTokenTagger, tokenizer: Any, spec: dict[str, Any]) -> None:
        self.network, self.tokenizer, self.spec = network.eval(), tokenizer, spec

    @classmethod
    def load(cls, model_dir: str | Path) -> EntityTaggerPredictor:
        model_dir = Path(model_dir)
        spec = json.loads((model_dir / MODEL_SPEC_FILENAME).read_text())
        if spec.get("task") != ENTITY_TAGGER_TASK:
            raise ValueError(f"{model_dir} does not hold an entity tagger")
        weights = model_dir / spec["files"]["network_weights"]
        if sha256_file(weights) != spec["sha256"]["network_weights"]:
            raise ValueError(f"{weights} does not match the SHA-256 in {MODEL_SPEC_FILENAME}")
        network = TransformerTokenTagger(EncoderConfig(**spec["network"]))
        network.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        tokenizer = load_tokenizer(model_dir / TOKENIZER_FILE)
        check_tokenizer_matches(tokenizer, network.vocab_size, spec_id=spec.get("spec_id", ""),
                                expected_sha256=spec["sha256"].get("tokenizer"), where=str(model_dir))
        return cls(network, tokenizer, spec)

    def entities(self, texts: Sequence[str]) -> list[list[dict[str, Any]]]:
        labels = self.spec["labels"]
        ids, tags, offsets = encode_tagged(self.tokenizer, texts, None, labels, int(self.spec["network"]["max_length"]))
        predicted = _predict_tags(self.network, ids) if len(texts) else np.zeros((0, 0), dtype=np.int64)
        out = []
        for text, where, row in zip(texts, offsets, predicted, strict=True):
            spans = decode_bio([labels[int(t)] for t in row[: len(where)]])
            out.append([{"start": where[a][0], "end": where[b - 1][1], "type": k, "text": text[where[a][0]:where[b - 1][1]]}
                        for a, b, k in spans])
        return out
