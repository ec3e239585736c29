"""Curves and operating points of a binary classifier: ROC, precision-recall, calibration, decision curve (V4).

Conventions shared with `metrics` and `task_metrics`: scores are probabilities
of the positive class, and a row is predicted positive when its score is >=
the threshold.

- Reliability diagram: ``strategy="uniform"`` cuts [0, 1] into equal-width
  bins, ``"quantile"`` into bins holding (about) equal numbers of rows, with
  edges at the score quantiles. A score on an inner edge falls in the lower
  bin (scikit-learn's ``calibration_curve``); ties on a quantile edge can make
  equal-count bins unequal, so every bin reports its count.
- Expected calibration error (ECE): sum over bins of (n_bin / n) *
  |observed positive rate - mean predicted probability|, for the positive
  class (not for the top-1 class), i.e. torchmetrics' ``BinaryCalibrationError``
  with ``norm="l1"`` on the same equal-width bins.
- Decision curve (Vickers & Elkin 2006): net benefit at threshold t is
  TP/n - FP/n * t / (1 - t); "treat all" is prevalence - (1 - prevalence) *
  t / (1 - t); "treat none" is 0.
- The decision threshold is chosen on the VALIDATION split, never on test:
  a threshold tuned on the test split makes every test metric optimistic.
  `choose_threshold` refuses a split named test.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.metrics import precision_recall_curve

from medllm_pipelines.lib.evaluate.metrics import roc_curve_points
from medllm_pipelines.lib.evaluate.task_metrics import ArrayLike, validated_binary_inputs, average_precision_or_none

__all__ = [
    "ThresholdChoice",
    "choose_threshold",
    "confusion_matrix_at",
    "decision_curve",
    "expected_calibration_error",
    "precision_recall_points",
    "reliability_diagram",
    "roc_curve_points",
]

NO_POSITIVES_REASON = "y_true holds no positive case; precision-recall needs at least one"
DEFAULT_THRESHOLDS = np.round(np.arange(0.01, 1.0, 0.01), 2)


def precision_recall_points(y_true: ArrayLike, y_score: ArrayLike) -> dict[str, Any]:
    """Precision/recall pairs (scikit-learn's curve, recall decreasing) and average precision."""
    truth, score = validated_binary_inputs(y_true, y_score)
    if truth.sum() == 0:
        return {"precision": [], "recall": [], "thresholds": [], "average_precision": None,
                "undefined_reason": NO_POSITIVES_REASON}
    precision, recall, thresholds = precision_recall_curve(truth, score)
    return {
        "precision": [float(v) for v in precision],
        "recall": [float(v) for v in recall],
        "thresholds": [float(v) for v in thresholds],
        "average_precision": average_precision_or_none(truth, score),
        "undefined_reason": None,
    }


def _bin_edges(score: np.ndarray, n_bins: int, strategy: str) -> np.ndarray:
    if n_bins < 1:
        raise ValueError("n_bins must be at least 1")
    if strategy == "uniform":
        return np.linspace(0.0, 1.0, n_bins + 1)
    if strategy == "quantile":
        return np.percentile(score, np.linspace(0.0, 100.0, n_bins + 1))
    raise ValueError(f"strategy must be 'uniform' or 'quantile', got {strategy!r}")


def reliability_diagram(
    y_true: ArrayLike, y_score: ArrayLike, n_bins: int = 10, strategy: str = "uniform"
) -> dict[str, Any]:
    """Per bin: edges, count, mean predicted probability and observed positive rate (None for an empty bin)."""
    truth, score = validated_binary_inputs(y_true, y_score)
    edges = _bin_edges(score, n_bins, strategy)
    bin_ids = np.searchsorted(edges[1:-1], score)
    counts = np.bincount(bin_ids, minlength=n_bins)
    score_sums = np.bincount(bin_ids, weights=score, minlength=n_bins)
    positive_sums = np.bincount(bin_ids, weights=truth.astype(np.float64), minlength=n_bins)
    bins = []
    for index in range(n_bins):
        count = int(counts[index])
        bins.append(
            {
                "lower": float(edges[index]),
                "upper": float(edges[index + 1]),
                "count": count,
                "mean_predicted": float(score_sums[index] / count) if count else None,
                "observed_rate": float(positive_sums[index] / count) if count else None,
            }
        )
    return {"strategy": strategy, "n_bins": n_bins, "n": int(len(truth)), "bins": bins}


def expected_calibration_error(
    y_true: ArrayLike, y_score: ArrayLike, n_bins: int = 10, strategy: str = "uniform"
) -> float:
    """Bin-weighted mean of |observed positive rate - mean predicted probability| over the diagram's bins."""
    diagram = reliability_diagram(y_true, y_score, n_bins, strategy)
    n = diagram["n"]
    return float(
        sum(
            bin_["count"] / n * abs(bin_["observed_rate"] - bin_["mean_predicted"])
            for bin_ in diagram["bins"]
            if bin_["count"]
        )
    )


def decision_curve(
    y_true: ArrayLike, y_score: ArrayLike, thresholds: Sequence[float] | np.ndarray = DEFAULT_THRESHOLDS
) -> dict[str, Any]:
    """Net benefit of the model, of treating everyone and of treating no one, per threshold probability."""
    truth, score = validated_binary_inputs(y_true, y_score)
    grid = np.asarray(thresholds, dtype=np.float64)
    if grid.ndim != 1 or len(grid) == 0 or grid.min() <= 0.0 or grid.max() >= 1.0:
        raise ValueError("thresholds must be a non-empty list of probabilities strictly between 0 and 1")
    n = len(truth)
    prevalence = truth.mean()
    positive = truth == 1
    model, treat_all = [], []
    for threshold in grid:
        odds = threshold / (1.0 - threshold)
        predicted = score >= threshold
        tp = np.sum(predicted & positive)
        fp = np.sum(predicted & ~positive)
        model.append(float(tp / n - fp / n * odds))
        treat_all.append(float(prevalence - (1.0 - prevalence) * odds))
    return {
        "thresholds": [float(t) for t in grid],
        "net_benefit_model": model,
        "net_benefit_treat_all": treat_all,
        "net_benefit_treat_none": [0.0] * len(grid),
        "prevalence": float(prevalence),
        "n": int(n),
    }


def confusion_matrix_at(y_true: ArrayLike, y_score: ArrayLike, threshold: float) -> dict[str, Any]:
    """Counts at one threshold; ``matrix`` is [[TN, FP], [FN, TP]] (rows truth 0/1, columns predicted 0/1)."""
    truth, score = validated_binary_inputs(y_true, y_score)
    predicted = score >= threshold
    positive = truth == 1
    tn = int(np.sum(~predicted & ~positive))
    fp = int(np.sum(predicted & ~positive))
    fn = int(np.sum(~predicted & positive))
    tp = int(np.sum(predicted & positive))
    return {"threshold": float(threshold), "tn": tn, "fp": fp, "fn": fn, "tp": tp, "matrix": [[tn, fp], [fn, tp]]}


@dataclass(frozen=True)
class ThresholdChoice:
    """The threshold a rule picked on the validation split, and what it achieved there."""

    threshold: float
    rule: str
    criterion: float
    sensitivity: float
    specificity: float
    split: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "threshold": self.threshold,
            "rule": self.rule,
            "criterion": self.criterion,
            "sensitivity": self.sensitivity,
            "specificity": self.specificity,
            "chosen_on": self.split,
        }


_SENSITIVITY_RULE = re.compile(r"^sensitivity\s*>=\s*(0(?:\.\d+)?|1(?:\.0+)?)$")


def choose_threshold(
    y_val: ArrayLike, p_val: ArrayLike, rule: str = "youden", *, split: str = "validation"
) -> ThresholdChoice:
    """Pick the operating threshold on the validation split (never on test).

    Candidates are the distinct validation scores (a row is positive at score >=
    threshold). ``"youden"`` maximises sensitivity + specificity - 1, ``"f1"``
    maximises F1, ``"sensitivity>=x"`` takes the highest threshold whose
    sensitivity is at least x (the best specificity under that constraint).
    Ties go to the highest threshold (fewer alarms).
    """
    if "test" in split.lower():
        raise ValueError("the decision threshold is chosen on the validation split, never on the test split")
    truth, score = validated_binary_inputs(y_val, p_val)
    n_positive = int(truth.sum())
    n_negative = len(truth) - n_positive
    if n_positive == 0 or n_negative == 0:
        raise ValueError("the validation split needs both classes to choose a threshold")
    candidates = np.unique(score)[::-1]  # high to low
    order = np.argsort(-score, kind="mergesort")
    sorted_score = score[order]
    tp_sorted = np.cumsum(truth[order])
    # rows with score >= candidate: the last index of that score in the descending order
    predicted_count = np.searchsorted(-sorted_score, -candidates, side="right")
    tp = tp_sorted[predicted_count - 1].astype(np.float64)
    fp = predicted_count - tp
    sensitivity = tp / n_positive
    specificity = (n_negative - fp) / n_negative
    match = _SENSITIVITY_RULE.match(rule.replace(" ", ""))
    if rule == "youden":
        criterion = sensitivity + specificity - 1.0
        best = int(np.argmax(criterion))
    elif rule == "f1":
        criterion = 2 * tp / (predicted_count + n_positive)  # 2TP / (2TP + FP + FN)
        best = int(np.argmax(criterion))
    elif match:
        target = float(match.group(1))
        meets = np.flatnonzero(sensitivity >= target)
        best = int(meets[0])  # sensitivity grows as the threshold falls; the first is the highest threshold
        criterion = sensitivity
    else:
        raise ValueError(f"unknown rule {rule!r}; use 'youden', 'f1' or 'sensitivity>=x' with x in [0, 1]")
    return ThresholdChoice(
        threshold=float(candidates[best]),
        rule=rule,
        criterion=float(criterion[best]),
        sensitivity=float(sensitivity[best]),
        specificity=float(specificity[best]),
        split=split,
    )
