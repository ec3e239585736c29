"""The note generator trained from scratch: dialogue -> structured note with the project's GPT (issue 11).

Two phases on the same network: optional pretraining (next-token loss on de-identified notes and dialogues,
``TokenBlockDataModule``) and instruction tuning on (prompt, note) pairs, where the prompt is an instruction
and the dialogue and the loss covers the note only (``InstructionDataModule``). The tokenizer (``note_text.py``,
with the prompt and greedy decoding, importable without Lightning so a saved generator loads cheaply) is word-level and
lossless (``tokenizers``' WordLevel model over a pre-tokenizer that keeps a word's leading space, splits digits
and gives each CJK character its own token; the vocabulary is counted here and sorted by count then text, so two
trainings give the same ids): a note decodes back to exactly the text the model chose, which ``parse_note``
reads field by field. Digits one per token let the model copy values (37.4, 150/90) it never saw.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import lightning as L
import torch

from medllm_pipelines.lib.common.structured_note import StructuredNote, parse_note, render_note
from medllm_pipelines.lib.train.callbacks import EpochHistory, EpochMetricsCallback, quiet_lightning
from medllm_pipelines.lib.train.generative.network import GPT, GPTConfig
from medllm_pipelines.lib.train.generative.note_text import (  # re-exported: the tokenizer and prompt live there
    BOS,
    EOS,
    INSTRUCTION,
    NOTE_CUE,
    PAD,
    PRETOKEN_PATTERN,
    SPECIAL_TOKENS,
    UNK,
    build_note_tokenizer,
    decode,
    encode,
    generate_note_text,
    note_prompt,
)
from medllm_pipelines.lib.train.generative.system import (
    CausalLMSystem,
    CausalLMTraining,
    InstructionDataModule,
    TokenBlockDataModule,
    instruction_example,
    next_token_loss,
)
from medllm_pipelines.lib.train.optim import check_finite_loss
from medllm_pipelines.lib.train.text.training import cpu_threads

__all__ = [
    "BOS", "EOS", "INSTRUCTION", "NOTE_CUE", "PAD", "PRETOKEN_PATTERN", "SPECIAL_TOKENS", "UNK", "NoteGenerator",
    "NoteGeneratorConfig", "build_note_tokenizer", "decode", "encode", "note_prompt", "train_note_generator",
]

@dataclass(frozen=True)
class NoteGeneratorConfig:
    """Network shape and both training phases (a spec's ``network:`` and ``training:`` blocks)."""

    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    block_size: int = 512
    dropout: float = 0.0
    lr: float = 2e-3
    weight_decay: float = 0.01
    warmup_steps: int = 20
    instruction_steps: int = 600
    max_epochs: int = 0  # caps instruction steps at this many passes over the training pairs (0: no cap)
    pretrain_steps: int = 0
    batch_size: int = 16
    max_new_tokens: int = 200
    seed: int = 7
    cpu_threads: int = 0  # torch intra-op threads while training (0: torch's default); small networks gain nothing

    def steps_for(self, train_pairs: int) -> int:
        """Instruction steps for ``train_pairs``: ``instruction_steps``, or fewer when ``max_epochs`` passes over a
        small training set take fewer (a small delivery trains in seconds; the demo hospital is not capped)."""
        if not self.max_epochs:
            return self.instruction_steps
        per_epoch = max(1, -(-int(train_pairs) // self.batch_size))
        return max(1, min(self.instruction_steps, self.max_epochs * per_epoch))

    def network(self, vocab_size: int) -> GPTConfig:
        return GPTConfig(vocab_size=vocab_size, block_size=self.block_size, n_layer=self.n_layer,
                         n_head=self.n_head, n_embd=self.n_embd, dropout=self.dropout)

    def as_params(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class NoteGenerator:
    """A trained network and its tokenizer: what ``generate_note`` needs."""

    network: GPT
    tokenizer: Any
    config: NoteGeneratorConfig
    history: list[dict[str, float]]
    train_seconds: float

    def generate(self, dialogue_text: str, language: str) -> str:
        return generate_note_text(self.network, self.tokenizer, dialogue_text, language,
                                  max_new_tokens=self.config.max_new_tokens)

    def generate_note(self, dialogue_text: str, language: str) -> StructuredNote:
        return parse_note(self.generate(dialogue_text, language), language=language)


class _SpecCausalLMSystem(CausalLMSystem):
    """The causal LM system whose non-finite loss raises TrainingDivergedError naming the spec, as every spec
    trainer's does (the base system's FloatingPointError does not know the spec)."""

    def __init__(self, config: GPTConfig, training: CausalLMTraining, spec_id: str) -> None:
        super().__init__(config, training)
        self.spec_id = spec_id

    def _loss(self, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        inputs, targets = batch
        loss = next_token_loss(self(inputs), targets)
        check_finite_loss(loss, spec_id=self.spec_id, epoch=self.current_epoch)
        return loss


def _trainer(max_steps: int, history: EpochHistory, val: bool) -> L.Trainer:
    return L.Trainer(max_steps=max_steps, max_epochs=-1, accelerator="cpu", devices=1, deterministic=True,
                     logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                     callbacks=[history], num_sanity_val_steps=0, limit_val_batches=1.0 if val else 0)


def train_note_generator(train: Sequence[tuple[str, str, StructuredNote]], validation: Sequence[tuple[str, str, StructuredNote]],
                         config: NoteGeneratorConfig, *, pretrain_texts: Sequence[str] = (),
                         on_epoch_metrics: EpochMetricsCallback | None = None, spec_id: str = "") -> NoteGenerator:
    """Train on (dialogue text, language, gold note) triples; ``pretrain_texts`` first when pretraining is on.

    A loss that becomes NaN or infinite raises TrainingDivergedError naming ``spec_id`` and the epoch.
    """
    L.seed_everything(config.seed, workers=True, verbose=False)
    targets = [render_note(note) for _, _, note in train]
    prompts = [note_prompt(text, language) for text, language, _ in train]
    tokenizer = build_note_tokenizer([*prompts, *targets, *pretrain_texts])  # never the validation texts
    bos, eos, pad = (tokenizer.token_to_id(t) for t in (BOS, EOS, PAD))
    def phase(steps: int) -> CausalLMTraining:  # each phase warms up and decays over its own steps
        return CausalLMTraining(lr=config.lr, weight_decay=config.weight_decay, warmup_steps=config.warmup_steps,
                                max_steps=steps)

    steps = config.steps_for(len(train))
    system = _SpecCausalLMSystem(config.network(tokenizer.get_vocab_size()), phase(steps), spec_id)
    history = EpochHistory(on_epoch_metrics)
    started = time.perf_counter()
    with quiet_lightning(r".*does not have many workers.*", r".*number of training batches.*"), \
            cpu_threads(config.cpu_threads):
        if config.pretrain_steps and pretrain_texts:
            stream = [t for text in pretrain_texts for t in [bos, *encode(tokenizer, text), eos]]
            blocks = TokenBlockDataModule(stream, None, config.block_size, config.batch_size, seed=config.seed)
            system.training_config = phase(config.pretrain_steps)
            _trainer(config.pretrain_steps, history, val=False).fit(system, datamodule=blocks)
            system.training_config = phase(steps)

        def examples(rows: Sequence[tuple[str, str, StructuredNote]]) -> list[dict[str, list[int]]]:
            return [instruction_example(encode(tokenizer, note_prompt(text, language)),
                                        encode(tokenizer, render_note(note)), bos_id=bos, eos_id=eos,
                                        max_length=config.block_size + 1) for text, language, note in rows]

        data = InstructionDataModule(examples(train), examples(validation), config.batch_size, pad, seed=config.seed)
        _trainer(steps, history, val=True).fit(system, datamodule=data)
    return NoteGenerator(system.network, tokenizer, config, history.history, time.perf_counter() - started)
