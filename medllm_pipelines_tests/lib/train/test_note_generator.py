"""The from-scratch note generator: a lossless tokenizer, and a GPT that learns to write a note's structure."""

from __future__ import annotations

import pytest

from medllm_pipelines.lib.common.structured_note import FIELDS, render_note
from medllm_pipelines.lib.synth.consultations import build_consultations
from medllm_pipelines.lib.synth.determinism import stream
from medllm_pipelines.lib.train.generative.notes import (
    UNK,
    NoteGeneratorConfig,
    build_note_tokenizer,
    decode,
    encode,
    note_prompt,
    train_note_generator,
)

PAIRS = build_consultations(90, stream(9, "note-generator-test"))
ROWS = [(p.dialogue_text(), p.language, p.note) for p in PAIRS]


@pytest.mark.parametrize("index", [0, 1, 2, 3])
def test_the_tokenizer_gives_back_exactly_the_text(index: int) -> None:
    tokenizer = build_note_tokenizer(note_prompt(t, lang) + render_note(n) for t, lang, n in ROWS)
    text = note_prompt(ROWS[index][0], ROWS[index][1]) + render_note(ROWS[index][2])
    assert decode(tokenizer, encode(tokenizer, text)) == text


def test_the_vocabulary_is_the_same_every_time_and_digits_are_single_tokens() -> None:
    texts = [render_note(n) for *_, n in ROWS]
    first, second = build_note_tokenizer(texts), build_note_tokenizer(list(reversed(texts)))
    assert first.get_vocab() == second.get_vocab()
    assert [first.id_to_token(i) for i in encode(first, "Findings: BP 151/93")] == ["Findings", ":", " BP", " 1", "5", "1", "/", "9", "3"]
    assert first.token_to_id(UNK) == encode(first, "zzzunseen")[0]


@pytest.mark.slow
def test_a_short_training_learns_to_write_the_note_layout() -> None:
    config = NoteGeneratorConfig(n_layer=2, n_head=2, n_embd=48, block_size=448, instruction_steps=140, batch_size=8,
                                 lr=5e-3, warmup_steps=10, max_new_tokens=120, seed=3)
    generator = train_note_generator(ROWS[:80], ROWS[80:84], config)
    assert generator.history and generator.history[-1]["train_loss"] < 2.0
    note = generator.generate_note(ROWS[85][0], ROWS[85][1])
    assert len([name for name in FIELDS if note.items(name)]) >= 4  # headers in order, in the pair's language
