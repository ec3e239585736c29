"""Free-text de-identification (notes, dialogues) in Chinese and English.

Detection (``detector``: validated ``patterns`` union a learned ``tagger``)
is separate from transformation (``surrogates``), as in Presidio. Pure
library: no Dagster import; torch only inside ``train_tagger``.

Typical use by an asset::

    tagger = train_tagger(train_texts, train_gold, seed=0)      # or Tagger.load(path)
    detector = build_detector(tagger=tagger)
    report = evaluate_detector(detector, test_texts, test_gold)  # metadata
    surrogate_for = SurrogateFactory(vault_hmac, scope=patient_pseudonym,
                                     date_shift_days=shift)
    clean, spans = deidentify_text(note, detector=detector, surrogate_for=surrogate_for)
"""

from __future__ import annotations

from collections.abc import Sequence

from medllm_pipelines.lib.deidentify.text.detector import (
    Detector,
    KnownIdentifiers,
    build_detector,
    merge_overlapping,
    resolve,
)
from medllm_pipelines.lib.deidentify.text.evaluate import (
    evaluate_detector,
    perturbed,
    score_spans,
    split_by_person,
)
from medllm_pipelines.lib.deidentify.text.patterns import (
    PatternConfig,
    PatternRecogniser,
    is_valid_resident_id,
    load_pattern_config,
    resident_id_check_char,
)
from medllm_pipelines.lib.deidentify.text.spans import ENTITY_TYPES, Span, normalise
from medllm_pipelines.lib.deidentify.text.surrogates import (
    SurrogateFactory,
    SurrogateFor,
    patient_date_shift,
    placeholder,
    replace_spans,
    shift_date_text,
    surrogate_vocabulary_version,
)
from medllm_pipelines.lib.deidentify.text.tagger import (
    Tagger,
    TaggerConfig,
    train_tagger,
)


def deidentify_text(text: str, *, detector: Detector, surrogate_for: SurrogateFor,
                    known: KnownIdentifiers | None = None) -> tuple[str, list[Span]]:
    """``text`` with every detected identifier replaced, and the spans found (original offsets)."""
    spans = detector.detect(text, known=known)
    return replace_spans(text, spans, surrogate_for), spans


def deidentify_texts(texts: Sequence[str], *, detector: Detector, surrogate_for: SurrogateFor,
                     known: Sequence[KnownIdentifiers | None] | None = None
                     ) -> list[tuple[str, list[Span]]]:
    """Batched ``deidentify_text`` (one tagger pass per batch); one surrogate scope for all."""
    found = detector.detect_many(texts, known=known)
    return [(replace_spans(text, spans, surrogate_for), spans) for text, spans in zip(texts, found, strict=True)]


__all__ = [
    "ENTITY_TYPES",
    "Detector",
    "KnownIdentifiers",
    "PatternConfig",
    "PatternRecogniser",
    "Span",
    "SurrogateFactory",
    "SurrogateFor",
    "Tagger",
    "TaggerConfig",
    "build_detector",
    "deidentify_text",
    "deidentify_texts",
    "evaluate_detector",
    "is_valid_resident_id",
    "load_pattern_config",
    "merge_overlapping",
    "normalise",
    "patient_date_shift",
    "perturbed",
    "placeholder",
    "replace_spans",
    "resident_id_check_char",
    "resolve",
    "score_spans",
    "shift_date_text",
    "split_by_person",
    "surrogate_vocabulary_version",
    "train_tagger",
]
