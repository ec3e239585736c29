"""What the note generator reads and writes: its tokenizer, its prompt and greedy decoding, without Lightning.

Kept apart from the training code (``notes.py``) so that a saved generator (``note_predictor.py``) loads with torch
and ``tokenizers`` only, as every network here does (CONVENTIONS rule 7). The tokenizer is word-level and lossless
(``tokenizers``' WordLevel model over a pre-tokenizer that keeps a word's leading space, splits digits and gives
each CJK character its own token; the vocabulary is counted here and sorted by count then text, so two trainings
give the same ids).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

import torch

from medllm_pipelines.lib.train.generative.network import GPT

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


def generate_note_text(network: GPT, tokenizer: Any, dialogue_text: str, language: str, *, max_new_tokens: int) -> str:
    """Greedy note for one dialogue; a prompt too long for the block loses the start of the dialogue, never the cue."""
    bos, eos = tokenizer.token_to_id(BOS), tokenizer.token_to_id(EOS)
    prompt = [bos, *encode(tokenizer, note_prompt(dialogue_text, language))]
    room = network.config.block_size - max_new_tokens
    prompt = [bos, *prompt[1:][-(room - 1):]] if len(prompt) > room else prompt
    network.eval()
    out = network.generate(torch.tensor([prompt]), max_new_tokens, eos_id=eos)
    return decode(tokenizer, out[0, len(prompt):].tolist())
