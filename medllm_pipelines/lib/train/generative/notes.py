"""The note generator trained from scratch: dialogue -> structured note with the project's GPT (issue 11).

Two phases on the same network: optional pretraining (next-token loss on de-identified notes and dialogues,
``TokenBlockDataModule``) and instruction tuning on (prompt, note) pairs, where the prompt is an instruction
and the dialogue and the loss covers the note only (``InstructionDataModule``). The tokenizer is word-level and
lossless (``tokenizers``' WordLevel model over a pre-tokenizer that keeps a word's leading space, splits digits
and gives each CJK character its own token; the vocabulary is counted here and sorted by count then text, so two
trainings give the same ids): a note decodes back to exactly the text the model chose, which ``parse_note``
reads field by field. Digits one per token let the model copy values (37.4, 150/90) it never saw.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import lightning as L
import torch

from medllm_pipelines.lib.common.structured_note import StructuredNote, parse_note, render_note
from medllm_pipelines.lib.train.callbacks import EpochHistory, EpochMetricsCallback, quiet_lightning
from medllm_pipelines.lib.train.generative.network import GPT, GPTConfig
from medllm_pipelines.lib.train.generative.system import (
    CausalLMSystem,
    CausalLMTraining,
    InstructionDataModule,
    TokenBlockDataModule,
    instruction_example,
)

PAD, UNK, BOS, EOS = "[PAD]", "[UNK]", "[BOS]", "[EOS]"
SPECIAL_TOKENS = (PAD, UNK, BOS, EOS)
PRETOKEN_PATTERN = r" ?[A-Za-z]+| ?[0-9]| ?[^\sA-Za-z0-9]|\s+"
INSTRUCTION = {"en": "Write the outpatient note for this consultation.\n", "zh": "根据以下问诊对话书写门诊病历。\n"}
NOTE_CUE = {"en": "\nNote:\n", "zh": "\n病历：\n"}


def _pre_tokenizer() -> Any:
    from tokenizers import Regex, pre_tokenizers

    return pre_tokenizers.Split(Regex(PRETOKEN_PATTERN), behavior="isolated")


def build_note_tokenizer(texts: Iterable[str], *, min_count: int = 1, max_vocab: int = 16000) -> Any:
    """A lossless word-level tokenizer whose vocabulary is the tokens of ``texts`` (count >= ``min_count``)."""
    from tokenizers import Tokenizer, decoders, models

    pre = _pre_tokenizer()
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(piece for piece, _ in pre.pre_tokenize_str(text))
    ranked = sorted((t for t, c in counts.items() if c >= min_count), key=lambda t: (-counts[t], t))
    vocab = {token: index for index, token in enumerate([*SPECIAL_TOKENS, *ranked[:max_vocab - len(SPECIAL_TOKENS)]])}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    tokenizer.pre_tokenizer = pre
    tokenizer.decoder = decoders.Fuse()
    return tokenizer


def encode(tokenizer: Any, text: str) -> list[int]:
    return tokenizer.encode(text, add_special_tokens=False).ids


def decode(tokenizer: Any, ids: Sequence[int]) -> str:
    specials = {tokenizer.token_to_id(t) for t in SPECIAL_TOKENS}
    return tokenizer.decode([i for i in ids if i not in specials], skip_special_tokens=False)


def note_prompt(dialogue_text: str, language: str) -> str:
    """The instruction, the dialogue, and the cue after which the note starts."""
    return f"{INSTRUCTION[language]}{dialogue_text}{NOTE_CUE[language]}"


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
    pretrain_steps: int = 0
    batch_size: int = 16
    max_new_tokens: int = 200
    seed: int = 7

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
        bos, eos = self.tokenizer.token_to_id(BOS), self.tokenizer.token_to_id(EOS)
        prompt = [bos, *encode(self.tokenizer, note_prompt(dialogue_text, language))]
        room = self.config.block_size - self.config.max_new_tokens
        prompt = [bos, *prompt[1:][-(room - 1):]] if len(prompt) > room else prompt
        self.network.eval()
        out = self.network.generate(torch.tensor([prompt]), self.config.max_new_tokens, eos_id=eos)
        return decode(self.tokenizer, out[0, len(prompt):].tolist())

    def generate_note(self, dialogue_text: str, language: str) -> StructuredNote:
        return parse_note(self.generate(dialogue_text, language), language=language)


def _trainer(max_steps: int, history: EpochHistory, val: bool) -> L.Trainer:
    return L.Trainer(max_steps=max_steps, max_epochs=-1, accelerator="cpu", devices=1, deterministic=True,
                     logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                     callbacks=[history], num_sanity_val_steps=0, limit_val_batches=1.0 if val else 0)


def train_note_generator(train: Sequence[tuple[str, str, StructuredNote]], validation: Sequence[tuple[str, str, StructuredNote]],
                         config: NoteGeneratorConfig, *, pretrain_texts: Sequence[str] = (),
                         on_epoch_metrics: EpochMetricsCallback | None = None) -> NoteGenerator:
    """Train on (dialogue text, language, gold note) triples; ``pretrain_texts`` first when pretraining is on."""
    L.seed_everything(config.seed, workers=True, verbose=False)
    targets = [render_note(note) for _, _, note in train]
    prompts = [note_prompt(text, language) for text, language, _ in train]
    tokenizer = build_note_tokenizer([*prompts, *targets, *pretrain_texts])  # never the validation texts
    bos, eos, pad = (tokenizer.token_to_id(t) for t in (BOS, EOS, PAD))
    def phase(steps: int) -> CausalLMTraining:  # each phase warms up and decays over its own steps
        return CausalLMTraining(lr=config.lr, weight_decay=config.weight_decay, warmup_steps=config.warmup_steps,
                                max_steps=steps)

    system = CausalLMSystem(config.network(tokenizer.get_vocab_size()), phase(config.instruction_steps))
    history = EpochHistory(on_epoch_metrics)
    started = time.perf_counter()
    with quiet_lightning(r".*does not have many workers.*", r".*number of training batches.*"):
        if config.pretrain_steps and pretrain_texts:
            stream = [t for text in pretrain_texts for t in [bos, *encode(tokenizer, text), eos]]
            blocks = TokenBlockDataModule(stream, None, config.block_size, config.batch_size, seed=config.seed)
            system.training_config = phase(config.pretrain_steps)
            _trainer(config.pretrain_steps, history, val=False).fit(system, datamodule=blocks)
            system.training_config = phase(config.instruction_steps)

        def examples(rows: Sequence[tuple[str, str, StructuredNote]]) -> list[dict[str, list[int]]]:
            return [instruction_example(encode(tokenizer, note_prompt(text, language)),
                                        encode(tokenizer, render_note(note)), bos_id=bos, eos_id=eos,
                                        max_length=config.block_size + 1) for text, language, note in rows]

        data = InstructionDataModule(examples(train), examples(validation), config.batch_size, pad, seed=config.seed)
        _trainer(config.instruction_steps, history, val=True).fit(system, datamodule=data)
    return NoteGenerator(system.network, tokenizer, config, history.history, time.perf_counter() - started)
