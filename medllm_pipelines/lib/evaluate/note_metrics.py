"""How a generated note is scored against its gold note (issue 11 target, row V1 for text generation).

- Field-level precision, recall and F1: the items of each field (``chief_complaint``, ..., ``plan``) compared
  as normalised strings (``structured_note.normalise_item``); an item counts once per field. Micro-averaged over
  fields and notes, and reported per field.
- ICD-10 exact match: the set of codes in the generated assessment equals the gold set (per note, averaged).
- ROUGE-L F-measure of the rendered note text (Google's ``rouge-score``, the reference re-implementation of
  ROUGE-1.5.5, in float64) with a tokenizer that keeps CJK characters: its default tokenizer drops every
  non-ASCII character, which would score any two Chinese notes as equal.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from medllm_pipelines.lib.common.structured_note import FIELDS, StructuredNote, normalise_item, render_note

_TOKEN = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]|[0-9a-z]+(?:\.[0-9a-z]+)*")


def rouge_tokens(text: str) -> list[str]:
    """Lower-cased word tokens, each CJK character a token of its own, punctuation dropped."""
    import unicodedata

    return _TOKEN.findall(unicodedata.normalize("NFKC", text).casefold())


@dataclass(frozen=True)
class FieldCounts:
    true_positive: int = 0
    predicted: int = 0
    gold: int = 0

    def __add__(self, other: FieldCounts) -> FieldCounts:
        return FieldCounts(self.true_positive + other.true_positive, self.predicted + other.predicted,
                           self.gold + other.gold)

    @property
    def precision(self) -> float:
        return self.true_positive / self.predicted if self.predicted else (1.0 if not self.gold else 0.0)

    @property
    def recall(self) -> float:
        return self.true_positive / self.gold if self.gold else (1.0 if not self.predicted else 0.0)

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0


def field_counts(predicted: StructuredNote, gold: StructuredNote, name: str) -> FieldCounts:
    pred_items = {normalise_item(i) for i in predicted.items(name)} - {""}
    gold_items = {normalise_item(i) for i in gold.items(name)} - {""}
    return FieldCounts(len(pred_items & gold_items), len(pred_items), len(gold_items))


class _CjkTokenizer:
    """The ``tokenize`` interface rouge-score asks of a custom tokenizer."""

    def tokenize(self, text: str) -> list[str]:
        return rouge_tokens(text)


def rouge_l(predicted_text: str, gold_text: str) -> float:
    """ROUGE-L F-measure of two texts (rouge-score), 0.0 when either has no token."""
    from rouge_score.rouge_scorer import RougeScorer

    if not rouge_tokens(predicted_text) or not rouge_tokens(gold_text):
        return 0.0
    return float(RougeScorer(["rougeL"], tokenizer=_CjkTokenizer()).score(gold_text, predicted_text)["rougeL"].fmeasure)


@dataclass(frozen=True)
class NoteScores:
    """Scores of a set of generated notes against their gold notes."""

    n_notes: int
    field_precision: float
    field_recall: float
    field_f1: float
    per_field_f1: dict[str, float]
    icd10_exact_match: float
    rouge_l: float

    def as_metrics(self, prefix: str = "") -> dict[str, float]:
        metrics = {"field_precision": self.field_precision, "field_recall": self.field_recall,
                   "field_f1": self.field_f1, "icd10_exact_match": self.icd10_exact_match, "rouge_l": self.rouge_l,
                   **{f"f1_{name}": value for name, value in self.per_field_f1.items()}}
        return {f"{prefix}{name}": round(float(value), 6) for name, value in metrics.items()}


def score_notes(predicted: Sequence[StructuredNote], gold: Sequence[StructuredNote]) -> NoteScores:
    """Field-level P/R/F1 (micro), per-field F1, ICD-10 exact match and mean ROUGE-L of paired notes."""
    if len(predicted) != len(gold):
        raise ValueError(f"{len(predicted)} generated notes for {len(gold)} gold notes: they must pair up")
    if not gold:
        raise ValueError("no notes to score")
    per_field = {name: FieldCounts() for name in FIELDS}
    for pred, ref in zip(predicted, gold, strict=True):
        for name in FIELDS:
            per_field[name] = per_field[name] + field_counts(pred, ref, name)
    total = sum(per_field.values(), FieldCounts())
    exact = [Counter(p.icd10_codes) == Counter(g.icd10_codes) for p, g in zip(predicted, gold, strict=True)]
    rouge = [rouge_l(render_note(p), render_note(g)) for p, g in zip(predicted, gold, strict=True)]
    return NoteScores(
        n_notes=len(gold), field_precision=total.precision, field_recall=total.recall, field_f1=total.f1,
        per_field_f1={name: counts.f1 for name, counts in per_field.items() if counts.gold or counts.predicted},
        icd10_exact_match=sum(exact) / len(exact), rouge_l=sum(rouge) / len(rouge))
