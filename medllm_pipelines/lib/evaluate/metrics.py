"""Binary classification metrics, ROC points, bootstrap intervals and a declared baseline (V1, V3-V5).

Every number comes from scikit-learn so that it can be checked against the
reference implementation; this module only fixes the conventions around it:
a row is predicted positive when its score is >= the threshold, a metric
whose denominator is empty is None with a stated reason (never a silent 0),
and every value is a plain Python number, ready for JSON.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import rankdata
from sklearn.exceptions import UndefinedMetricWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    precision_score,
    recall_score,
    roc_auc_score,
    roc_curve,
)

from medllm_pipelines.lib.curate.preprocessing import FittedPreprocessing

ArrayLike = Sequence[float] | np.ndarray
MetricFn = Callable[[np.ndarray, np.ndarray], float | None]

SINGLE_CLASS_REASON = "y_true holds only one class; ROC-AUC needs both positives and negatives"
UNDEFINED_REASONS = {
    "sensitivity": "no positive cases in y_true (TP + FN = 0)",
    "specificity": "no negative cases in y_true (TN + FP = 0)",
    "precision": "no positive predictions at this threshold (TP + FP = 0)",
    "f1": "precision and sensitivity are both zero or undefined (2TP + FP + FN = 0)",
}


def validated_binary(y_true: ArrayLike, y_score: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    truth = np.asarray(y_true)
    score = np.asarray(y_score, dtype=np.float64)
    if truth.ndim != 1 or score.ndim != 1:
        raise ValueError("y_true and y_score must be one-dimensional (use the positive-class column)")
    if len(truth) != len(score):
        raise ValueError(f"y_true has {len(truth)} rows but y_score has {len(score)}")
    if len(truth) == 0:
        raise ValueError("no rows to evaluate")
    if not np.isfinite(score).all():
        raise ValueError(f"y_score holds {int((~np.isfinite(score)).sum())} NaN or infinite values")
    if not np.isin(truth, [0, 1]).all():
        raise ValueError("y_true must hold only 0 and 1")
    return truth.astype(np.int64), score


def _number_or_none(value: float) -> float | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


def binary_classification_metrics(y_true: ArrayLike, y_score: ArrayLike, threshold: float = 0.5) -> dict[str, Any]:
    """Accuracy, sensitivity, specificity, precision, F1, ROC-AUC and counts at one threshold.

    Undefined metrics are None and listed under "undefined" with the reason,
    so a report can say why a cell is empty.
    """
    truth, score = validated_binary(y_true, y_score)
    predicted = (score >= threshold).astype(np.int64)
    tn, fp, fn, tp = (int(v) for v in confusion_matrix(truth, predicted, labels=[0, 1]).ravel())
    n_positive = int(truth.sum())
    metrics: dict[str, Any] = {
        "threshold": float(threshold),
        "n": int(len(truth)),
        "n_positive": n_positive,
        "n_negative": int(len(truth) - n_positive),
        "prevalence": n_positive / len(truth),
        "tn": tn,
        "fp": fp,
        "fn": fn,
        "tp": tp,
        "accuracy": float(accuracy_score(truth, predicted)),
        "sensitivity": _number_or_none(recall_score(truth, predicted, pos_label=1, zero_division=np.nan)),
        "specificity": _number_or_none(recall_score(truth, predicted, pos_label=0, zero_division=np.nan)),
        "precision": _number_or_none(precision_score(truth, predicted, pos_label=1, zero_division=np.nan)),
        "f1": _number_or_none(f1_score(truth, predicted, pos_label=1, zero_division=np.nan)),
    }
    undefined = {name: reason for name, reason in UNDEFINED_REASONS.items() if metrics[name] is None}
    if 0 < n_positive < len(truth):
        metrics["roc_auc"] = float(roc_auc_score(truth, score))
    else:
        metrics["roc_auc"] = None
        undefined["roc_auc"] = SINGLE_CLASS_REASON
    metrics["undefined"] = undefined
    return metrics


def roc_curve_points(y_true: ArrayLike, y_score: ArrayLike) -> dict[str, Any]:
    """FPR/TPR pairs for plotting; the first threshold (infinite in scikit-learn) is None for JSON.

    With one class only there is no curve: empty lists and a reason.
    """
    truth, score = validated_binary(y_true, y_score)
    if len(np.unique(truth)) < 2:
        return {"fpr": [], "tpr": [], "thresholds": [], "auc": None, "undefined_reason": SINGLE_CLASS_REASON}
    fpr, tpr, thresholds = roc_curve(truth, score, drop_intermediate=True)
    return {
        "fpr": [float(v) for v in fpr],
        "tpr": [float(v) for v in tpr],
        "thresholds": [float(v) if np.isfinite(v) else None for v in thresholds],
        "auc": float(roc_auc_score(truth, score)),
        "undefined_reason": None,
    }


def roc_auc_or_none(y_true: np.ndarray, y_score: np.ndarray) -> float | None:
    """ROC-AUC by the Mann-Whitney rank formula, or None for a one-class sample.

    Equal to scikit-learn's roc_auc_score (ties count one half; a test checks
    it to 1e-9) at ~1/30 of its cost, which is what makes 1000 bootstrap
    draws per model take well under a second.
    """
    truth = np.asarray(y_true)
    n_positive = int(truth.sum())
    n_negative = len(truth) - n_positive
    if n_positive == 0 or n_negative == 0:
        return None
    ranks = rankdata(y_score)
    return float((ranks[truth == 1].sum() - n_positive * (n_positive + 1) / 2.0) / (n_positive * n_negative))


def _metric_on_draw(metric_fn: MetricFn, truth: np.ndarray, score: np.ndarray) -> float | None:
    """The metric on one bootstrap draw; None where it is undefined on that draw.

    A ValueError on a one-class draw (what scikit-learn's roc_auc_score raises)
    counts as undefined; any other error propagates.
    """
    try:
        with warnings.catch_warnings():
            # scikit-learn warns on every one-class draw; those draws are skipped by design.
            warnings.simplefilter("ignore", UndefinedMetricWarning)
            value = metric_fn(truth, score)
    except ValueError:
        if len(np.unique(truth)) < 2:
            return None
        raise
    if value is None or math.isnan(value):
        return None
    return float(value)


def _percentile_interval(values: list[float], level: float) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    tail = (1.0 - level) / 2.0 * 100.0
    low, high = np.percentile(np.asarray(values), [tail, 100.0 - tail])
    return float(low), float(high)


def bootstrap_ci(
    metric_fn: MetricFn,
    y_true: ArrayLike,
    y_score: ArrayLike,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float | None, float | None]:
    """Percentile bootstrap interval of a metric over rows resampled with replacement (V3).

    Draws where the metric is undefined (None/NaN, e.g. one class for AUC) are
    skipped; (None, None) when every draw was undefined.
    """
    truth, score = validated_binary(y_true, y_score)
    rng = np.random.default_rng(seed)
    values: list[float] = []
    for _ in range(n_boot):
        rows = rng.integers(0, len(truth), len(truth))
        value = _metric_on_draw(metric_fn, truth[rows], score[rows])
        if value is not None:
            values.append(value)
    return _percentile_interval(values, level)


@dataclass
class LogisticBaseline:
    """The declared baseline: L2 logistic regression on the model's own preprocessing (the curate stage's)."""

    preprocessing: FittedPreprocessing
    classifier: LogisticRegression

    def predict_proba(self, frame: pd.DataFrame) -> np.ndarray:
        """Probability of label 1 per row, shape (n,), the same contract as TabularPredictor."""
        if len(frame) == 0:
            return np.empty(0, dtype=np.float64)
        return self.classifier.predict_proba(self.preprocessing.transform_array(frame))[:, 1].astype(np.float64)

    def describe(self) -> str:
        return (
            f"logistic regression (scikit-learn, L2 penalty, C={self.classifier.C}, solver={self.classifier.solver}) "
            "on the model's preprocessing (fitted by the curate stage on the training split), fitted on the training split only"
        )


def fit_logistic_baseline(
    train_frame: pd.DataFrame,
    preprocessing: FittedPreprocessing,
    label_column: str,
    *,
    split_column: str = "split",
    train_split: str = "train",
    C: float = 1.0,
) -> LogisticBaseline:
    """Fit the baseline on train rows only, on the inputs ``preprocessing`` (fitted by the curate stage) gives.

    Pass the training split alone; a frame whose `split_column` holds any other
    split is refused, because fitting on it would leak evaluation data.
    """
    if split_column in train_frame.columns:
        other_splits = sorted(set(train_frame[split_column].dropna().astype(str)) - {train_split})
        if other_splits:
            raise ValueError(f"train_frame holds rows of other splits {other_splits}; pass the training split only")
    labels = pd.to_numeric(train_frame[label_column], errors="coerce")
    if not labels.isin([0, 1]).all():
        raise ValueError(f"{label_column!r} must hold only 0 and 1 in the training split")
    if labels.nunique() < 2:
        raise ValueError("the training split holds only one class; no baseline can be fitted")
    classifier = LogisticRegression(C=C, max_iter=5000)
    classifier.fit(preprocessing.transform_array(train_frame), labels.to_numpy(dtype=np.int64))
    return LogisticBaseline(preprocessing=preprocessing, classifier=classifier)
