"""Lightning training systems of the imaging models: loss, optimiser, per-epoch validation metrics.

The networks come from ``networks`` and the batches from ``data``; a system
knows neither where the images came from nor which MONAI network it holds.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import numpy as np
import torch
from torch import nn

from medllm_pipelines.lib.train.imaging.images import IMAGE_KEY, MASK_KEY, PRESENCE_KEY, segmentation_metrics
from medllm_pipelines.lib.train.optim import check_finite_loss, lightning_optimizers


class _ImagingSystem(L.LightningModule):
    """What both systems share: the spec's optimiser and schedule (lib/train/optim.py)."""

    def __init__(self, network: nn.Module, *, optimizer: str, lr: float, weight_decay: float, momentum: float,
                 scheduler: str, scheduler_options: dict[str, Any] | None, spec_id: str) -> None:
        super().__init__()
        self.network = network
        self.optimizer_name = optimizer
        self.lr = float(lr)
        self.weight_decay = float(weight_decay)
        self.momentum = float(momentum)
        self.scheduler_name = scheduler
        self.scheduler_options = dict(scheduler_options or {})
        self.spec_id = spec_id

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.network(images)

    def configure_optimizers(self) -> dict[str, Any]:
        steps = 1
        if self.scheduler_name == "onecycle":
            steps = max(int(self.trainer.num_training_batches), 1)
        return lightning_optimizers(self.optimizer_name, self.parameters(), lr=self.lr, weight_decay=self.weight_decay,
                                    momentum=self.momentum, scheduler=self.scheduler_name,
                                    max_epochs=int(self.trainer.max_epochs or 1), steps_per_epoch=steps,
                                    spec_id=self.spec_id, scheduler_options=self.scheduler_options)


class LesionSegmentationSystem(_ImagingSystem):
    """Dice + cross-entropy on crops; validation on whole slices by sliding-window inference.

    ``val_loss`` is DiceCE on the whole slices; ``val_dice`` and ``val_iou``
    are the means over validation slices with a lesion (images.segmentation_metrics).
    """

    def __init__(self, network: nn.Module, *, roi_size: int, sw_batch_size: int = 4, sw_overlap: float = 0.25,
                 **optimisation: Any) -> None:
        super().__init__(network, **optimisation)
        from monai.losses import DiceCELoss

        self.loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
        self.roi_size = (int(roi_size), int(roi_size))
        self.sw_batch_size = int(sw_batch_size)
        self.sw_overlap = float(sw_overlap)
        self._predicted: list[np.ndarray] = []
        self._truth: list[np.ndarray] = []

    def infer(self, images: torch.Tensor) -> torch.Tensor:
        """Logits of whole slices of any size, window by window (monai.inferers.sliding_window_inference)."""
        from monai.inferers import sliding_window_inference

        return sliding_window_inference(images, self.roi_size, self.sw_batch_size, self.network,
                                        overlap=self.sw_overlap, mode="gaussian")

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self.loss_fn(self(batch[IMAGE_KEY]), batch[MASK_KEY])
        check_finite_loss(loss, spec_id=self.spec_id, epoch=self.current_epoch)
        self.log("train_loss", loss, on_step=False, on_epoch=True, batch_size=len(batch[IMAGE_KEY]))
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        logits = self.infer(batch[IMAGE_KEY])
        self.log("val_loss", self.loss_fn(logits, batch[MASK_KEY]), on_step=False, on_epoch=True,
                 batch_size=len(batch[IMAGE_KEY]))
        self._predicted.extend(logits.argmax(dim=1).cpu().numpy().astype(bool))
        self._truth.extend(batch[MASK_KEY][:, 0].cpu().numpy().astype(bool))

    def on_validation_epoch_end(self) -> None:
        scores = segmentation_metrics(self._predicted, self._truth)
        self._predicted.clear()
        self._truth.clear()
        self.log("val_dice", scores["dice"])
        self.log("val_iou", scores["iou"])


class LesionClassificationSystem(_ImagingSystem):
    """Binary cross-entropy on the presence label; ``val_roc_auc`` and ``val_accuracy`` each epoch."""

    def __init__(self, network: nn.Module, *, pos_weight: float | None = None, **optimisation: Any) -> None:
        super().__init__(network, **optimisation)
        weight = None if pos_weight is None else torch.tensor(float(pos_weight))
        self.loss_fn = nn.BCEWithLogitsLoss(pos_weight=weight)
        self._scores: list[np.ndarray] = []
        self._labels: list[np.ndarray] = []

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.network(images).reshape(-1)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self.loss_fn(self(batch[IMAGE_KEY]), batch[PRESENCE_KEY].float())
        check_finite_loss(loss, spec_id=self.spec_id, epoch=self.current_epoch)
        self.log("train_loss", loss, on_step=False, on_epoch=True, batch_size=len(batch[IMAGE_KEY]))
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        logits = self(batch[IMAGE_KEY])
        labels = batch[PRESENCE_KEY].float()
        self.log("val_loss", self.loss_fn(logits, labels), on_step=False, on_epoch=True, batch_size=len(labels))
        self._scores.append(torch.sigmoid(logits).detach().cpu().numpy())
        self._labels.append(labels.cpu().numpy())

    def on_validation_epoch_end(self) -> None:
        from sklearn.metrics import roc_auc_score

        scores, labels = np.concatenate(self._scores), np.concatenate(self._labels)
        self._scores.clear()
        self._labels.clear()
        auc = float(roc_auc_score(labels, scores)) if len(np.unique(labels)) == 2 else float("nan")
        self.log("val_roc_auc", auc)
        self.log("val_accuracy", float(np.mean((scores >= 0.5) == (labels >= 0.5))))
