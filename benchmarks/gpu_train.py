"""Tokens/s and MFU of the note generator's training path (Lightning) against a plain PyTorch loop.

The same network (``lib/train/generative/network.GPT``, GPT-2 small: 124M
parameters, 1,024 context), the same batch, the same AdamW (fused on CUDA), bf16
autocast and ``torch.compile`` in both; only the loop differs:

1. ``plain``: forward, loss, backward, ``optimizer.step()``, ``zero_grad`` by hand.
2. ``lightning``: ``CausalLMSystem`` under ``lightning.Trainer(accelerator="auto", precision="bf16-mixed")``,
   the path the pipeline trains with.

Steps after ``--warmup`` (compilation, autotuning) are timed between CUDA
synchronisations. MFU = flops_per_token x tokens/s / peak (989 TFLOP/s dense
bf16 for H100 SXM and H200; ``--peak-tflops`` overrides). Anchor measured on an
H200 by the issue's author: the plain loop 448.6k tokens/s = 39.0% MFU.

    python benchmarks/gpu_train.py                         # on the lent GPU
    python benchmarks/gpu_train.py --device cpu --tiny --no-compile --steps 3   # smoke run on a laptop
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results"
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0}

from medllm_pipelines.lib.train.generative.network import GPT, GPTConfig, flops_per_token  # noqa: E402
from medllm_pipelines.lib.train.generative.system import (  # noqa: E402
    CausalLMSystem,
    CausalLMTraining,
    make_adamw,
    next_token_loss,
)


def _peak_tflops(device: torch.device, override: float | None) -> float | None:
    if override:
        return override
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_BF16_TFLOPS.items() if key in name), None)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _batches(config: GPTConfig, batch_size: int, device: torch.device, count: int = 4) -> list[tuple[torch.Tensor, ...]]:
    """A few fixed random batches already on the device: both loops read the same ones."""
    generator = torch.Generator().manual_seed(0)
    out = []
    for _ in range(count):
        tokens = torch.randint(0, config.vocab_size, (batch_size, config.block_size + 1), generator=generator)
        out.append((tokens[:, :-1].to(device), tokens[:, 1:].to(device)))
    return out


def run_plain(config: GPTConfig, batches: list, device: torch.device, warmup: int, steps: int, compile_model: bool) -> float:
    torch.manual_seed(0)
    model = GPT(config).to(device)
    forward = torch.compile(model) if compile_model else model
    optimizer = make_adamw(model, CausalLMTraining(max_steps=warmup + steps), device.type)
    dtype = torch.bfloat16
    start = 0.0
    for step in range(warmup + steps):
        if step == warmup:
            _sync(device)
            start = time.perf_counter()
        inputs, targets = batches[step % len(batches)]
        with torch.autocast(device_type=device.type, dtype=dtype):
            loss = next_token_loss(forward(inputs), targets)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    _sync(device)
    return time.perf_counter() - start


class _Timer:
    """Lightning callback: wall time of the steps after warm-up, between device synchronisations."""

    def __init__(self, warmup: int, device: torch.device) -> None:
        import lightning as L

        outer = self

        class Callback(L.Callback):
            def on_train_batch_start(self, trainer: Any, module: Any, batch: Any, batch_idx: int) -> None:
                if trainer.global_step == warmup and outer.start is None:
                    _sync(device)
                    outer.start = time.perf_counter()

            def on_train_end(self, trainer: Any, module: Any) -> None:
                _sync(device)
                outer.end = time.perf_counter()

        self.start: float | None = None
        self.end: float | None = None
        self.callback = Callback()


def run_lightning(config: GPTConfig, batches: list, device: torch.device, warmup: int, steps: int,
                  compile_model: bool) -> float:
    import lightning as L
    from torch.utils.data import DataLoader

    torch.manual_seed(0)
    system = CausalLMSystem(config, CausalLMTraining(max_steps=warmup + steps, compile=compile_model))
    timer = _Timer(warmup, device)
    cycled = [batches[i % len(batches)] for i in range(warmup + steps)]
    trainer = L.Trainer(
        accelerator="gpu" if device.type == "cuda" else "cpu", devices=1,
        precision="bf16-mixed", max_steps=warmup + steps, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0,
        callbacks=[timer.callback],
    )
    trainer.fit(system, train_dataloaders=DataLoader(cycled, batch_size=None))
    assert timer.start is not None and timer.end is not None
    return timer.end - timer.start


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--tiny", action="store_true", help="a 2-layer, 64-wide model with 64 tokens of context")
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--peak-tflops", type=float, default=None)
    parser.add_argument("--out", type=Path, default=None, help="JSON result (default benchmarks/results/gpu_train.json "
                        "on a GPU; nothing written on the CPU unless given)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    config = (GPTConfig(vocab_size=512, block_size=64, n_layer=2, n_head=2, n_embd=64) if args.tiny
              else GPTConfig.gpt2_small())
    parameters = GPT(config).num_parameters()
    per_token = flops_per_token(config, parameters)
    peak = _peak_tflops(device, args.peak_tflops)
    batches = _batches(config, args.batch_size, device)
    tokens = args.steps * args.batch_size * config.block_size
    result: dict[str, Any] = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__, "parameters": parameters, "config": config.as_dict(),
        "batch_size": args.batch_size, "timed_steps": args.steps, "warmup_steps": args.warmup,
        "compile": not args.no_compile, "precision": "bf16", "flops_per_token": per_token, "peak_tflops": peak,
        "anchor_plain_h200": {"tokens_per_s": 448_600, "mfu": 0.390},
    }
    for name, runner in (("plain", run_plain), ("lightning", run_lightning)):
        seconds = runner(config, batches, device, args.warmup, args.steps, not args.no_compile)
        rate = tokens / seconds
        result[name] = {"seconds": round(seconds, 4), "tokens_per_s": round(rate, 1),
                        "mfu": round(per_token * rate / (peak * 1e12), 4) if peak else None}
    result["lightning_over_plain"] = round(result["lightning"]["tokens_per_s"] / result["plain"]["tokens_per_s"], 3)
    print(json.dumps(result, indent=2))
    out = args.out or (RESULTS / "gpu_train.json" if device.type == "cuda" else None)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
