"""Resolving what the recognisers propose (``text/detector.py``): the clinical whitelist applies to names only."""

from __future__ import annotations

from medllm_pipelines.lib.deidentify.text.detector import whitelist_names
from medllm_pipelines.lib.deidentify.text.spans import Span


def test_tagger_name_spans_pass_the_whitelist() -> None:
    text = "HEPARIN drip, CARDIAC cath WITH He and Song; seen by Kowalski."
    proposed = [Span(0, 7, "NAME", 0.99, "tagger"), Span(14, 21, "NAME", 0.99, "tagger"),
                Span(27, 31, "NAME", 0.99, "tagger"), Span(32, 34, "NAME", 0.99, "tagger"),
                Span(39, 43, "NAME", 0.99, "tagger"), Span(53, 61, "NAME", 0.99, "tagger"),
                Span(0, 12, "DATE", 0.99, "tagger")]
    kept = [(text[s.start:s.end], s.label) for s in whitelist_names(text, proposed)]
    assert kept == [("Kowalski", "NAME"), ("HEPARIN drip", "DATE")]  # other types are left to their own checks
