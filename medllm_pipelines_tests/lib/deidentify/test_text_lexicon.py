"""The name lexicon (``text/lexicon.py``): clinical and everyday words are never names."""

from __future__ import annotations

from medllm_pipelines.lib.deidentify.text.lexicon import NEVER, name_lexicon


def test_whitelist_filters_tagger_and_pattern_names() -> None:
    lexicon = name_lexicon()
    for word in ("HEPARIN", "CARDIAC", "WITH", "Lasix", "metoprolol", "COPD"):
        assert lexicon.kind(word) == NEVER, word
    assert lexicon.kind("Kowalski") != NEVER
