"""The imaging specs' ``baseline: intensity_threshold``: the obvious rule a network has to beat.

The synthetic lesions are bright blobs, so one threshold on the per-slice
z-scored pixels (what the networks see, images.normalise_slice) already
finds many of them. The threshold is fitted on the training split only and
scored on the test split with the networks' own metrics, so that a model's
test figures sit next to the rule's in MLflow and in the asset metadata.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from medllm_pipelines.lib.train.imaging.images import LesionImages, segmentation_metrics

THRESHOLDS = tuple(float(t) for t in np.arange(0.5, 6.01, 0.25))  # z-scores tried on the training split


@dataclass(frozen=True)
class BaselineScores:
    """The rule, its fitted threshold and its test-split metrics (keys ``baseline_test_<metric>``)."""

    name: str
    threshold: float
    metrics: dict[str, float]

    def as_metadata(self) -> dict[str, object]:
        return {"baseline": self.name, "baseline_threshold": self.threshold,
                "baseline_metrics": {k: round(v, 4) for k, v in self.metrics.items() if np.isfinite(v)}}


def _brightest(images: LesionImages) -> np.ndarray:
    return np.array([float(image.max()) for image in images.images], dtype=np.float64)


def segmentation_baseline_masks(images: LesionImages, threshold: float) -> list[np.ndarray]:
    """The rule's mask per slice, (H, W) bool: pixels whose z-score is above the fitted threshold."""
    return [np.asarray(image[0] > threshold) for image in images.images]


def classification_baseline_probabilities(images: LesionImages, threshold: float) -> np.ndarray:
    """The rule's lesion score per slice as a probability: monotone in the brightest z-score, 0.5 at the cut-off
    (so that ROC-AUC, the Brier score and the evaluation's curves can be computed for the rule as for a model)."""
    return 1.0 / (1.0 + np.exp(-(_brightest(images) - threshold)))


def segmentation_baseline(train: LesionImages, test: LesionImages) -> BaselineScores:
    """Pixels above the training split's best z-score threshold (mean Dice over lesion slices) are lesion."""

    def dice_at(images: LesionImages, threshold: float) -> float:
        predicted = [image[0] > threshold for image in images.images]
        return segmentation_metrics(predicted, [mask[0] for mask in images.masks])["dice"]

    scores = [dice_at(train, t) for t in THRESHOLDS]
    best = THRESHOLDS[int(np.nanargmax(scores))] if np.isfinite(scores).any() else THRESHOLDS[-1]
    predicted = segmentation_baseline_masks(test, best)
    metrics = segmentation_metrics(predicted, [mask[0] for mask in test.masks])
    return BaselineScores("intensity_threshold", best,
                          {f"baseline_test_{k}": v for k, v in metrics.items() if not k.startswith("n_")})


def classification_baseline(train: LesionImages, test: LesionImages) -> BaselineScores:
    """The slice's brightest z-score as the lesion score; the cut-off with the best training accuracy.

    Reported beside it: the majority class of the training split (accuracy only; its ROC-AUC is 0.5).
    """
    from medllm_pipelines.lib.evaluate.metrics import binary_classification_metrics

    train_scores = _brightest(train)
    accuracies = [float(np.mean((train_scores > t) == train.presence.astype(bool))) for t in THRESHOLDS]
    best = THRESHOLDS[int(np.argmax(accuracies))]
    metrics: dict[str, float] = {}
    if len(test):
        probabilities = classification_baseline_probabilities(test, best)
        computed = binary_classification_metrics(test.presence, probabilities, threshold=0.5)
        metrics = {f"baseline_test_{k}": float(computed[k]) for k in ("roc_auc", "accuracy", "sensitivity",
                                                                      "specificity") if computed.get(k) is not None}
        majority = int(train.presence.mean() >= 0.5) if len(train) else 0
        metrics["majority_class_test_accuracy"] = float(np.mean(test.presence == majority))
    return BaselineScores("intensity_threshold", best, metrics)
