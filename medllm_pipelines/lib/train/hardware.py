"""Where and how a training runs: accelerator, devices, nodes, strategy, precision, compilation (issue 11 item 8).

A spec's ``training:`` block (or its ``full:`` overrides) may hold a ``hardware:`` mapping::

    hardware: {accelerator: auto, devices: auto, num_nodes: 1, strategy: auto, precision: auto, compile: false}

so that the same code trains on this laptop's CPU, one GPU, several GPUs (``strategy: ddp`` or ``fsdp``) or
several nodes (``num_nodes``; launched by torchrun or a Kubernetes job, see docs/training.md) without a change.
``precision: auto`` is ``bf16-mixed`` on a GPU that supports bfloat16 and ``32-true`` elsewhere. Runs on the CPU
are deterministic (``deterministic=True``, seeded); on a GPU Lightning is asked to warn about non-deterministic
kernels rather than fail, since several fused kernels have no deterministic version.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from medllm_pipelines.lib.train.optim import check_component

ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps")
STRATEGIES = ("auto", "ddp", "ddp_spawn", "ddp_find_unused_parameters_true", "fsdp", "deepspeed")
PRECISIONS = ("auto", "32-true", "bf16-mixed", "bf16-true", "16-mixed", "64-true")
HARDWARE_KEYS = ("accelerator", "devices", "num_nodes", "strategy", "precision", "compile")


def gpu_available() -> bool:
    import torch

    return bool(torch.cuda.is_available())


@dataclass(frozen=True)
class HardwareSettings:
    """A spec's ``hardware:`` mapping, checked; ``trainer_kwargs`` resolves ``auto`` on the machine it runs on."""

    accelerator: str = "auto"
    devices: int | str = "auto"
    num_nodes: int = 1
    strategy: str = "auto"
    precision: str = "auto"
    compile: bool = False

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any] | None, *, spec_id: str = "") -> HardwareSettings:
        values = dict(values or {})
        unknown = sorted(set(values) - set(HARDWARE_KEYS))
        if unknown:
            raise ValueError(f"spec {spec_id}: unknown hardware keys {unknown}; known: {list(HARDWARE_KEYS)}")
        settings = cls(**values)
        check_component("accelerator", settings.accelerator, ACCELERATORS, spec_id)
        check_component("strategy", settings.strategy, STRATEGIES, spec_id)
        check_component("precision", settings.precision, PRECISIONS, spec_id)
        devices_ok = settings.devices == "auto" or (isinstance(settings.devices, int) and settings.devices >= 1)
        if not devices_ok or not isinstance(settings.num_nodes, int) or settings.num_nodes < 1:
            raise ValueError(f"spec {spec_id}: hardware devices must be 'auto' or >= 1 and num_nodes >= 1")
        if not isinstance(settings.compile, bool):
            raise ValueError(f"spec {spec_id}: hardware compile must be true or false")
        return settings

    def on_gpu(self) -> bool:
        if self.accelerator in ("gpu", "cuda"):
            return True
        return self.accelerator == "auto" and gpu_available()

    def resolved_precision(self) -> str:
        if self.precision != "auto":
            return self.precision
        import torch

        return "bf16-mixed" if self.on_gpu() and torch.cuda.is_bf16_supported() else "32-true"

    def trainer_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``lightning.Trainer``: placement, scale, precision and determinism."""
        gpu = self.on_gpu()
        return {
            "accelerator": "gpu" if gpu else ("cpu" if self.accelerator == "auto" else self.accelerator),
            "devices": (1 if self.devices == "auto" and not gpu else self.devices),
            "num_nodes": self.num_nodes,
            "strategy": self.strategy,
            "precision": self.resolved_precision(),
            "deterministic": "warn" if gpu else True,
        }

    def as_params(self) -> dict[str, Any]:
        """What the MLflow run records: the declared settings and what they resolved to here."""
        resolved = self.trainer_kwargs()
        return {**{f"hardware_{k}": v for k, v in asdict(self).items()},
                "resolved_accelerator": resolved["accelerator"], "resolved_precision": resolved["precision"]}


def maybe_compile(module: Any, settings: HardwareSettings) -> Any:
    """``torch.compile(module)`` when the spec asks for it; the module itself otherwise."""
    if not settings.compile:
        return module
    import torch

    return torch.compile(module)
