"""Inter-annotator agreement: kappas and alpha for labels, Dice and IoU for masks and boxes.

Reference implementations are used where they exist (scikit-learn's
``cohen_kappa_score``, the ``krippendorff`` package); Fleiss' kappa has no
reference among the installed packages, so it is implemented here from
Fleiss (1971) and tested against the paper's worked example and against
Cohen's kappa on two raters with equal marginals (where both reduce to
Scott's pi).

Undefined statistics (one category only, both masks empty) are NaN, never a
flattering 1.0: the caller reports them as "undefined" with the count.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import combinations
from typing import Any

import numpy as np
import pandas as pd

Box = tuple[float, float, float, float]  # COCO: x, y, width, height (pixels)


# --- labels ---------------------------------------------------------------------
def cohen_kappa(first: Sequence[Any], second: Sequence[Any]) -> float:
    """Cohen's kappa of two raters over the same items (scikit-learn)."""
    from sklearn.metrics import cohen_kappa_score

    if len(first) != len(second):
        raise ValueError("both raters must rate the same items")
    if len(first) == 0:
        return math.nan
    a, b = np.asarray(first, dtype=object), np.asarray(second, dtype=object)
    if len(set(a.tolist()) | set(b.tolist())) < 2:
        return math.nan  # one category only: chance agreement is 1 and kappa undefined
    return float(cohen_kappa_score(a.astype(str), b.astype(str)))


def fleiss_kappa(counts: np.ndarray | Sequence[Sequence[float]]) -> float:
    """Fleiss' kappa from an items x categories table of rater counts.

    Every item must have the same number of ratings n >= 2 (Fleiss 1971).
    """
    table = np.asarray(counts, dtype=float)
    if table.ndim != 2 or table.shape[0] == 0:
        raise ValueError("counts must be a non-empty items x categories table")
    raters = table.sum(axis=1)
    n = raters[0]
    if n < 2 or not np.all(raters == n):
        raise ValueError("Fleiss' kappa needs the same number (>= 2) of ratings for every item")
    p_category = table.sum(axis=0) / table.sum()
    p_item = (np.square(table).sum(axis=1) - n) / (n * (n - 1))
    p_observed = p_item.mean()
    p_expected = float(np.square(p_category).sum())
    if math.isclose(p_expected, 1.0):
        return math.nan
    return float((p_observed - p_expected) / (1.0 - p_expected))


def krippendorff_alpha(reliability: np.ndarray, level: str = "nominal") -> float:
    """Krippendorff's alpha (the ``krippendorff`` package); raters x units, NaN = not rated."""
    import krippendorff

    data = np.asarray(reliability, dtype=float)
    values = np.unique(data[~np.isnan(data)])
    pairable = (np.sum(~np.isnan(data), axis=0) >= 2).sum()
    if values.size < 2 or pairable == 0:
        return math.nan
    return float(krippendorff.alpha(reliability_data=data, level_of_measurement=level))


def reliability_matrix(
    long: pd.DataFrame, item: str, rater: str, value: str
) -> tuple[np.ndarray, list[str], list[str], list[str]]:
    """Raters x items matrix of category codes (NaN where a rater did not rate the item)."""
    raters = sorted(long[rater].astype(str).unique())
    items = sorted(long[item].astype(str).unique())
    categories = sorted(long[value].astype(str).unique())
    matrix = np.full((len(raters), len(items)), np.nan)
    if len(long):
        r = pd.Categorical(long[rater].astype(str), categories=raters).codes
        i = pd.Categorical(long[item].astype(str), categories=items).codes
        v = pd.Categorical(long[value].astype(str), categories=categories).codes
        matrix[r, i] = v
    return matrix, raters, items, categories


def _json_float(value: float) -> float | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else round(float(value), 6)


@dataclass
class LabelAgreement:
    """Agreement of several annotators over categorical labels."""

    items: int
    annotations: int
    annotators: list[str]
    pairwise_cohen_kappa: dict[str, float]
    pairwise_percent_agreement: dict[str, float]
    fleiss_kappa: float
    fleiss_items: int
    krippendorff_alpha: float
    unanimous_items: int

    @property
    def mean_cohen_kappa(self) -> float:
        values = [v for v in self.pairwise_cohen_kappa.values() if not math.isnan(v)]
        return float(np.mean(values)) if values else math.nan

    def statistics(self) -> dict[str, float]:
        """The named statistics a guideline threshold can refer to."""
        return {
            "fleiss_kappa": self.fleiss_kappa,
            "krippendorff_alpha": self.krippendorff_alpha,
            "mean_cohen_kappa": self.mean_cohen_kappa,
        }

    def as_dict(self) -> dict[str, Any]:
        return {
            "items": self.items,
            "annotations": self.annotations,
            "annotators": self.annotators,
            "unanimous_items": self.unanimous_items,
            "fleiss_kappa": _json_float(self.fleiss_kappa),
            "fleiss_items": self.fleiss_items,
            "krippendorff_alpha": _json_float(self.krippendorff_alpha),
            "mean_cohen_kappa": _json_float(self.mean_cohen_kappa),
            "pairwise_cohen_kappa": {k: _json_float(v) for k, v in self.pairwise_cohen_kappa.items()},
            "pairwise_percent_agreement": {k: _json_float(v) for k, v in self.pairwise_percent_agreement.items()},
        }


def label_agreement(
    long: pd.DataFrame, item: str = "item_key", rater: str = "annotator_id", value: str = "label"
) -> LabelAgreement:
    """Cohen's kappa per annotator pair, Fleiss' kappa and Krippendorff's alpha (nominal).

    ``long`` has one row per (item, annotator). Fleiss' kappa uses the items
    rated by the most common number of raters (it needs a constant n);
    Krippendorff's alpha uses every item rated at least twice.
    """
    matrix, raters, _, categories = reliability_matrix(long, item, rater, value)
    pairwise, percent = {}, {}
    for a, b in combinations(range(len(raters)), 2):
        both = ~np.isnan(matrix[a]) & ~np.isnan(matrix[b])
        name = f"{raters[a]}~{raters[b]}"
        pairwise[name] = cohen_kappa(matrix[a, both].astype(int), matrix[b, both].astype(int)) if both.any() else math.nan
        percent[name] = float(np.mean(matrix[a, both] == matrix[b, both])) if both.any() else math.nan
    rated = ~np.isnan(matrix)
    per_item = rated.sum(axis=0)
    fleiss, fleiss_items = math.nan, 0
    if per_item.size and per_item.max() >= 2:
        counts_of_n = np.bincount(per_item[per_item >= 2])
        n = int(np.argmax(counts_of_n))
        chosen = per_item == n
        counts = np.zeros((int(chosen.sum()), len(categories)))
        for row in range(len(raters)):
            codes = matrix[row, chosen]
            ok = ~np.isnan(codes)
            np.add.at(counts, (np.nonzero(ok)[0], codes[ok].astype(int)), 1)
        fleiss_items = int(chosen.sum())
        fleiss = fleiss_kappa(counts)
    unanimous = 0
    for column in range(matrix.shape[1]):
        values = matrix[rated[:, column], column]
        unanimous += int(values.size >= 2 and np.all(values == values[0]))
    return LabelAgreement(
        items=int(matrix.shape[1]),
        annotations=int(rated.sum()),
        annotators=raters,
        pairwise_cohen_kappa=pairwise,
        pairwise_percent_agreement=percent,
        fleiss_kappa=fleiss,
        fleiss_items=fleiss_items,
        krippendorff_alpha=krippendorff_alpha(matrix),
        unanimous_items=unanimous,
    )


# --- masks and boxes ----------------------------------------------------------------
def dice(first: np.ndarray, second: np.ndarray) -> float:
    """Dice coefficient of two binary masks; NaN when both are empty."""
    a, b = np.asarray(first, dtype=bool), np.asarray(second, dtype=bool)
    if a.shape != b.shape:
        raise ValueError("masks must have the same shape")
    total = int(a.sum()) + int(b.sum())
    if total == 0:
        return math.nan
    return 2.0 * int(np.logical_and(a, b).sum()) / total


def iou(first: np.ndarray, second: np.ndarray) -> float:
    """Intersection over union (Jaccard) of two binary masks; NaN when both are empty."""
    a, b = np.asarray(first, dtype=bool), np.asarray(second, dtype=bool)
    if a.shape != b.shape:
        raise ValueError("masks must have the same shape")
    union = int(np.logical_or(a, b).sum())
    if union == 0:
        return math.nan
    return int(np.logical_and(a, b).sum()) / union


def box_iou(first: Box | None, second: Box | None) -> float:
    """IoU of two COCO boxes (x, y, w, h); a missing box counts as empty (NaN if both are)."""
    if first is None and second is None:
        return math.nan
    if first is None or second is None:
        return 0.0
    ax, ay, aw, ah = first
    bx, by, bw, bh = second
    ix = max(0.0, min(ax + aw, bx + bw) - max(ax, bx))
    iy = max(0.0, min(ay + ah, by + bh) - max(ay, by))
    inter = ix * iy
    union = aw * ah + bw * bh - inter
    return inter / union if union > 0 else math.nan


def box_dice(first: Box | None, second: Box | None) -> float:
    """Dice of two boxes (as filled regions): 2 IoU / (1 + IoU)."""
    overlap = box_iou(first, second)
    return overlap if math.isnan(overlap) else 2.0 * overlap / (1.0 + overlap)


@dataclass
class OverlapAgreement:
    """Pairwise overlap (Dice/IoU) of annotators' regions, per item and overall."""

    kind: str  # mask | box
    pairs: pd.DataFrame  # item, first, second, dice, iou (NaN where both empty)
    items: int
    annotators: list[str]

    @property
    def compared(self) -> pd.DataFrame:
        return self.pairs.dropna(subset=["dice"])

    @property
    def mean_dice(self) -> float:
        return float(self.compared["dice"].mean()) if len(self.compared) else math.nan

    @property
    def mean_iou(self) -> float:
        return float(self.compared["iou"].mean()) if len(self.compared) else math.nan

    def per_item(self) -> pd.DataFrame:
        """Minimum and mean pairwise Dice/IoU per item (items where every pair is empty get NaN)."""
        if self.pairs.empty:
            return pd.DataFrame(columns=["item", "min_dice", "mean_dice", "min_iou", "mean_iou"])
        grouped = self.pairs.groupby("item")
        return pd.DataFrame(
            {
                "min_dice": grouped["dice"].min(),
                "mean_dice": grouped["dice"].mean(),
                "min_iou": grouped["iou"].min(),
                "mean_iou": grouped["iou"].mean(),
            }
        ).reset_index()

    def statistics(self) -> dict[str, float]:
        return {f"{self.kind}_mean_dice": self.mean_dice, f"{self.kind}_mean_iou": self.mean_iou}

    def as_dict(self) -> dict[str, Any]:
        pairwise = {}
        if len(self.compared):
            for (a, b), group in self.compared.groupby(["first", "second"]):
                pairwise[f"{a}~{b}"] = {"dice": _json_float(group["dice"].mean()), "iou": _json_float(group["iou"].mean())}
        return {
            "kind": self.kind,
            "items": self.items,
            "annotators": self.annotators,
            "pairs_compared": len(self.compared),
            "pairs_both_empty": int(len(self.pairs) - len(self.compared)),
            f"{self.kind}_mean_dice": _json_float(self.mean_dice),
            f"{self.kind}_mean_iou": _json_float(self.mean_iou),
            "pairwise": pairwise,
        }


def mask_agreement(masks: Mapping[str, Mapping[str, np.ndarray]], kind: str = "mask") -> OverlapAgreement:
    """``masks[item][annotator]`` -> pairwise Dice and IoU for every item and annotator pair."""
    rows = []
    annotators: set[str] = set()
    for item, by_annotator in masks.items():
        names = sorted(by_annotator)
        annotators.update(names)
        for a, b in combinations(names, 2):
            rows.append((item, a, b, dice(by_annotator[a], by_annotator[b]), iou(by_annotator[a], by_annotator[b])))
    pairs = pd.DataFrame(rows, columns=["item", "first", "second", "dice", "iou"])
    return OverlapAgreement(kind, pairs, len(masks), sorted(annotators))


def box_agreement(boxes: Mapping[str, Mapping[str, Box | None]]) -> OverlapAgreement:
    """``boxes[item][annotator]`` (None = the annotator saw no lesion) -> pairwise IoU and Dice."""
    rows = []
    annotators: set[str] = set()
    for item, by_annotator in boxes.items():
        names = sorted(by_annotator)
        annotators.update(names)
        for a, b in combinations(names, 2):
            rows.append((item, a, b, box_dice(by_annotator[a], by_annotator[b]), box_iou(by_annotator[a], by_annotator[b])))
    pairs = pd.DataFrame(rows, columns=["item", "first", "second", "dice", "iou"])
    return OverlapAgreement("box", pairs, len(boxes), sorted(annotators))


# --- text entities --------------------------------------------------------------------
Span = tuple[int, int, str]  # start, end (exclusive), entity type


def span_f1(first: Iterable[Span], second: Iterable[Span]) -> float:
    """Exact-match F1 of two annotators' (start, end, type) sets; NaN when both are empty."""
    a, b = set(first), set(second)
    if not a and not b:
        return math.nan
    return 2.0 * len(a & b) / (len(a) + len(b))


def character_labels(length: int, spans: Iterable[Span], types: Sequence[str]) -> np.ndarray:
    """One code per character: 0 = outside any entity, i + 1 = ``types[i]``."""
    codes = np.zeros(length, dtype=np.int16)
    index = {t: i + 1 for i, t in enumerate(types)}
    for start, end, entity_type in spans:
        codes[max(0, start) : min(length, end)] = index[entity_type]
    return codes


@dataclass
class EntityAgreement:
    documents: int
    annotators: list[str]
    char_krippendorff_alpha: float
    char_fleiss_kappa: float
    char_pairwise_cohen_kappa: dict[str, float]
    pairwise_entity_f1: dict[str, float]
    per_document: pd.DataFrame = field(repr=False)  # document, min_f1, mean_f1

    @property
    def entity_f1(self) -> float:
        values = [v for v in self.pairwise_entity_f1.values() if not math.isnan(v)]
        return float(np.mean(values)) if values else math.nan

    def statistics(self) -> dict[str, float]:
        return {
            "char_krippendorff_alpha": self.char_krippendorff_alpha,
            "char_fleiss_kappa": self.char_fleiss_kappa,
            "entity_f1": self.entity_f1,
        }

    def as_dict(self) -> dict[str, Any]:
        return {
            "documents": self.documents,
            "annotators": self.annotators,
            "char_krippendorff_alpha": _json_float(self.char_krippendorff_alpha),
            "char_fleiss_kappa": _json_float(self.char_fleiss_kappa),
            "char_pairwise_cohen_kappa": {k: _json_float(v) for k, v in self.char_pairwise_cohen_kappa.items()},
            "entity_f1": _json_float(self.entity_f1),
            "pairwise_entity_f1": {k: _json_float(v) for k, v in self.pairwise_entity_f1.items()},
        }


def entity_agreement(
    documents: Mapping[str, tuple[int, Mapping[str, Iterable[Span]]]], types: Sequence[str]
) -> EntityAgreement:
    """Agreement on entity spans: character-level kappa/alpha and exact-span F1.

    ``documents[doc] = (text length, {annotator: spans})``. Character-level
    statistics label every character of every document with its entity type
    (or O) per annotator, the usual token-level reduction for span tasks.
    """
    annotators = sorted({a for _, by in documents.values() for a in by})
    column_of = {a: i for i, a in enumerate(annotators)}
    total = sum(length for length, by in documents.values() if len(by) >= 2)
    matrix = np.full((len(annotators), total), np.nan)
    offset = 0
    per_doc = []
    f1_sums: dict[str, list[int]] = {}
    for doc, (length, by_annotator) in sorted(documents.items()):
        if len(by_annotator) < 2:
            continue
        spans = {a: set(s) for a, s in by_annotator.items()}
        for a, s in spans.items():
            matrix[column_of[a], offset : offset + length] = character_labels(length, s, types)
        offset += length
        scores = []
        for a, b in combinations(sorted(spans), 2):
            score = span_f1(spans[a], spans[b])
            scores.append(score)
            name = f"{a}~{b}"
            sums = f1_sums.setdefault(name, [0, 0])
            sums[0] += 2 * len(spans[a] & spans[b])
            sums[1] += len(spans[a]) + len(spans[b])
        valid = [s for s in scores if not math.isnan(s)]
        per_doc.append((doc, min(valid) if valid else math.nan, float(np.mean(valid)) if valid else math.nan))
    pairwise_kappa = {}
    for a, b in combinations(range(len(annotators)), 2):
        both = ~np.isnan(matrix[a]) & ~np.isnan(matrix[b])
        pairwise_kappa[f"{annotators[a]}~{annotators[b]}"] = (
            cohen_kappa(matrix[a, both].astype(int), matrix[b, both].astype(int)) if both.any() else math.nan
        )
    rated = ~np.isnan(matrix)
    fleiss = math.nan
    if rated.size:
        per_unit = rated.sum(axis=0)
        full = per_unit == len(annotators)
        if full.any() and len(annotators) >= 2:
            counts = np.zeros((int(full.sum()), len(types) + 1))
            for row in range(len(annotators)):
                np.add.at(counts, (np.arange(int(full.sum())), matrix[row, full].astype(int)), 1)
            fleiss = fleiss_kappa(counts)
    pairwise_f1 = {name: (s[0] / s[1] if s[1] else math.nan) for name, s in f1_sums.items()}
    return EntityAgreement(
        documents=len(per_doc),
        annotators=annotators,
        char_krippendorff_alpha=krippendorff_alpha(matrix) if matrix.size else math.nan,
        char_fleiss_kappa=fleiss,
        char_pairwise_cohen_kappa=pairwise_kappa,
        pairwise_entity_f1=pairwise_f1,
        per_document=pd.DataFrame(per_doc, columns=["document", "min_f1", "mean_f1"]),
    )


# --- thresholds -------------------------------------------------------------------------
@dataclass(frozen=True)
class ThresholdResult:
    statistic: str
    value: float | None
    threshold: float
    passed: bool


def compare_with_thresholds(statistics: Mapping[str, float], thresholds: Mapping[str, float]) -> list[ThresholdResult]:
    """Each configured threshold against its statistic; an undefined statistic fails."""
    results = []
    for name, threshold in sorted(thresholds.items()):
        value = statistics.get(name, math.nan)
        defined = value is not None and not math.isnan(value)
        results.append(ThresholdResult(name, _json_float(value) if defined else None, float(threshold), bool(defined and value >= threshold)))
    return results
