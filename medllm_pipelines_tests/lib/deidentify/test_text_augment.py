"""Generated training sentences (``text/augment.py``): labelled, deterministic, with negatives."""

from __future__ import annotations

from medllm_pipelines.lib.deidentify.text.augment import generated_sentences


def test_generated_training_sentences_are_labelled_and_deterministic() -> None:
    texts, gold = generated_sentences(40, seed=3, clinical_titles=lambda: ["Heparin-induced thrombocytopenia"])
    again, _ = generated_sentences(40, seed=3, clinical_titles=lambda: ["Heparin-induced thrombocytopenia"])
    assert texts == again
    assert any(not spans for spans in gold)  # negatives: clinical prose with nothing to mask
    assert {label for spans in gold for *_, label in spans} >= {"NAME", "DATE"}
    for text, spans in zip(texts, gold, strict=True):
        for start, end, _ in spans:
            assert 0 <= start < end <= len(text) and text[start:end].strip() == text[start:end]
