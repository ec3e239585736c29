"""Optional DP-SGD (Opacus): per-sample gradient clipping and Gaussian noise, with an RDP accountant.

Chosen over a hand-written DP-SGD because Opacus is the maintained reference
implementation (per-sample gradients by hooks, Poisson sampling, accountants)
and its validators already know which layers cannot be trained privately.

Usage is through :class:`~medllm_pipelines.lib.train.tabular.TrainConfig`
(``dp_target_epsilon`` set): the training system calls :func:`make_private` in
``configure_optimizers`` and the data module samples batches by Poisson
sampling, the assumption the accountant's epsilon rests on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import nn
from torch.utils.data import DataLoader

ACCOUNTANT = "rdp"


class DPPreflightError(ValueError):
    """The network holds layers DP-SGD cannot train; the message names each one and the fix."""


@dataclass(frozen=True)
class DPPreflight:
    """Which layers DP-SGD cannot train as they are (BatchNorm mixes samples; nn.LSTM needs DPLSTM, ...)."""

    unsupported: tuple[tuple[str, str, str], ...]  # (layer path, layer type, why)
    fixable: bool

    @property
    def ok(self) -> bool:
        return not self.unsupported

    def explain(self) -> str:
        lines = [f"{path or '<root>'} ({kind}): {why}" for path, kind, why in self.unsupported]
        hint = " Opacus' ModuleValidator.fix can replace them (BatchNorm -> GroupNorm, LSTM -> DPLSTM)." \
            if self.fixable else ""
        return "DP-SGD cannot train these layers: " + "; ".join(lines) + "." + hint

    def as_metadata(self) -> dict[str, Any]:
        return {"ok": self.ok, "unsupported": [list(u) for u in self.unsupported], "fixable": self.fixable}


def dp_preflight(network: nn.Module) -> DPPreflight:
    """Check every layer of ``network`` against Opacus' validators, naming the layer path of each problem."""
    from opacus.validators import ModuleValidator

    problems: list[tuple[str, str, str]] = []
    fixable = True
    for path, module in network.named_modules():
        validator = ModuleValidator.VALIDATORS.get(type(module))
        if validator is None:
            continue
        for error in validator(module):
            first_sentence = str(error).split(". ")[0].strip().rstrip(".")
            problems.append((path, type(module).__name__, first_sentence))
            fixable = fixable and type(module) in ModuleValidator.FIXERS
    return DPPreflight(tuple(problems), fixable and bool(problems))


def require_dp_trainable(network: nn.Module) -> None:
    preflight = dp_preflight(network)
    if not preflight.ok:
        raise DPPreflightError(preflight.explain())


@dataclass
class PrivateTraining:
    """The privacy engine of one training run and what it has spent."""

    target_epsilon: float
    delta: float
    max_grad_norm: float
    engine: Any = None
    noise_multiplier: float | None = None
    sample_rate: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def make_private(self, module: nn.Module, optimizer: Any, data_loader: DataLoader, epochs: int) -> Any:
        """Wrap ``optimizer`` for DP-SGD over ``module`` (hooks only: parameter names stay as they are)."""
        from opacus import PrivacyEngine

        require_dp_trainable(module)
        self.engine = PrivacyEngine(accountant=ACCOUNTANT)
        _, private_optimizer, private_loader = self.engine.make_private_with_epsilon(
            module=module,
            optimizer=optimizer,
            data_loader=data_loader,
            target_epsilon=self.target_epsilon,
            target_delta=self.delta,
            epochs=epochs,
            max_grad_norm=self.max_grad_norm,
            poisson_sampling=True,
            wrap_model=False,
        )
        self.noise_multiplier = float(private_optimizer.noise_multiplier)
        self.sample_rate = 1.0 / len(private_loader)
        return private_optimizer

    def epsilon_spent(self) -> float:
        if self.engine is None:
            return 0.0
        return float(self.engine.get_epsilon(self.delta))

    def report(self) -> dict[str, Any]:
        """What the MLflow run and the model spec record: the guarantee actually obtained."""
        return {
            "mechanism": "DP-SGD (Opacus, per-sample clipping + Gaussian noise, Poisson sampling)",
            "accountant": ACCOUNTANT,
            "target_epsilon": self.target_epsilon,
            "epsilon_spent": round(self.epsilon_spent(), 6),
            "delta": self.delta,
            "max_grad_norm": self.max_grad_norm,
            "noise_multiplier": self.noise_multiplier,
            "sample_rate": self.sample_rate,
        }


def poisson_loader(data_loader: DataLoader, seed: int) -> DataLoader:
    """The same dataset sampled as DP-SGD's accountant assumes (each row independently, rate 1/len(loader))."""
    import torch
    from opacus.data_loader import DPDataLoader

    return DPDataLoader.from_data_loader(data_loader, generator=torch.Generator().manual_seed(seed))
