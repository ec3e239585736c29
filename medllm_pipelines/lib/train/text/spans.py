"""BIO tags over tokens, exact-span metrics and the dictionary baseline of the entity recogniser.

seqeval is not installed here (and nothing can be downloaded), so the
span-level metrics are the few lines of its strict mode: a span counts only
when its type and both token boundaries match; precision, recall and F1 per
type and micro-averaged over every span.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

OUTSIDE = "O"
Span = tuple[int, int, str]  # start, end (exclusive), type: characters or tokens


def bio_labels(entity_types: Sequence[str]) -> list[str]:
    """``O`` then ``B-T``, ``I-T`` for each type: index 0 is outside."""
    return [OUTSIDE, *[f"{prefix}-{kind}" for kind in entity_types for prefix in ("B", "I")]]


def encode_bio(offsets: Sequence[tuple[int, int]], spans: Iterable[Span]) -> list[str]:
    """One tag per token: B- on the first token overlapping a character span, I- on the following ones."""
    tags = [OUTSIDE] * len(offsets)
    for start, end, kind in sorted(spans):
        inside = [i for i, (a, b) in enumerate(offsets) if b > a and a < end and start < b]
        for n, i in enumerate(inside):
            if tags[i] == OUTSIDE:
                tags[i] = f"{'B' if n == 0 else 'I'}-{kind}"
    return tags


def decode_bio(tags: Sequence[str]) -> list[Span]:
    """Token spans (start, end exclusive, type) of a tag sequence; an I- without its B- opens a span (seqeval's way)."""
    spans: list[Span] = []
    start, kind = None, None
    for i, tag in enumerate([*tags, OUTSIDE]):
        prefix, _, tag_kind = tag.partition("-")
        if kind is not None and (prefix != "I" or tag_kind != kind):
            spans.append((start, i, kind))
            start, kind = None, None
        if prefix == "B" or (prefix == "I" and kind is None):
            start, kind = i, tag_kind
    return spans


def char_spans(tags: Sequence[str], offsets: Sequence[tuple[int, int]]) -> list[Span]:
    """Character spans of a tag sequence through the tokens' offsets."""
    return [(offsets[a][0], offsets[b - 1][1], kind) for a, b, kind in decode_bio(tags)]


def span_metrics(truth: Sequence[Iterable[Span]], predicted: Sequence[Iterable[Span]],
                 entity_types: Sequence[str]) -> dict[str, float]:
    """Exact-span precision/recall/F1 micro over all spans (span_*) and F1 per type (span_f1_<TYPE>)."""
    counts = {kind: [0, 0, 0] for kind in entity_types}  # true positives, predicted, true
    for gold, guess in zip(truth, predicted, strict=True):
        gold, guess = set(gold), set(guess)
        for kind in entity_types:
            g, p = {s for s in gold if s[2] == kind}, {s for s in guess if s[2] == kind}
            counts[kind][0] += len(g & p)
            counts[kind][1] += len(p)
            counts[kind][2] += len(g)

    def prf(tp: int, n_pred: int, n_true: int) -> tuple[float, float, float]:
        precision = tp / n_pred if n_pred else 0.0
        recall = tp / n_true if n_true else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        return precision, recall, f1

    total = [sum(c[i] for c in counts.values()) for i in range(3)]
    precision, recall, f1 = prf(*total)
    metrics = {"span_precision": precision, "span_recall": recall, "span_f1": f1}
    for kind, c in counts.items():
        p, r, f = prf(*c)
        metrics.update({f"span_precision_{kind}": p, f"span_recall_{kind}": r, f"span_f1_{kind}": f})
    return metrics


class DictionaryTagger:
    """The baseline: longest-match lookup of the training split's entity strings (case-folded)."""

    def __init__(self, texts: Sequence[str], spans: Sequence[Iterable[Span]]) -> None:
        lexicon: dict[str, dict[str, int]] = {}
        for text, row in zip(texts, spans, strict=True):
            for start, end, kind in row:
                surface = text[start:end].casefold()
                if surface.strip():
                    lexicon.setdefault(surface, {}).setdefault(kind, 0)
                    lexicon[surface][kind] += 1
        self.lexicon = {s: max(sorted(k), key=lambda t: k[t]) for s, k in lexicon.items()}
        self.longest_first = sorted(self.lexicon, key=lambda s: (-len(s), s))

    def __len__(self) -> int:
        return len(self.lexicon)

    def tag(self, text: str) -> list[Span]:
        """Character spans: every lexicon string found, longest first, overlapping nothing already taken."""
        folded, taken, spans = text.casefold(), [False] * len(text), []
        if len(folded) != len(text):  # a character that folds to several (ß -> ss): offsets would drift
            folded = text.lower() if len(text.lower()) == len(text) else text
        for surface in self.longest_first:
            at = folded.find(surface)
            while at >= 0:
                end = at + len(surface)
                if not any(taken[at:end]):
                    spans.append((at, end, self.lexicon[surface]))
                    taken[at:end] = [True] * len(surface)
                at = folded.find(surface, at + 1)
        return sorted(spans)

    def as_metadata(self) -> dict[str, Any]:
        return {"dictionary_entries": len(self)}
