"""Optimisers and learning-rate schedules a spec chooses by name (clause 5.2.4, row M10).

Every training system (tabular, imaging, sequence, text) builds its optimiser
here, so that a spec's ``training.optimizer`` and ``training.scheduler`` mean
the same thing for every model, and an unknown name fails the same way, before
any MLflow run is opened (``check_component``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch

OPTIMIZER_NAMES = ("adam", "adamw", "rmsprop", "adagrad", "sgd")
SCHEDULER_NAMES = ("none", "cosine", "step", "plateau", "onecycle")
# The metric the plateau schedule watches; every training system logs it each epoch.
PLATEAU_MONITOR = "val_loss"


class UnknownComponentError(ValueError):
    """A spec names a network, optimiser, scheduler or sampler this platform does not have."""

    def __init__(self, spec_id: str, kind: str, name: object, choices: Iterable[str]) -> None:
        self.spec_id = spec_id
        self.kind = kind
        self.name = name
        self.choices = tuple(choices)
        where = f"spec {spec_id}" if spec_id else "training configuration"
        super().__init__(f"{where}: unknown {kind} {name!r}; choose one of {', '.join(self.choices)}")


class TrainingDivergedError(FloatingPointError):
    """The training loss became NaN or infinite: the message names the spec and the epoch."""

    def __init__(self, spec_id: str, epoch: int, value: float) -> None:
        self.spec_id = spec_id
        self.epoch = epoch
        where = f"spec {spec_id}" if spec_id else "training"
        super().__init__(
            f"{where}: training loss became {value} at epoch {epoch}; lower the learning rate or check the inputs "
            "for non-finite values (nothing was registered)"
        )


def check_finite_loss(loss: torch.Tensor, *, spec_id: str, epoch: int) -> None:
    """Raise TrainingDivergedError when ``loss`` is NaN or infinite: call it in every ``training_step``."""
    if not bool(torch.isfinite(loss.detach()).all()):
        raise TrainingDivergedError(spec_id, int(epoch), float(loss.detach().float().reshape(-1)[0]))


def check_component(kind: str, name: object, choices: Iterable[str], spec_id: str = "") -> str:
    """``name`` if it is one of ``choices``, else UnknownComponentError naming the spec, the kind and the choices."""
    choices = tuple(choices)
    if not isinstance(name, str) or name not in choices:
        raise UnknownComponentError(spec_id, kind, name, choices)
    return name


def build_optimizer(
    name: str,
    params: Iterable[Any],
    *,
    lr: float,
    weight_decay: float = 0.0,
    momentum: float = 0.9,
    spec_id: str = "",
) -> torch.optim.Optimizer:
    """The named optimiser over ``params``.

    ``weight_decay`` is torch's coupled L2 term for adam, rmsprop, adagrad and
    sgd, and the decoupled decay of AdamW (Loshchilov & Hutter) for adamw.
    ``momentum`` is used by sgd (heavy-ball) and rmsprop only when asked for
    there: rmsprop keeps torch's default of no momentum.
    """
    check_component("optimizer", name, OPTIMIZER_NAMES, spec_id)
    if lr <= 0:
        raise ValueError(f"spec {spec_id or '?'}: learning rate must be positive, got {lr}")
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    if name == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr, weight_decay=weight_decay)
    if name == "adagrad":
        return torch.optim.Adagrad(params, lr=lr, weight_decay=weight_decay)
    return torch.optim.SGD(params, lr=lr, weight_decay=weight_decay, momentum=momentum)


def attach_scheduler(
    optimizer: torch.optim.Optimizer,
    scheduler: str = "none",
    *,
    lr: float,
    max_epochs: int = 1,
    steps_per_epoch: int = 1,
    spec_id: str = "",
    options: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """What a LightningModule's ``configure_optimizers`` returns for ``optimizer`` with the named schedule.

    Separate from ``build_optimizer`` so that a wrapped optimiser (DP-SGD's)
    gets its schedule too. Schedules, with ``options`` overriding the defaults:

    - none: a constant learning rate.
    - cosine: cosine annealing per epoch from ``lr`` to ``eta_min`` (0) over ``max_epochs``.
    - step: multiply by ``gamma`` (0.1) every ``step_size`` epochs (a third of ``max_epochs``).
    - plateau: multiply by ``factor`` (0.5) after ``patience`` (3) epochs without a lower val_loss.
    - onecycle: one cycle per optimiser step over the whole run, peaking at ``lr``
      (``pct_start`` 0.3).
    """
    check_component("scheduler", scheduler, SCHEDULER_NAMES, spec_id)
    options = dict(options or {})
    max_epochs = max(int(max_epochs), 1)
    if scheduler == "none":
        return {"optimizer": optimizer}
    if scheduler == "cosine":
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=max_epochs, eta_min=float(options.get("eta_min", 0.0))
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "epoch"}}
    if scheduler == "step":
        step_size = int(options.get("step_size", max(max_epochs // 3, 1)))
        schedule = torch.optim.lr_scheduler.StepLR(optimizer, step_size=step_size, gamma=float(options.get("gamma", 0.1)))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "epoch"}}
    if scheduler == "plateau":
        schedule = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="min", factor=float(options.get("factor", 0.5)), patience=int(options.get("patience", 3))
        )
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": schedule, "interval": "epoch", "monitor": PLATEAU_MONITOR},
        }
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer,
        max_lr=lr,
        total_steps=max_epochs * max(int(steps_per_epoch), 1),
        pct_start=float(options.get("pct_start", 0.3)),
    )
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


def lightning_optimizers(
    name: str,
    params: Iterable[Any],
    *,
    lr: float,
    weight_decay: float = 0.0,
    momentum: float = 0.9,
    scheduler: str = "none",
    max_epochs: int = 1,
    steps_per_epoch: int = 1,
    spec_id: str = "",
    scheduler_options: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """``build_optimizer`` + ``attach_scheduler``: the dict a ``configure_optimizers`` returns."""
    check_component("scheduler", scheduler, SCHEDULER_NAMES, spec_id)  # both names checked before any tensor work
    optimizer = build_optimizer(name, params, lr=lr, weight_decay=weight_decay, momentum=momentum, spec_id=spec_id)
    return attach_scheduler(
        optimizer, scheduler, lr=lr, max_epochs=max_epochs, steps_per_epoch=steps_per_epoch, spec_id=spec_id,
        options=scheduler_options,
    )
