"""The causal language-model training system (Lightning), and the token-block data it reads.

``CausalLMSystem`` owns the loss, the optimiser and the schedule; the network
(``network.GPT``) knows nothing of training, and the data module knows nothing
of either (CONVENTIONS rule 7). Pretraining packs token streams into blocks of
``block_size + 1`` tokens (inputs and shifted targets); instruction tuning
masks the prompt tokens out of the loss with ``IGNORE_INDEX``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import lightning as L
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from medllm_pipelines.lib.train.generative.network import GPT, GPTConfig

IGNORE_INDEX = -100


@dataclass(frozen=True)
class CausalLMTraining:
    """What decides the trained weights besides the network shape."""

    lr: float = 3e-4
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    warmup_steps: int = 10
    max_steps: int = 200
    compile: bool = False

    def __post_init__(self) -> None:
        if self.lr <= 0 or self.max_steps < 1 or self.warmup_steps < 0 or not 0 <= self.min_lr_ratio <= 1:
            raise ValueError("CausalLMTraining: lr > 0, max_steps >= 1, warmup_steps >= 0, 0 <= min_lr_ratio <= 1")


def cosine_with_warmup(step: int, warmup_steps: int, max_steps: int, min_ratio: float) -> float:
    """Learning-rate multiplier: linear warm-up, then cosine decay to ``min_ratio`` at ``max_steps``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, max_steps - warmup_steps))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def decay_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on matrices (linear and embedding weights) only, never on norms or biases."""
    params = [p for p in model.parameters() if p.requires_grad]
    return [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]


def make_adamw(model: torch.nn.Module, training: CausalLMTraining, device_type: str) -> torch.optim.AdamW:
    """AdamW with decoupled decay groups; the fused CUDA kernel on a GPU (the plain benchmark loop uses the same)."""
    return torch.optim.AdamW(decay_groups(model, training.weight_decay), lr=training.lr, betas=training.betas,
                             fused=device_type == "cuda")


def instruction_example(prompt_ids: Sequence[int], response_ids: Sequence[int], *, bos_id: int | None,
                        eos_id: int, max_length: int) -> dict[str, list[int]]:
    """Ids and labels of one (prompt, response) pair: the prompt labelled IGNORE_INDEX, the response and EOS learned.

    When the pair is longer than ``max_length`` the prompt is cut from the left (the dialogue's end is kept next
    to the response), never the response unless it alone overflows: a truncated target teaches the model to stop
    mid-note.
    """
    head = [bos_id] if bos_id is not None else []
    response = [*response_ids, eos_id]
    if len(head) + len(response) >= max_length:
        response = response[:max(1, max_length - len(head) - 1)]
    room = max_length - len(head) - len(response)
    prompt = list(prompt_ids)[-room:] if room > 0 else []
    return {"input_ids": head + prompt + response, "labels": [IGNORE_INDEX] * (len(head) + len(prompt)) + response}


def next_token_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=IGNORE_INDEX)


class CausalLMSystem(L.LightningModule):
    """Next-token cross-entropy on (inputs, targets) batches; loss curves logged per step and per epoch."""

    def __init__(self, config: GPTConfig, training: CausalLMTraining | None = None) -> None:
        super().__init__()
        self.config = config
        self.training_config = training or CausalLMTraining()
        self.network = GPT(config)
        self.forward_network = torch.compile(self.network) if self.training_config.compile else self.network
        self.save_hyperparameters({"network": config.as_dict(), "training": vars(self.training_config)})

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.forward_network(tokens)

    def _loss(self, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        inputs, targets = batch
        loss = next_token_loss(self(inputs), targets)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"causal LM loss became {loss.item()} at step {self.global_step}")
        return loss

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self._loss(batch)
        self.log("train_loss", loss, on_step=True, on_epoch=True, prog_bar=False)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self.log("val_loss", self._loss(batch), on_epoch=True, prog_bar=False)

    def configure_optimizers(self) -> dict:
        device_type = "cuda" if self.device.type == "cuda" else "cpu"
        optimizer = make_adamw(self.network, self.training_config, device_type)
        t = self.training_config
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: cosine_with_warmup(step, t.warmup_steps, t.max_steps, t.min_lr_ratio))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


class TokenBlocks(Dataset):
    """A token stream cut into (inputs, targets) blocks of ``block_size`` (targets shifted by one token)."""

    def __init__(self, tokens: Sequence[int] | torch.Tensor, block_size: int) -> None:
        stream = torch.as_tensor(tokens, dtype=torch.long)
        if len(stream) < block_size + 1:
            raise ValueError(f"{len(stream)} tokens cannot fill one block of {block_size} + 1")
        self.stream = stream
        self.block_size = block_size
        self.count = (len(stream) - 1) // block_size

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        start = index * self.block_size
        chunk = self.stream[start:start + self.block_size + 1]
        return chunk[:-1], chunk[1:]


class TokenBlockDataModule(L.LightningDataModule):
    def __init__(self, train_tokens: Sequence[int] | torch.Tensor, val_tokens: Sequence[int] | torch.Tensor | None,
                 block_size: int, batch_size: int, seed: int = 0) -> None:
        super().__init__()
        self.train_blocks = TokenBlocks(train_tokens, block_size)
        self.val_blocks = TokenBlocks(val_tokens, block_size) if val_tokens is not None else None
        self.batch_size = batch_size
        self.seed = seed

    def train_dataloader(self) -> DataLoader:
        generator = torch.Generator().manual_seed(self.seed)
        return DataLoader(self.train_blocks, batch_size=self.batch_size, shuffle=True, drop_last=True,
                          generator=generator)

    def val_dataloader(self) -> DataLoader:
        if self.val_blocks is None:
            return DataLoader([])
        return DataLoader(self.val_blocks, batch_size=self.batch_size)


class InstructionExamples(Dataset):
    """Encoded (prompt, response) pairs (``instruction_example``) as (inputs, targets) for ``CausalLMSystem``."""

    def __init__(self, examples: Sequence[dict[str, list[int]]]) -> None:
        if not examples:
            raise ValueError("no instruction examples")
        self.examples = list(examples)

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        example = self.examples[index]
        ids, labels = example["input_ids"], example["labels"]
        return torch.tensor(ids[:-1], dtype=torch.long), torch.tensor(labels[1:], dtype=torch.long)


def pad_instruction_batch(batch: Sequence[tuple[torch.Tensor, torch.Tensor]], pad_id: int
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded (inputs, targets); padding is never a target (causal attention never looks right of a token)."""
    width = max(len(inputs) for inputs, _ in batch)
    inputs = torch.full((len(batch), width), pad_id, dtype=torch.long)
    targets = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
    for row, (ids, labels) in enumerate(batch):
        inputs[row, :len(ids)] = ids
        targets[row, :len(labels)] = labels
    return inputs, targets


class InstructionDataModule(L.LightningDataModule):
    """Instruction tuning of the from-scratch GPT: seeded shuffling, main process, padded batches."""

    def __init__(self, train: Sequence[dict[str, list[int]]], validation: Sequence[dict[str, list[int]]],
                 batch_size: int, pad_id: int, seed: int = 0) -> None:
        super().__init__()
        self.train_examples = InstructionExamples(train)
        self.val_examples = InstructionExamples(validation)
        self.batch_size = batch_size
        self.pad_id = pad_id
        self.seed = seed

    def _collate(self, batch: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
        return pad_instruction_batch(batch, self.pad_id)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_examples, batch_size=self.batch_size, shuffle=True, collate_fn=self._collate,
                          generator=torch.Generator().manual_seed(self.seed))

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_examples, batch_size=self.batch_size, collate_fn=self._collate)
