"""What every Lightning training here shares: per-epoch curves for the caller's hook, and a quiet Trainer."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import lightning as L
from lightning.pytorch.callbacks import Callback

EpochMetricsCallback = Callable[[dict[str, float], int], None]
LEAFSPEC_DEPRECATION = r".*isinstance\(treespec, LeafSpec\).*"


class EpochHistory(Callback):
    """Collects one dict of epoch-level metrics per epoch and forwards it to the caller's hook."""

    def __init__(self, on_epoch_metrics: EpochMetricsCallback | None) -> None:
        self.history: list[dict[str, float]] = []
        self.on_epoch_metrics = on_epoch_metrics
        self._epoch_lr: float | None = None

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Read here: epoch schedules have already stepped when on_train_epoch_end runs.
        self._epoch_lr = float(trainer.optimizers[0].param_groups[0]["lr"]) if trainer.optimizers else None

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Lightning runs the epoch's validation before this hook, so val metrics are current.
        metrics = {name: float(value) for name, value in trainer.callback_metrics.items()}
        if self._epoch_lr is not None:  # the rate this epoch started with: the schedule's curve
            metrics["lr"] = self._epoch_lr
        metrics["epoch"] = float(trainer.current_epoch)
        self.history.append(metrics)
        if self.on_epoch_metrics is not None:
            self.on_epoch_metrics({k: v for k, v in metrics.items() if k != "epoch"}, trainer.current_epoch)


RANK_ZERO_LOGGERS = ("lightning.pytorch.utilities.rank_zero", "pytorch_lightning.utilities.rank_zero")


@contextmanager
def quiet_lightning(*ignored_messages: str) -> Iterator[None]:
    """Silence Lightning's banners (accelerator info, a product tip with a URL), one upstream deprecation and
    ``ignored_messages`` (regular expressions); real warnings from Lightning still come through.

    Both namespaces: ``pytorch_lightning`` is installed beside ``lightning`` (opacus imports it) and logs the
    same banners under its own name.
    """
    loggers = [logging.getLogger(name) for name in RANK_ZERO_LOGGERS]
    previous_levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            for message in (LEAFSPEC_DEPRECATION, *ignored_messages):
                warnings.filterwarnings("ignore", message=message)
            yield
    finally:
        for logger, level in zip(loggers, previous_levels, strict=True):
            logger.setLevel(level)
