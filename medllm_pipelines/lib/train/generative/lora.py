"""Parameter-efficient instruction tuning (LoRA, ``peft``) of the operator's base model, and generation.

The production path for the note generator: the base checkpoint stays frozen and unchanged on disk, a few
low-rank adapters are trained on (instruction, response) pairs — a dialogue and its structured note — and only
the adapter is saved (megabytes, not the model). The loss covers the response tokens only (the prompt is masked
with ``IGNORE_INDEX``). The network is the Hugging Face model, the training system ``LoraTuningSystem`` and the
data ``InstructionDataModule`` (CONVENTIONS rule 7). Seeded and deterministic on the CPU.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader

from medllm_pipelines.lib.train.callbacks import EpochHistory, EpochMetricsCallback, quiet_lightning
from medllm_pipelines.lib.train.generative.base_model import BaseModelFolder, load_base_model, offline
from medllm_pipelines.lib.train.generative.system import IGNORE_INDEX, cosine_with_warmup, instruction_example
from medllm_pipelines.lib.train.optim import check_finite_loss

ADAPTER_DIRNAME = "adapter"
SETTINGS_FILENAME = "lora_settings.json"


@dataclass(frozen=True)
class LoraSettings:
    """The adapter's shape and how it is trained (spec ``training:`` block of a generative spec)."""

    r: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: tuple[str, ...] | str = "all-linear"
    lr: float = 2e-4
    weight_decay: float = 0.0
    warmup_steps: int = 5
    max_epochs: int = 3
    batch_size: int = 4
    max_length: int = 512
    seed: int = 7
    add_bos: bool = True  # Gemma writes fluent text only with the beginning-of-sequence token added by hand

    def __post_init__(self) -> None:
        if self.r < 1 or self.alpha < 1 or not 0 <= self.dropout < 1:
            raise ValueError("LoraSettings: r >= 1, alpha >= 1, dropout in [0, 1)")
        if self.lr <= 0 or self.max_epochs < 1 or self.batch_size < 1 or self.max_length < 8:
            raise ValueError("LoraSettings: lr > 0, max_epochs >= 1, batch_size >= 1, max_length >= 8")
        if isinstance(self.target_modules, list):
            object.__setattr__(self, "target_modules", tuple(self.target_modules))

    def as_params(self) -> dict[str, Any]:
        params = asdict(self)
        params["target_modules"] = ",".join(self.target_modules) if isinstance(self.target_modules, tuple) \
            else self.target_modules
        return {f"lora_{k}" if k in ("r", "alpha", "dropout", "target_modules") else k: v for k, v in params.items()}


@dataclass(frozen=True)
class InstructionPair:
    """One supervised example: what the model reads (a dialogue, with the instruction) and what it must write."""

    prompt: str
    response: str


def encode_pair(tokenizer: Any, pair: InstructionPair, max_length: int, add_bos: bool) -> dict[str, list[int]]:
    """Token ids and labels of one pair with a Hugging Face tokenizer (``instruction_example`` does the rest)."""
    return instruction_example(tokenizer(pair.prompt, add_special_tokens=False)["input_ids"],
                               tokenizer(pair.response, add_special_tokens=False)["input_ids"],
                               bos_id=tokenizer.bos_token_id if add_bos else None, eos_id=tokenizer.eos_token_id,
                               max_length=max_length)


def collate_examples(examples: Sequence[dict[str, list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded batch; padding masked out of attention and loss."""
    width = max(len(e["input_ids"]) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, example in enumerate(examples):
        n = len(example["input_ids"])
        ids[row, :n] = torch.tensor(example["input_ids"])
        labels[row, :n] = torch.tensor(example["labels"])
        mask[row, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


class InstructionDataModule(L.LightningDataModule):
    """Encoded (prompt, response) pairs; shuffled with a seeded generator, in the main process."""

    def __init__(self, tokenizer: Any, train: Sequence[InstructionPair], validation: Sequence[InstructionPair],
                 settings: LoraSettings) -> None:
        super().__init__()
        self.train_examples = [encode_pair(tokenizer, p, settings.max_length, settings.add_bos) for p in train]
        self.val_examples = [encode_pair(tokenizer, p, settings.max_length, settings.add_bos) for p in validation]
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.settings = settings

    def _loader(self, examples: list, shuffle: bool) -> DataLoader:
        generator = torch.Generator().manual_seed(self.settings.seed)
        return DataLoader(examples, batch_size=self.settings.batch_size, shuffle=shuffle, generator=generator,
                          collate_fn=lambda batch: collate_examples(batch, self.pad_id))

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_examples, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_examples, shuffle=False)


class LoraTuningSystem(L.LightningModule):
    """Causal-LM loss of a peft-wrapped model; only the adapter's parameters reach the optimiser."""

    def __init__(self, model: Any, settings: LoraSettings, total_steps: int, spec_id: str = "") -> None:
        super().__init__()
        self.model = model
        self.settings = settings
        self.total_steps = max(1, total_steps)
        self.spec_id = spec_id

    def _loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.model(**batch).loss

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self._loss(batch)
        check_finite_loss(loss, spec_id=self.spec_id, epoch=self.current_epoch)
        self.log("train_loss", loss, on_step=False, on_epoch=True, batch_size=len(batch["input_ids"]))
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self.log("val_loss", self._loss(batch), on_epoch=True, batch_size=len(batch["input_ids"]))

    def configure_optimizers(self) -> dict:
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(trainable, lr=self.settings.lr, weight_decay=self.settings.weight_decay)
        s = self.settings
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: cosine_with_warmup(step, s.warmup_steps, self.total_steps, 0.1))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


@dataclass
class LoraResult:
    """What one LoRA tuning produced, for the MLflow run and the asset's metadata."""

    adapter_dir: Path
    trainable_parameters: int
    total_parameters: int
    history: EpochHistory
    train_seconds: float
    settings: LoraSettings
    base: dict[str, Any] = field(default_factory=dict)

    @property
    def trainable_share(self) -> float:
        return self.trainable_parameters / max(1, self.total_parameters)

    def as_metadata(self) -> dict[str, Any]:
        last = self.history.history[-1] if self.history.history else {}
        return {**self.base, "trainable_parameters": self.trainable_parameters,
                "total_parameters": self.total_parameters, "trainable_share": round(self.trainable_share, 6),
                "epochs_run": len(self.history.history), "final_train_loss": last.get("train_loss"),
                "final_val_loss": last.get("val_loss"), "train_seconds": round(self.train_seconds, 2)}


def _peft_model(model: Any, settings: LoraSettings) -> Any:
    from peft import LoraConfig, TaskType, get_peft_model

    target = list(settings.target_modules) if isinstance(settings.target_modules, tuple) else settings.target_modules
    config = LoraConfig(task_type=TaskType.CAUSAL_LM, r=settings.r, lora_alpha=settings.alpha,
                        lora_dropout=settings.dropout, target_modules=target)
    return get_peft_model(model, config)


def fine_tune_lora(base: BaseModelFolder, train: Sequence[InstructionPair], validation: Sequence[InstructionPair],
                   settings: LoraSettings, output_dir: Path, *, spec_id: str = "",
                   on_epoch_metrics: EpochMetricsCallback | None = None) -> LoraResult:
    """Train a LoRA adapter on ``train`` (validation loss per epoch), save it under ``output_dir/adapter``."""
    if not train or not validation:
        raise ValueError(f"spec {spec_id}: LoRA tuning needs training and validation pairs "
                         f"(got {len(train)} and {len(validation)})")
    L.seed_everything(settings.seed, workers=True, verbose=False)
    model, tokenizer = load_base_model(base, spec_id=spec_id)
    model = _peft_model(model, settings).train()  # from_pretrained returns eval mode; LoRA dropout needs train
    trainable, total = model.get_nb_trainable_parameters()
    data = InstructionDataModule(tokenizer, train, validation, settings)
    steps = settings.max_epochs * -(-len(data.train_examples) // settings.batch_size)
    system = LoraTuningSystem(model, settings, steps, spec_id=spec_id)
    history = EpochHistory(on_epoch_metrics)
    trainer = L.Trainer(max_epochs=settings.max_epochs, accelerator="cpu", devices=1, deterministic=True,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[history],
                        num_sanity_val_steps=0)
    started = time.perf_counter()
    with quiet_lightning():
        trainer.fit(system, datamodule=data)
    seconds = time.perf_counter() - started
    adapter_dir = Path(output_dir) / ADAPTER_DIRNAME
    model.save_pretrained(adapter_dir)
    tokenizer.save_pretrained(adapter_dir)
    (adapter_dir / SETTINGS_FILENAME).write_text(json.dumps(settings.as_params(), indent=2, sort_keys=True))
    return LoraResult(adapter_dir, int(trainable), int(total), history, seconds, settings, base.as_metadata())


def load_tuned_model(base: BaseModelFolder, adapter_dir: Path, *, spec_id: str = "") -> tuple[Any, Any]:
    """The base model with the saved adapter applied (merged for inference), and the adapter's tokenizer."""
    from peft import PeftModel

    model, _ = load_base_model(base, spec_id=spec_id)
    with offline():
        tuned = PeftModel.from_pretrained(model, adapter_dir, local_files_only=True)
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(adapter_dir, local_files_only=True)
    return tuned.merge_and_unload().eval(), tokenizer


@torch.no_grad()
def generate(model: Any, tokenizer: Any, prompt: str, *, max_new_tokens: int = 256, add_bos: bool = True) -> str:
    """Greedy continuation of ``prompt`` (deterministic: a note must not change between two calls)."""
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    if add_bos and tokenizer.bos_token_id is not None:
        ids = [tokenizer.bos_token_id, *ids]
    inputs = torch.tensor([ids])
    output = model.generate(inputs, attention_mask=torch.ones_like(inputs), max_new_tokens=max_new_tokens,
                            do_sample=False, eos_token_id=tokenizer.eos_token_id,
                            pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None
                            else tokenizer.eos_token_id)
    return tokenizer.decode(output[0, len(ids):], skip_special_tokens=True)
