from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from monai.metrics import compute_dice, compute_hausdorff_distance, compute_iou
from scipy import ndimage
from scipy.spatial.distance import directed_hausdorff
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    brier_score_loss,
    f1_score,
    jaccard_score,
    mean_absolute_error,
    mean_squared_error,
    precision_score,
    r2_score,
    recall_score,
    roc_auc_score,
    root_mean_squared_error,
    top_k_accuracy_score,
)
from torchmetrics.functional import r2_score as torchmetrics_r2
from torchmetrics.functional.classification import multiclass_accuracy, multiclass_f1_score

from medllm_pipelines.lib.evaluate.metrics import SINGLE_CLASS_REASON
from medllm_pipelines.lib.evaluate.task_metrics import (
    BINARY_UNDEFINED_REASONS,
    EMPTY_TRUTH_REASON,
    R2_CONSTANT_REASON,
    binary_metric_set,
    hausdorff_distance,
    multiclass_metric_set,
    regression_metric_set,
    segmentation_metric_set,
)

EXACT = 1e-9
FLOAT32 = 1e-6  # MONAI's Dice/HD and torchmetrics' accuracy return float32 whatever the input dtype


def _binary_case(seed: int, n: int = 301) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y_true = rng.integers(0, 2, n)
    y_score = np.clip(rng.normal(0.4 + 0.2 * y_true, 0.25), 0, 1)
    y_score[:30] = np.round(y_score[:30], 1)  # ties, which ROC-AUC and PR-AUC must handle like scikit-learn
    return y_true, y_score


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.7])
def test_binary_set_agrees_with_scikit_learn(seed: int, threshold: float) -> None:
    y_true, y_score = _binary_case(seed)
    predicted = (y_score >= threshold).astype(int)
    metrics = binary_metric_set(y_true, y_score, threshold)
    expected = {
        "accuracy": accuracy_score(y_true, predicted),
        "sensitivity": recall_score(y_true, predicted),
        "specificity": recall_score(y_true, predicted, pos_label=0),
        "precision": precision_score(y_true, predicted),
        "f1": f1_score(y_true, predicted),
        "roc_auc": roc_auc_score(y_true, y_score),
        "pr_auc": average_precision_score(y_true, y_score),
        "brier": brier_score_loss(y_true, y_score),
    }
    assert set(metrics.values) == set(expected)
    for name, value in expected.items():
        assert metrics[name] == pytest.approx(value, abs=EXACT), name
    assert metrics.undefined == {}
    assert metrics.counts["tp"] + metrics.counts["fn"] == int(y_true.sum())
    assert metrics.settings == {"threshold": threshold}


def test_one_class_sample_makes_ranking_metrics_undefined_with_reasons_never_zero() -> None:
    y_score = np.linspace(0.05, 0.95, 40)
    negatives = binary_metric_set(np.zeros(40, dtype=int), y_score)
    assert negatives["roc_auc"] is None and negatives.undefined["roc_auc"] == SINGLE_CLASS_REASON
    assert negatives["pr_auc"] is None and negatives.undefined["pr_auc"] == BINARY_UNDEFINED_REASONS["pr_auc"]
    assert negatives["sensitivity"] is None and "sensitivity" in negatives.undefined
    assert negatives["specificity"] == pytest.approx(recall_score(np.zeros(40), y_score >= 0.5, pos_label=0))
    assert negatives["brier"] == pytest.approx(brier_score_loss(np.zeros(40), y_score, labels=[0, 1]), abs=EXACT)
    positives = binary_metric_set(np.ones(40, dtype=int), y_score)
    assert positives["roc_auc"] is None and positives["specificity"] is None
    assert positives["pr_auc"] == pytest.approx(average_precision_score(np.ones(40), y_score), abs=EXACT) == 1.0


def test_no_positive_prediction_leaves_precision_undefined_and_f1_zero() -> None:
    y_true, y_score = _binary_case(4)
    metrics = binary_metric_set(y_true, y_score, threshold=1.01)
    assert metrics["precision"] is None
    assert metrics.undefined["precision"] == BINARY_UNDEFINED_REASONS["precision"]
    assert math.isnan(precision_score(y_true, np.zeros_like(y_true), zero_division=np.nan))
    # no positive prediction while positives exist: F1 = 2TP/(2TP+FP+FN) = 0 is a real (bad) value
    assert metrics["f1"] == 0.0 == f1_score(y_true, np.zeros_like(y_true), zero_division=np.nan)
    assert metrics["sensitivity"] == 0.0 and metrics["specificity"] == 1.0


@pytest.mark.parametrize(
    ("y_true", "y_score", "message"),
    [
        ([0, 1], [0.2, 1.3], "probabilities"),
        ([0, 1, 1], [0.2, 0.4], "rows"),
        ([0, 2], [0.2, 0.4], "only 0 and 1"),
        ([], [], "no rows"),
        ([0, 1], [0.2, float("nan")], "NaN"),
    ],
)
def test_binary_set_refuses_bad_input(y_true: list, y_score: list, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        binary_metric_set(np.asarray(y_true, dtype=int), np.asarray(y_score, dtype=float))


def _probabilities(seed: int, n: int = 250, n_classes: int = 6) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y_true = rng.integers(0, n_classes, n)
    logits = rng.normal(size=(n, n_classes)) + 1.5 * np.eye(n_classes)[y_true]
    proba = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return y_true, proba


@pytest.mark.parametrize("seed", [0, 1])
def test_multiclass_set_agrees_with_scikit_learn_and_torchmetrics(seed: int) -> None:
    y_true, proba = _probabilities(seed)
    metrics = multiclass_metric_set(y_true, proba)
    labels = list(range(proba.shape[1]))
    assert metrics["top1_accuracy"] == pytest.approx(top_k_accuracy_score(y_true, proba, k=1, labels=labels), abs=EXACT)
    assert metrics["top3_accuracy"] == pytest.approx(top_k_accuracy_score(y_true, proba, k=3, labels=labels), abs=EXACT)
    assert metrics["macro_f1"] == pytest.approx(f1_score(y_true, proba.argmax(axis=1), average="macro"), abs=EXACT)
    target, preds = torch.from_numpy(y_true), torch.from_numpy(proba)
    for k in (1, 3):
        reference = multiclass_accuracy(preds, target, num_classes=6, top_k=k, average="micro").item()
        assert metrics[f"top{k}_accuracy"] == pytest.approx(reference, abs=FLOAT32)
    reference_f1 = multiclass_f1_score(preds, target, num_classes=6, average="macro").item()
    assert metrics["macro_f1"] == pytest.approx(reference_f1, abs=FLOAT32)


def test_multiclass_ties_absent_classes_and_trivial_top_k() -> None:
    y_true = np.array([0, 1, 2, 2, 1, 0, 3])
    proba = np.array(
        [
            [0.4, 0.4, 0.1, 0.1, 0.0],  # tie between 0 and 1: the higher index ranks first (scikit-learn)
            [0.1, 0.6, 0.1, 0.1, 0.1],
            [0.25, 0.25, 0.25, 0.25, 0.0],
            [0.1, 0.1, 0.7, 0.1, 0.0],
            [0.5, 0.2, 0.1, 0.1, 0.1],
            [0.7, 0.1, 0.1, 0.1, 0.0],
            [0.1, 0.1, 0.1, 0.6, 0.1],
        ]
    )
    metrics = multiclass_metric_set(y_true, proba)
    for k in (1, 3):
        assert metrics[f"top{k}_accuracy"] == pytest.approx(
            top_k_accuracy_score(y_true, proba, k=k, labels=range(5)), abs=EXACT
        )
    # class 4 is neither a label nor a prediction: it is left out of the macro average, not counted as F1 = 0
    predicted = np.argsort(proba, axis=1, kind="mergesort")[:, ::-1][:, 0]
    assert metrics["macro_f1"] == pytest.approx(f1_score(y_true, predicted, average="macro"), abs=EXACT)
    assert metrics.settings["classes_absent_from_macro_f1"] == [4]
    assert metrics.counts["n_classes_in_macro_f1"] == 4
    three = multiclass_metric_set(np.array([0, 1, 2]), np.full((3, 3), 1 / 3))
    assert three["top3_accuracy"] is None and "every row is a hit" in three.undefined["top3_accuracy"]
    with pytest.raises(ValueError, match="sum to 1"):
        multiclass_metric_set(np.array([0, 1]), np.array([[2.0, 1.0], [0.5, 3.0]]))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_regression_set_agrees_with_scikit_learn_and_torchmetrics(seed: int) -> None:
    rng = np.random.default_rng(seed)
    y_true = rng.normal(150, 60, 200)
    y_pred = 0.6 * y_true + rng.normal(60, 40, 200)
    metrics = regression_metric_set(y_true, y_pred)
    assert metrics["mse"] == pytest.approx(mean_squared_error(y_true, y_pred), rel=EXACT)
    assert metrics["mae"] == pytest.approx(mean_absolute_error(y_true, y_pred), rel=EXACT)
    assert metrics["rmse"] == pytest.approx(root_mean_squared_error(y_true, y_pred), rel=EXACT)
    assert metrics["r2"] == pytest.approx(r2_score(y_true, y_pred), abs=EXACT)
    reference_r2 = torchmetrics_r2(torch.from_numpy(y_pred), torch.from_numpy(y_true))
    assert reference_r2.dtype == torch.float64
    assert metrics["r2"] == pytest.approx(reference_r2.item(), abs=EXACT)


def test_constant_truth_leaves_r2_undefined_where_scikit_learn_reports_zero() -> None:
    metrics = regression_metric_set(np.full(10, 5.0), np.linspace(4, 6, 10))
    assert metrics["r2"] is None and metrics.undefined["r2"] == R2_CONSTANT_REASON
    assert r2_score(np.full(10, 5.0), np.linspace(4, 6, 10)) == 0.0  # the look-alike zero this module avoids
    assert metrics["mae"] == pytest.approx(mean_absolute_error(np.full(10, 5.0), np.linspace(4, 6, 10)), abs=EXACT)


def _blob_masks(seed: int, n: int = 6, shape: tuple[int, ...] = (40, 36)) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    truth = np.stack([ndimage.gaussian_filter(rng.normal(size=shape), 3) > 0.05 for _ in range(n)])
    pred = np.stack([ndimage.binary_dilation(mask, iterations=int(rng.integers(0, 3))) for mask in truth])
    flip = rng.random(pred.shape) < 0.02  # scattered errors, so the 95th percentile differs from the maximum
    return pred ^ flip, truth


def _monai(function, pred: np.ndarray, truth: np.ndarray, **kwargs) -> np.ndarray:
    as_tensor = lambda masks: torch.from_numpy(masks[:, None].astype(np.float64))  # noqa: E731
    return function(as_tensor(pred), as_tensor(truth), include_background=True, **kwargs)[:, 0].double().numpy()


@pytest.mark.parametrize("seed", [0, 1])
def test_dice_and_iou_agree_with_scikit_learn_and_monai(seed: int) -> None:
    pred, truth = _blob_masks(seed)
    metrics = segmentation_metric_set(pred, truth)
    dice = [f1_score(t.ravel(), p.ravel()) for p, t in zip(pred, truth)]
    iou = [jaccard_score(t.ravel(), p.ravel()) for p, t in zip(pred, truth)]
    assert metrics["dice"] == pytest.approx(np.mean(dice), abs=EXACT)
    assert metrics["iou"] == pytest.approx(np.mean(iou), abs=EXACT)
    assert metrics["dice"] == pytest.approx(np.nanmean(_monai(compute_dice, pred, truth)), abs=FLOAT32)
    assert metrics["iou"] == pytest.approx(np.nanmean(_monai(compute_iou, pred, truth)), abs=EXACT)
    assert metrics.counts["n_dice_defined"] == metrics.counts["n_images"] == 6


@pytest.mark.parametrize("seed", [0, 1])
def test_hd95_agrees_with_monai_and_its_maximum_with_scipy(seed: int) -> None:
    pred, truth = _blob_masks(seed)
    metrics = segmentation_metric_set(pred, truth)
    reference = _monai(compute_hausdorff_distance, pred, truth, percentile=95)
    assert metrics["hd95"] == pytest.approx(reference.mean(), rel=FLOAT32)
    per_image = [hausdorff_distance(p, t) for p, t in zip(pred, truth)]
    assert per_image == pytest.approx(list(reference), rel=FLOAT32)
    assert max(per_image) > min(per_image) > 0
    # percentile 100 is the classic Hausdorff distance between the edge point sets: scipy, in float64
    edges = lambda mask: np.argwhere(mask ^ ndimage.binary_erosion(mask)).astype(float)  # noqa: E731
    for p, t in zip(pred, truth):
        exact = max(directed_hausdorff(edges(p), edges(t))[0], directed_hausdorff(edges(t), edges(p))[0])
        assert hausdorff_distance(p, t, percentile=100) == pytest.approx(exact, abs=EXACT)
    spacing = (0.7, 1.6)
    anisotropic = _monai(compute_hausdorff_distance, pred, truth, percentile=95, spacing=spacing)
    assert [hausdorff_distance(p, t, spacing=spacing) for p, t in zip(pred, truth)] == pytest.approx(
        list(anisotropic), rel=FLOAT32
    )


def test_three_dimensional_masks_agree_with_monai() -> None:
    pred, truth = _blob_masks(3, n=2, shape=(14, 16, 12))
    metrics = segmentation_metric_set(pred, truth)
    assert metrics["dice"] == pytest.approx(np.mean(_monai(compute_dice, pred, truth)), abs=FLOAT32)
    reference_hd = _monai(compute_hausdorff_distance, pred, truth, percentile=95)
    assert metrics["hd95"] == pytest.approx(reference_hd.mean(), rel=FLOAT32)


def test_empty_masks_follow_monai_conventions_and_are_counted() -> None:
    pred, truth = _blob_masks(5, n=4)
    truth[1] = False  # empty truth, non-empty prediction
    pred[2] = False  # missed lesion: empty prediction, non-empty truth
    truth[3] = False
    pred[3] = False  # both empty
    with pytest.warns(UserWarning):  # MONAI warns on every empty mask
        monai_dice = _monai(compute_dice, pred, truth)
        monai_iou = _monai(compute_iou, pred, truth)
        monai_hd = _monai(compute_hausdorff_distance, pred, truth, percentile=95)
    assert np.isnan(monai_dice[[1, 3]]).all() and np.isnan(monai_iou[[1, 3]]).all()
    assert np.isnan(monai_hd[[1, 2, 3]]).all() and np.isfinite(monai_hd[0])
    with pytest.warns(UserWarning):  # without a percentile MONAI's one-empty distance is inf
        assert np.isinf(_monai(compute_hausdorff_distance, pred, truth)[[1, 2]]).all()

    metrics = segmentation_metric_set(pred, truth)
    assert metrics["dice"] == pytest.approx(np.nanmean(monai_dice), abs=FLOAT32)
    assert metrics["iou"] == pytest.approx(np.nanmean(monai_iou), abs=EXACT)
    assert metrics.counts["n_dice_defined"] == 2 and metrics.counts["n_true_empty"] == 2
    assert metrics["hd95"] == pytest.approx(monai_hd[0], rel=FLOAT32)  # only image 0 has both surfaces
    assert metrics.counts["n_hd95_defined"] == 1
    assert metrics.counts["n_hd95_one_empty"] == 2 and metrics.counts["n_hd95_both_empty"] == 1

    kept = segmentation_metric_set(pred, truth, ignore_empty=False)
    dice_kept = _monai(compute_dice, pred, truth, ignore_empty=False)
    assert list(dice_kept[[1, 2, 3]]) == [0.0, 0.0, 1.0]
    assert kept["dice"] == pytest.approx(dice_kept.mean(), abs=FLOAT32)
    assert kept["iou"] == pytest.approx(_monai(compute_iou, pred, truth, ignore_empty=False).mean(), abs=EXACT)

    nothing = segmentation_metric_set(np.zeros((2, 8, 8), bool), np.zeros((2, 8, 8), bool))
    assert nothing["dice"] is None and EMPTY_TRUTH_REASON in nothing.undefined["dice"]
    assert nothing["hd95"] is None and nothing.counts["n_hd95_both_empty"] == 2
    with pytest.raises(ValueError, match="binary"):
        segmentation_metric_set(np.full((1, 4, 4), 0.7), np.ones((1, 4, 4)))
