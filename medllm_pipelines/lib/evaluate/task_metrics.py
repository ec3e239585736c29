"""The metric set of each task family, with undefined values made explicit (V1, V2).

Every set is a `MetricSet`: ``values`` maps a metric name to a float, or to
None when the metric is undefined on these data, and then ``undefined`` says
why. An undefined metric is never reported as 0: a report that shows 0.0 for
the ROC-AUC of a one-class test split would look like a result.

The numbers are computed here with numpy (ROC-AUC by the Mann-Whitney rank
formula shared with `metrics.roc_auc_or_none`), and the tests check each one
against an independent reference implementation (scikit-learn, torchmetrics,
MONAI) on seeded random data, so that a convention chosen here (ties,
empty masks, one-class samples) is a stated choice, not an accident.

Conventions:

- binary classification: a row is predicted positive when its score is >=
  the threshold (as in `metrics.binary_classification_metrics`); scores must
  be probabilities in [0, 1] because the Brier score is computed on them.
  PR-AUC is average precision (scikit-learn's step-wise definition, no
  interpolation).
- multiclass (triage): classes are ranked per row by probability; exact ties
  rank the higher class index first (scikit-learn's ``top_k_accuracy_score``
  convention), and the top-ranked class is the prediction used for macro-F1.
  Macro-F1 averages F1 = 2TP / (2TP + FP + FN) over the classes that occur in
  the labels or the predictions (scikit-learn's ``average="macro"``); a class
  absent from both has no F1 and is listed, not counted as 0. Top-k accuracy
  with k >= the number of classes is undefined (every row would be a hit).
- regression: R^2 = 1 - SS_res / SS_tot; undefined when the truth is constant
  (scikit-learn would report 0.0 or 1.0 there, which is not a measurement).
- segmentation: binary masks, one per image; Dice, IoU and HD95 per image,
  then the mean over the images where the value is defined. As in MONAI's
  ``DiceMetric``/``MeanIoU`` with ``ignore_empty=True`` (their default), an
  image whose ground truth is empty has no Dice or IoU; with
  ``ignore_empty=False`` it scores 1 when the prediction is empty too and 0
  otherwise (MONAI's other convention). HD95 (``percentile=95``, symmetric,
  the larger of the two directed 95th percentiles of the distances between
  mask edges, as MONAI's ``compute_hausdorff_distance``) is undefined when
  either mask is empty: MONAI 1.6 returns NaN for both cases (with a
  percentile; inf for the plain maximum when one mask is empty), and neither
  can enter a mean. Such images are counted by reason; a missed lesion still
  shows in Dice (0 for that image).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

from medllm_pipelines.lib.evaluate.metrics import SINGLE_CLASS_REASON, validated_binary, roc_auc_or_none

ArrayLike = Sequence[float] | np.ndarray

BINARY_METRICS = ("accuracy", "sensitivity", "specificity", "precision", "f1", "roc_auc", "pr_auc", "brier")
REGRESSION_METRICS = ("mse", "mae", "rmse", "r2")
SEGMENTATION_METRICS = ("dice", "iou", "hd95")

BINARY_UNDEFINED_REASONS = {
    "sensitivity": "no positive cases in y_true (TP + FN = 0)",
    "specificity": "no negative cases in y_true (TN + FP = 0)",
    "precision": "no positive predictions at this threshold (TP + FP = 0)",
    "f1": "no positive cases and no positive predictions (2TP + FP + FN = 0)",
    "roc_auc": SINGLE_CLASS_REASON,
    "pr_auc": "no positive cases in y_true; average precision needs at least one",
}
R2_CONSTANT_REASON = "y_true is constant (total sum of squares is 0); R^2 is undefined"
EMPTY_TRUTH_REASON = "ground truth mask is empty (MONAI ignore_empty=True convention)"
HD_BOTH_EMPTY_REASON = "both masks are empty: no surface to measure (MONAI: NaN)"
HD_ONE_EMPTY_REASON = "exactly one mask is empty: the distance to an empty surface is infinite (MONAI: NaN for HD95)"


@dataclass(frozen=True)
class MetricSet:
    """One task's metrics on one sample: a value or None (with a reason) per name.

    ``counts`` holds the sample sizes a reader needs to judge a value
    (positives, images with a defined Dice, ...); ``settings`` the choices
    it was computed under (threshold, k, ...).
    """

    task: str
    values: dict[str, float | None]
    undefined: dict[str, str] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)

    def __getitem__(self, name: str) -> float | None:
        return self.values[name]

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: plain floats, None for undefined, the reasons alongside."""
        return {
            "task": self.task,
            "values": dict(self.values),
            "undefined": dict(self.undefined),
            "counts": dict(self.counts),
            "settings": dict(self.settings),
        }


def _set(task: str, values: dict[str, float | None], reasons: Mapping[str, str], **extra: Any) -> MetricSet:
    cleaned = {name: (None if value is None or math.isnan(value) else float(value)) for name, value in values.items()}
    undefined = {name: reasons[name] for name, value in cleaned.items() if value is None}
    return MetricSet(task=task, values=cleaned, undefined=undefined, **extra)


def _ratio(numerator: float, denominator: float) -> float | None:
    return None if denominator == 0 else numerator / denominator


# --- binary classification -------------------------------------------------------------------------------------


def validated_binary_inputs(y_true: ArrayLike, y_score: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """0/1 labels and probability scores as arrays (``metrics.validated_binary``'s checks), or a ValueError that says what
    is wrong; scores must also be probabilities here (the Brier score is computed on them)."""
    truth, score = validated_binary(y_true, y_score)
    if score.min() < 0.0 or score.max() > 1.0:
        raise ValueError("y_score must be probabilities in [0, 1] (the Brier score is computed on them)")
    return truth, score


def average_precision_or_none(y_true: np.ndarray, y_score: np.ndarray) -> float | None:
    """Sum over distinct score thresholds (high to low) of (R_k - R_{k-1}) * P_k; None with no positives."""
    truth = np.asarray(y_true)
    n_positive = int(truth.sum())
    if n_positive == 0:
        return None
    order = np.argsort(-np.asarray(y_score, dtype=np.float64), kind="mergesort")
    sorted_score = np.asarray(y_score, dtype=np.float64)[order]
    sorted_truth = truth[order]
    # the last row of each run of equal scores closes one threshold
    closes = np.r_[np.diff(sorted_score) != 0, True]
    tp = np.cumsum(sorted_truth)[closes]
    predicted = (np.arange(1, len(truth) + 1))[closes]
    precision = tp / predicted
    recall = tp / n_positive
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def binary_metric_set(y_true: ArrayLike, y_score: ArrayLike, threshold: float = 0.5) -> MetricSet:
    """Accuracy, sensitivity, specificity, precision, F1 at `threshold`; ROC-AUC, PR-AUC and Brier over all scores."""
    truth, score = validated_binary_inputs(y_true, y_score)
    predicted = score >= threshold
    positive = truth == 1
    tp = int(np.sum(predicted & positive))
    fp = int(np.sum(predicted & ~positive))
    fn = int(np.sum(~predicted & positive))
    tn = int(np.sum(~predicted & ~positive))
    n = len(truth)
    values = {
        "accuracy": (tp + tn) / n,
        "sensitivity": _ratio(tp, tp + fn),
        "specificity": _ratio(tn, tn + fp),
        "precision": _ratio(tp, tp + fp),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "roc_auc": roc_auc_or_none(truth, score),
        "pr_auc": average_precision_or_none(truth, score),
        "brier": float(np.mean((score - truth) ** 2)),
    }
    counts = {"n": n, "n_positive": tp + fn, "n_negative": tn + fp, "tp": tp, "fp": fp, "fn": fn, "tn": tn}
    return _set("binary", values, BINARY_UNDEFINED_REASONS, counts=counts, settings={"threshold": float(threshold)})


# --- multiclass (triage) ---------------------------------------------------------------------------------------


def _multiclass_inputs(y_true: ArrayLike, probabilities: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    truth = np.asarray(y_true)
    proba = np.asarray(probabilities, dtype=np.float64)
    if proba.ndim != 2 or truth.ndim != 1:
        raise ValueError("probabilities must be (n_rows, n_classes) and y_true one-dimensional")
    if proba.shape[1] < 2:
        raise ValueError("probabilities need at least two class columns")
    if len(truth) != len(proba):
        raise ValueError(f"y_true has {len(truth)} rows but probabilities has {len(proba)}")
    if len(truth) == 0:
        raise ValueError("no rows to evaluate")
    if not np.isfinite(proba).all() or proba.min() < 0.0:
        raise ValueError("probabilities must be finite and non-negative")
    if not np.allclose(proba.sum(axis=1), 1.0, atol=1e-4):
        raise ValueError("each row of probabilities must sum to 1 (pass softmax outputs, not logits)")
    if not np.issubdtype(truth.dtype, np.integer) or truth.min() < 0 or truth.max() >= proba.shape[1]:
        raise ValueError(f"y_true must hold class indices 0..{proba.shape[1] - 1}")
    return truth.astype(np.int64), proba


def ranked_classes(probabilities: np.ndarray) -> np.ndarray:
    """Class indices per row from most to least probable; ties put the higher index first (scikit-learn)."""
    return np.argsort(np.asarray(probabilities, dtype=np.float64), axis=1, kind="mergesort")[:, ::-1]


def multiclass_metric_set(y_true: ArrayLike, probabilities: np.ndarray, top_k: Sequence[int] = (1, 3)) -> MetricSet:
    """Top-k accuracies (``top1_accuracy``, ``top3_accuracy``, ...) and macro-F1 from a probability matrix."""
    truth, proba = _multiclass_inputs(y_true, probabilities)
    n_classes = proba.shape[1]
    ranked = ranked_classes(proba)
    values: dict[str, float | None] = {}
    reasons: dict[str, str] = {}
    for k in top_k:
        name = f"top{k}_accuracy"
        if k < 1:
            raise ValueError("top_k values must be >= 1")
        if k >= n_classes and k > 1:
            values[name] = None
            reasons[name] = f"k={k} >= {n_classes} classes: every row is a hit, so the value says nothing"
        else:
            values[name] = float(np.mean((ranked[:, :k] == truth[:, None]).any(axis=1)))
    predicted = ranked[:, 0]
    f1_per_class: list[float] = []
    absent: list[int] = []
    for label in range(n_classes):
        tp = int(np.sum((predicted == label) & (truth == label)))
        fp = int(np.sum((predicted == label) & (truth != label)))
        fn = int(np.sum((predicted != label) & (truth == label)))
        if 2 * tp + fp + fn == 0:
            absent.append(label)
        else:
            f1_per_class.append(2 * tp / (2 * tp + fp + fn))
    values["macro_f1"] = float(np.mean(f1_per_class))  # at least one class is always present
    counts = {"n": len(truth), "n_classes": n_classes, "n_classes_in_macro_f1": len(f1_per_class)}
    settings = {"top_k": [int(k) for k in top_k], "classes_absent_from_macro_f1": absent}
    return _set("multiclass", values, reasons, counts=counts, settings=settings)


# --- regression ------------------------------------------------------------------------------------------------


def regression_metric_set(y_true: ArrayLike, y_pred: ArrayLike) -> MetricSet:
    """MSE, MAE, RMSE and R^2 (row V2)."""
    truth = np.asarray(y_true, dtype=np.float64)
    pred = np.asarray(y_pred, dtype=np.float64)
    if truth.ndim != 1 or pred.shape != truth.shape:
        raise ValueError(
            f"y_true and y_pred must be one-dimensional of equal length, got {truth.shape} and {pred.shape}"
        )
    if len(truth) == 0:
        raise ValueError("no rows to evaluate")
    if not (np.isfinite(truth).all() and np.isfinite(pred).all()):
        raise ValueError("y_true and y_pred must be finite")
    residual = truth - pred
    ss_res = float(np.sum(residual**2))
    ss_tot = float(np.sum((truth - truth.mean()) ** 2))
    mse = ss_res / len(truth)
    values = {
        "mse": mse,
        "mae": float(np.mean(np.abs(residual))),
        "rmse": math.sqrt(mse),
        "r2": None if ss_tot == 0.0 else 1.0 - ss_res / ss_tot,
    }
    return _set("regression", values, {"r2": R2_CONSTANT_REASON}, counts={"n": len(truth)})


# --- segmentation ----------------------------------------------------------------------------------------------


def _mask_edges(mask: np.ndarray) -> np.ndarray:
    """Foreground pixels with a background 4-/6-neighbour or on the image border (MONAI's get_mask_edges)."""
    return mask ^ ndimage.binary_erosion(mask)


def hausdorff_distance(
    pred_mask: np.ndarray, true_mask: np.ndarray, percentile: float = 95.0, spacing: Sequence[float] | None = None
) -> float | None:
    """Symmetric percentile Hausdorff distance between mask edges, in float64; None when a mask is empty."""
    pred = np.asarray(pred_mask, dtype=bool)
    true = np.asarray(true_mask, dtype=bool)
    if pred.shape != true.shape:
        raise ValueError(f"masks differ in shape: {pred.shape} and {true.shape}")
    if not pred.any() or not true.any():
        return None
    scale = np.ones(pred.ndim) if spacing is None else np.asarray(spacing, dtype=np.float64)
    pred_points = np.argwhere(_mask_edges(pred)).astype(np.float64) * scale
    true_points = np.argwhere(_mask_edges(true)).astype(np.float64) * scale
    pred_to_true = cKDTree(true_points).query(pred_points, k=1)[0]
    true_to_pred = cKDTree(pred_points).query(true_points, k=1)[0]
    return float(max(np.percentile(pred_to_true, percentile), np.percentile(true_to_pred, percentile)))


def segmentation_case_metrics(
    pred_masks: np.ndarray,
    true_masks: np.ndarray,
    *,
    ignore_empty: bool = True,
    percentile: float = 95.0,
    spacing: Sequence[float] | None = None,
) -> dict[str, np.ndarray]:
    """Dice, IoU and HD95 per image (NaN where undefined), the unit a case-level bootstrap resamples."""
    pred = np.asarray(pred_masks)
    true = np.asarray(true_masks)
    if pred.shape != true.shape or pred.ndim < 3:
        raise ValueError(f"masks must be (n_images, *spatial) of equal shape, got {pred.shape} and {true.shape}")
    if len(pred) == 0:
        raise ValueError("no images to evaluate")
    if not (np.isin(pred, [0, 1]).all() and np.isin(true, [0, 1]).all()):
        raise ValueError("masks must be binary (0/1 or bool); threshold probabilities first")
    pred = pred.astype(bool)
    true = true.astype(bool)
    axes = tuple(range(1, pred.ndim))
    intersection = np.sum(pred & true, axis=axes).astype(np.float64)
    true_sum = np.sum(true, axis=axes).astype(np.float64)
    pred_sum = np.sum(pred, axis=axes).astype(np.float64)
    union = true_sum + pred_sum - intersection
    with np.errstate(invalid="ignore", divide="ignore"):
        dice = np.where(true_sum + pred_sum > 0, 2.0 * intersection / (true_sum + pred_sum), 1.0)
        iou = np.where(union > 0, intersection / union, 1.0)
    if ignore_empty:
        dice[true_sum == 0] = np.nan
        iou[true_sum == 0] = np.nan
    hd = np.array(
        [
            np.nan if (value := hausdorff_distance(p, t, percentile, spacing)) is None else value
            for p, t in zip(pred, true, strict=True)
        ],
        dtype=np.float64,
    )
    return {
        "dice": dice,
        "iou": iou,
        "hd95": hd,
        "pred_empty": pred_sum == 0,
        "true_empty": true_sum == 0,
    }


def segmentation_set_from_cases(
    dice: np.ndarray, iou: np.ndarray, hd95: np.ndarray, pred_empty: np.ndarray, true_empty: np.ndarray
) -> MetricSet:
    """Mean of each per-image metric over the images where it is defined, and how many were not."""
    pred_empty = np.asarray(pred_empty, dtype=bool)
    true_empty = np.asarray(true_empty, dtype=bool)
    counts: dict[str, int] = {
        "n_images": len(dice),
        "n_true_empty": int(true_empty.sum()),
        "n_hd95_both_empty": int(np.sum(pred_empty & true_empty)),
        "n_hd95_one_empty": int(np.sum(pred_empty ^ true_empty)),
    }
    hd_reason = (
        f"{counts['n_hd95_both_empty']} image(s): {HD_BOTH_EMPTY_REASON}; "
        f"{counts['n_hd95_one_empty']} image(s): {HD_ONE_EMPTY_REASON}"
    )
    values: dict[str, float | None] = {}
    reasons: dict[str, str] = {}
    for name, per_case in (("dice", dice), ("iou", iou), ("hd95", hd95)):
        defined = ~np.isnan(per_case)
        counts[f"n_{name}_defined"] = int(defined.sum())
        values[name] = float(np.mean(per_case[defined])) if defined.any() else None
        if not defined.any():
            reasons[name] = f"undefined on every image: {hd_reason if name == 'hd95' else EMPTY_TRUTH_REASON}"
    return _set("segmentation", values, reasons, counts=counts)


def segmentation_metric_set(
    pred_masks: np.ndarray,
    true_masks: np.ndarray,
    *,
    ignore_empty: bool = True,
    percentile: float = 95.0,
    spacing: Sequence[float] | None = None,
) -> MetricSet:
    """Mean Dice, IoU and HD95 over images (see the module docstring for empty masks)."""
    cases = segmentation_case_metrics(
        pred_masks, true_masks, ignore_empty=ignore_empty, percentile=percentile, spacing=spacing
    )
    metric_set = segmentation_set_from_cases(**cases)
    return MetricSet(
        task=metric_set.task,
        values=metric_set.values,
        undefined=metric_set.undefined,
        counts=metric_set.counts,
        settings={
            "ignore_empty": ignore_empty,
            "percentile": percentile,
            "spacing": None if spacing is None else list(spacing),
        },
    )
