"""The training system of the text classifier: loss, optimiser, augmentation and per-epoch metrics.

Any network that maps (batch, length) token ids to (batch, classes) logits
trains here; the network itself is in ``networks.py``, the data in ``data.py``.
"""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import nn

from medllm_pipelines.lib.train.optim import attach_scheduler, build_optimizer, check_finite_loss
from medllm_pipelines.lib.train.text.networks import PAD_ID

UNK_ID = 1


def classification_metrics(logits: np.ndarray, labels: np.ndarray, top_k: int = 3) -> dict[str, float]:
    """Accuracy, macro-F1 (over the classes present in truth or prediction) and top-k accuracy."""
    from sklearn.metrics import f1_score

    if len(labels) == 0:
        return {"accuracy": float("nan"), "macro_f1": float("nan"), f"top{top_k}_accuracy": float("nan")}
    predicted = logits.argmax(axis=1)
    present = np.union1d(labels, predicted)
    k = min(top_k, logits.shape[1])
    top = np.argsort(-logits, axis=1, kind="stable")[:, :k]
    return {
        "accuracy": float((predicted == labels).mean()),
        "macro_f1": float(f1_score(labels, predicted, labels=present, average="macro", zero_division=0)),
        f"top{top_k}_accuracy": float((top == labels[:, None]).any(axis=1).mean()),
    }


def majority_class_metrics(train_labels: np.ndarray, labels: np.ndarray, n_classes: int) -> dict[str, float]:
    """The majority-class baseline: always the most frequent training class (ranked by training frequency)."""
    counts = np.bincount(train_labels, minlength=n_classes).astype(float)
    ranking = counts + np.linspace(0, 1e-3, n_classes)[::-1]  # ties: the lower index ranks first
    return classification_metrics(np.tile(ranking, (len(labels), 1)), labels)


class TextClassificationSystem(L.LightningModule):
    """Cross-entropy (with label smoothing) on token ids; token dropout in training; val metrics per epoch."""

    def __init__(self, network: nn.Module, *, optimizer: str = "adamw", scheduler: str = "none", lr: float = 1e-3,
                 weight_decay: float = 0.0, momentum: float = 0.9, label_smoothing: float = 0.0,
                 token_dropout: float = 0.0, spec_id: str = "") -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["network"])
        self.network = network
        self.loss_fn = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
        self._val_logits: list[torch.Tensor] = []
        self._val_labels: list[torch.Tensor] = []

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.network(input_ids)

    def _drop_tokens(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Replace a share of real tokens by [UNK]: the model must not hang on one word it may not see again."""
        rate = float(self.hparams["token_dropout"])
        if rate <= 0:
            return input_ids
        drop = (torch.rand(input_ids.shape) < rate) & (input_ids != PAD_ID)
        return input_ids.masked_fill(drop, UNK_ID)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        input_ids, labels = batch
        loss = self.loss_fn(self(self._drop_tokens(input_ids)), labels)
        check_finite_loss(loss, spec_id=self.hparams["spec_id"], epoch=self.current_epoch)
        self.log("train_loss", loss, on_step=False, on_epoch=True, batch_size=len(labels))
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        input_ids, labels = batch
        logits = self(input_ids)
        self.log("val_loss", self.loss_fn(logits, labels), on_step=False, on_epoch=True, batch_size=len(labels))
        self._val_logits.append(logits.detach().cpu())
        self._val_labels.append(labels.detach().cpu())

    def on_validation_epoch_end(self) -> None:
        logits = torch.cat(self._val_logits).float().numpy()
        labels = torch.cat(self._val_labels).numpy()
        self._val_logits.clear()
        self._val_labels.clear()
        for name, value in classification_metrics(logits, labels).items():
            self.log(f"val_{name}", value)

    def configure_optimizers(self) -> Any:
        """The spec's optimiser and schedule (lib/train/optim.py), the same names as every other model."""
        hparams = self.hparams
        optimizer = build_optimizer(hparams["optimizer"], self.parameters(), lr=hparams["lr"],
                                    weight_decay=hparams["weight_decay"], momentum=hparams["momentum"],
                                    spec_id=hparams["spec_id"])
        if hparams["scheduler"] == "none":
            return optimizer
        data = self.trainer.datamodule
        steps_per_epoch = math.ceil(len(data.train_dataset) / data.batch_size)
        return attach_scheduler(optimizer, hparams["scheduler"], lr=hparams["lr"], max_epochs=int(self.trainer.max_epochs),
                                steps_per_epoch=steps_per_epoch, spec_id=hparams["spec_id"])
