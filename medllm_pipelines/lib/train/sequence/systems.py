"""The training system of the early-warning network: weighted binary cross-entropy, ROC-AUC per epoch."""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import nn

from medllm_pipelines.lib.train.optim import attach_scheduler, build_optimizer, check_finite_loss


def binary_metrics(scores: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """ROC-AUC, average precision and Brier score (scores are probabilities); NaN where a class is absent."""
    from sklearn.metrics import average_precision_score, brier_score_loss, roc_auc_score

    labels = np.asarray(labels).astype(int)
    if len(labels) == 0 or labels.min() == labels.max():
        return {"roc_auc": float("nan"), "average_precision": float("nan"), "brier": float("nan")}
    return {"roc_auc": float(roc_auc_score(labels, scores)),
            "average_precision": float(average_precision_score(labels, scores)),
            "brier": float(brier_score_loss(labels, np.clip(scores, 0, 1)))}


class DeteriorationSystem(L.LightningModule):
    """BCE with logits (positive windows weighted), the spec's optimiser and schedule, val metrics per epoch."""

    def __init__(self, network: nn.Module, *, optimizer: str = "adam", scheduler: str = "none", lr: float = 1e-3,
                 weight_decay: float = 0.0, momentum: float = 0.9, pos_weight: float = 1.0, spec_id: str = "") -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["network"])
        self.network = network
        self.loss_fn = nn.BCEWithLogitsLoss(pos_weight=torch.tensor(float(pos_weight)))
        self._val: list[tuple[torch.Tensor, torch.Tensor]] = []

    def forward(self, windows: torch.Tensor) -> torch.Tensor:
        return self.network(windows)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        windows, labels = batch
        loss = self.loss_fn(self(windows), labels)
        check_finite_loss(loss, spec_id=self.hparams["spec_id"], epoch=self.current_epoch)
        self.log("train_loss", loss, on_step=False, on_epoch=True, batch_size=len(labels))
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        windows, labels = batch
        logits = self(windows)
        self.log("val_loss", self.loss_fn(logits, labels), on_step=False, on_epoch=True, batch_size=len(labels))
        self._val.append((logits.detach().cpu(), labels.detach().cpu()))

    def on_validation_epoch_end(self) -> None:
        logits = torch.cat([v[0] for v in self._val]).float()
        labels = torch.cat([v[1] for v in self._val]).numpy()
        self._val.clear()
        for name, value in binary_metrics(torch.sigmoid(logits).numpy(), labels).items():
            if not math.isnan(value):
                self.log(f"val_{name}", value)

    def configure_optimizers(self) -> Any:
        hparams = self.hparams
        optimizer = build_optimizer(hparams["optimizer"], self.parameters(), lr=hparams["lr"],
                                    weight_decay=hparams["weight_decay"], momentum=hparams["momentum"],
                                    spec_id=hparams["spec_id"])
        if hparams["scheduler"] == "none":
            return optimizer
        data = self.trainer.datamodule
        steps_per_epoch = math.ceil(len(data.train_dataset) / data.batch_size)
        return attach_scheduler(optimizer, hparams["scheduler"], lr=hparams["lr"],
                                max_epochs=int(self.trainer.max_epochs), steps_per_epoch=steps_per_epoch,
                                spec_id=hparams["spec_id"])


def regression_metrics(predicted: np.ndarray, target: np.ndarray) -> dict[str, float]:
    """MSE, MAE, RMSE and R^2 (scikit-learn); NaN for fewer than two targets."""
    from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

    if len(target) < 2:
        return {"mse": float("nan"), "mae": float("nan"), "rmse": float("nan"), "r2": float("nan")}
    mse = float(mean_squared_error(target, predicted))
    return {"mse": mse, "mae": float(mean_absolute_error(target, predicted)), "rmse": math.sqrt(mse),
            "r2": float(r2_score(target, predicted))}


class ForecastSystem(DeteriorationSystem):
    """Next-value regression: MSE on the target standardised with the training split's mean and deviation."""

    def __init__(self, network: nn.Module, *, target_mean: float, target_scale: float, optimizer: str = "adam",
                 scheduler: str = "none", lr: float = 1e-3, weight_decay: float = 0.0, momentum: float = 0.9,
                 spec_id: str = "") -> None:
        super().__init__(network, optimizer=optimizer, scheduler=scheduler, lr=lr, weight_decay=weight_decay,
                         momentum=momentum, spec_id=spec_id)
        self.save_hyperparameters(ignore=["network"])
        self.loss_fn = nn.MSELoss()

    def _standard(self, target: torch.Tensor) -> torch.Tensor:
        return (target - self.hparams["target_mean"]) / self.hparams["target_scale"]

    def predict_values(self, windows: torch.Tensor) -> torch.Tensor:
        return self(windows) * self.hparams["target_scale"] + self.hparams["target_mean"]

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        windows, target = batch
        loss = self.loss_fn(self(windows), self._standard(target))
        check_finite_loss(loss, spec_id=self.hparams["spec_id"], epoch=self.current_epoch)
        self.log("train_loss", loss, on_step=False, on_epoch=True, batch_size=len(target))
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        windows, target = batch
        output = self(windows)
        self.log("val_loss", self.loss_fn(output, self._standard(target)), on_step=False, on_epoch=True,
                 batch_size=len(target))
        self._val.append((self.predict_values(windows).detach().cpu(), target.detach().cpu()))

    def on_validation_epoch_end(self) -> None:
        predicted = torch.cat([v[0] for v in self._val]).float().numpy()
        target = torch.cat([v[1] for v in self._val]).numpy()
        self._val.clear()
        for name, value in regression_metrics(predicted, target).items():
            if not math.isnan(value):
                self.log(f"val_{name}", value)
