"""Precision, recall and F1 of a detector per entity type, on a held-out split.

Two matchings, both reported:

* ``exact``: a predicted span counts only with the gold span's exact offsets
  and type (the strict NER convention);
* ``overlap``: a gold span is found when a predicted span of the same type
  overlaps it, a predicted span is correct when it overlaps a gold span of
  its type (the usual de-identification convention: a partly masked phone
  number is mostly masked).

and, for privacy, ``leaked_chars``: gold characters covered by no predicted
span of any type (what would remain readable after replacement).

The split is by person, so no patient's notes are on both sides.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import numpy as np

from medllm_pipelines.lib.deidentify.text.spans import ENTITY_TYPES, Span

T = TypeVar("T")


def split_by_person(items: Sequence[T], person_of: Callable[[T], Any], *, test_fraction: float = 0.3,
                    seed: int = 0) -> tuple[list[T], list[T]]:
    """(train, test) with every item of one person on the same side, chosen by a seeded hash."""
    train: list[T] = []
    test: list[T] = []
    for item in items:
        digest = hashlib.sha256(f"{seed}\x1f{person_of(item)}".encode()).digest()
        (test if int.from_bytes(digest[:8], "big") / 2**64 < test_fraction else train).append(item)
    return train, test


def _as_triples(spans: Sequence[Any]) -> list[tuple[int, int, str]]:
    out = []
    for span in spans:
        if isinstance(span, tuple):
            out.append((int(span[0]), int(span[1]), str(span[2])))
        else:
            out.append((int(span.start), int(span.end), str(span.label)))
    return out


def _ratio(a: int, b: int) -> float | None:
    return round(a / b, 4) if b else None


def _f1(precision: float | None, recall: float | None) -> float | None:
    if not precision or not recall:
        return 0.0 if precision is not None and recall is not None else None
    return round(2 * precision * recall / (precision + recall), 4)


def score_spans(predicted: Sequence[Sequence[Any]], gold: Sequence[Sequence[Any]],
                labels: Sequence[str] = ENTITY_TYPES) -> dict[str, Any]:
    """Per-label counts and metrics of predicted vs gold spans over a set of texts."""
    counts = {label: {"gold": 0, "predicted": 0, "exact_tp": 0, "overlap_found": 0, "overlap_correct": 0,
                      "gold_chars": 0, "leaked_chars": 0} for label in labels}
    for predicted_spans, gold_spans in zip(predicted, gold, strict=True):
        p = [s for s in _as_triples(predicted_spans) if s[2] in counts]
        g = [s for s in _as_triples(gold_spans) if s[2] in counts]
        exact = set(p)
        covered: set[int] = set()
        for s, e, _ in _as_triples(predicted_spans):
            covered.update(range(s, e))
        for s, e, label in g:
            c = counts[label]
            c["gold"] += 1
            c["exact_tp"] += (s, e, label) in exact
            c["overlap_found"] += any(ps < e and s < pe and pl == label for ps, pe, pl in p)
            c["gold_chars"] += e - s
            c["leaked_chars"] += sum(1 for i in range(s, e) if i not in covered)
        for s, e, label in p:
            c = counts[label]
            c["predicted"] += 1
            c["overlap_correct"] += any(gs < e and s < ge and gl == label for gs, ge, gl in g)
    report: dict[str, Any] = {}
    for label, c in counts.items():
        exact_p, exact_r = _ratio(c["exact_tp"], c["predicted"]), _ratio(c["exact_tp"], c["gold"])
        over_p, over_r = _ratio(c["overlap_correct"], c["predicted"]), _ratio(c["overlap_found"], c["gold"])
        report[label] = {
            "gold": c["gold"], "predicted": c["predicted"],
            "exact": {"precision": exact_p, "recall": exact_r, "f1": _f1(exact_p, exact_r)},
            "overlap": {"precision": over_p, "recall": over_r, "f1": _f1(over_p, over_r)},
            "leaked_chars": c["leaked_chars"], "gold_chars": c["gold_chars"],
        }
    totals = {key: sum(c[key] for c in counts.values()) for key in next(iter(counts.values()))}
    micro_p = _ratio(totals["overlap_correct"], totals["predicted"])
    micro_r = _ratio(totals["overlap_found"], totals["gold"])
    report["_micro"] = {"gold": totals["gold"], "predicted": totals["predicted"],
                        "exact": {"precision": _ratio(totals["exact_tp"], totals["predicted"]),
                                  "recall": _ratio(totals["exact_tp"], totals["gold"])},
                        "overlap": {"precision": micro_p, "recall": micro_r, "f1": _f1(micro_p, micro_r)},
                        "leaked_chars": totals["leaked_chars"], "gold_chars": totals["gold_chars"]}
    return report


def evaluate_detector(detector: Any, texts: Sequence[str], gold: Sequence[Sequence[Any]], *,
                      labels: Sequence[str] = ENTITY_TYPES, batch_size: int = 64) -> dict[str, Any]:
    """Run ``detector.detect_many`` on held-out texts and score it (see ``score_spans``).

    The result has no text in it (counts and ratios only), so it can go to
    asset metadata and MLflow as is.
    """
    predicted: list[list[Span]] = []
    for begin in range(0, len(texts), batch_size):
        predicted.extend(detector.detect_many(list(texts[begin:begin + batch_size])))
    report = score_spans(predicted, gold, labels)
    report["_texts"] = len(texts)
    report["_detector"] = detector.version
    return report


def _rewrite_number(value: str, rng: np.random.Generator) -> str:
    choice = rng.random()
    if choice < 0.4:  # split into groups by spaces or hyphens
        chars = [ch for ch in value if ch.isalnum()]
        size = int(rng.integers(3, 6))
        sep = " " if rng.random() < 0.6 else "-"
        return sep.join("".join(chars[i:i + size]) for i in range(0, len(chars), size))
    if choice < 0.7:  # full-width digits
        return "".join(chr(ord(ch) + 0xFEE0) if ch.isascii() and ch.isdigit() else ch for ch in value)
    return value


def perturbed(texts: Sequence[str], gold: Sequence[Sequence[Any]], *, seed: int = 0
              ) -> tuple[list[str], list[list[tuple[int, int, str]]]]:
    """Harder copies of held-out texts: lines reordered, ID and phone numbers re-spaced or in full-width digits.

    Templates make the synthetic notes easy; these copies break the layout a
    tagger could memorise while keeping exact gold offsets.
    """
    rng = np.random.default_rng(seed)
    out_texts: list[str] = []
    out_gold: list[list[tuple[int, int, str]]] = []
    for text, spans in zip(texts, gold, strict=True):
        triples = sorted(_as_triples(spans))
        lines, line_start = [], 0
        for line in text.split("\n"):
            line_end = line_start + len(line)
            inside = [(s - line_start, e - line_start, lab) for s, e, lab in triples if line_start <= s and e <= line_end]
            lines.append((line, inside))
            line_start = line_end + 1
        order = rng.permutation(len(lines))
        pieces: list[str] = []
        new_gold: list[tuple[int, int, str]] = []
        cursor = 0
        for index in order:
            line, inside = lines[int(index)]
            rebuilt, last = "", 0
            for s, e, label in inside:
                rebuilt += line[last:s]
                value = line[s:e]
                if label in ("ID_NUMBER", "PHONE"):
                    value = _rewrite_number(value, rng)
                new_gold.append((cursor + len(rebuilt), cursor + len(rebuilt) + len(value), label))
                rebuilt += value
                last = e
            rebuilt += line[last:]
            pieces.append(rebuilt)
            cursor += len(rebuilt) + 1
        out_texts.append("\n".join(pieces))
        out_gold.append(new_gold)
    return out_texts, out_gold


# --- text written by others ------------------------------------------------------------
# presidio-research's synthetic dataset labels -> ours. Labels not listed (AGE,
# TITLE, NRP, DOMAIN_NAME, IP_ADDRESS) are not scored, and masking them is not
# counted as over-masking either.
PRESIDIO_RESEARCH_LABELS: dict[str, str] = {
    "PERSON": "NAME",
    "STREET_ADDRESS": "ADDRESS",
    "ZIP_CODE": "ADDRESS",
    "PHONE_NUMBER": "PHONE",
    "EMAIL_ADDRESS": "EMAIL",
    "DATE_TIME": "DATE",
    "US_SSN": "ID_NUMBER",
    "US_DRIVER_LICENSE": "ID_NUMBER",
    "CREDIT_CARD": "ID_NUMBER",
    "IBAN_CODE": "ID_NUMBER",
    "GPE": "LOCATION",
    "LOCATION": "LOCATION",
    "ORGANIZATION": "ORGANIZATION",
}


def load_presidio_research(path: Any) -> tuple[list[str], list[list[tuple[int, int, str]]],
                                                list[list[tuple[int, int, str]]]]:
    """(texts, gold mapped to our labels, every gold span with its original label) of a presidio-research file."""
    import json
    from pathlib import Path

    records = json.loads(Path(path).read_text(encoding="utf-8"))
    texts, gold, everything = [], [], []
    for record in records:
        texts.append(record["full_text"])
        spans = [(int(s["start_position"]), int(s["end_position"]), str(s["entity_type"])) for s in record["spans"]]
        everything.append(spans)
        gold.append([(s, e, PRESIDIO_RESEARCH_LABELS[label]) for s, e, label in spans
                     if label in PRESIDIO_RESEARCH_LABELS])
    return texts, gold, everything


def over_masking(texts: Sequence[str], predicted: Sequence[Sequence[Any]],
                 gold_any: Sequence[Sequence[Any]]) -> dict[str, Any]:
    """Fraction of non-identifier, non-space characters that a detector masks.

    ``gold_any``: every annotated identifier of any label (scored or not), so
    that masking an annotated age or title is not counted as over-masking.
    """
    masked = clean = 0
    for text, spans, gold_spans in zip(texts, predicted, gold_any, strict=True):
        identifier = np.zeros(len(text), dtype=bool)
        for s, e, _ in _as_triples(gold_spans):
            identifier[s:e] = True
        hit = np.zeros(len(text), dtype=bool)
        for s, e, _ in _as_triples(spans):
            hit[s:e] = True
        visible = np.array([not ch.isspace() for ch in text], dtype=bool) if text else identifier
        candidates = visible & ~identifier
        clean += int(candidates.sum())
        masked += int((candidates & hit).sum())
    return {"masked_chars": masked, "non_identifier_chars": clean,
            "fraction": round(masked / clean, 5) if clean else None}
