from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import (
    accuracy_score,
    f1_score,
    precision_score,
    recall_score,
    roc_auc_score,
    roc_curve,
)

from medllm_pipelines.lib.evaluate.metrics import (
    SINGLE_CLASS_REASON,
    binary_classification_metrics,
    bootstrap_ci,
    fit_logistic_baseline,
    roc_auc_or_none,
    roc_curve_points,
)
from medllm_pipelines_tests.lib.train.datasets import LABEL_COLUMN, breast_cancer_frame, fitted_preprocessing


def _random_case(seed: int, n: int = 257) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y_true = rng.integers(0, 2, n)
    y_score = np.clip(rng.normal(0.4 + 0.2 * y_true, 0.25), 0, 1)
    y_score[:20] = np.round(y_score[:20], 1)  # ties, which AUC must count as one half
    return y_true, y_score


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.62])
def test_metrics_agree_with_scikit_learn(seed: int, threshold: float) -> None:
    y_true, y_score = _random_case(seed)
    predicted = (y_score >= threshold).astype(int)
    metrics = binary_classification_metrics(y_true, y_score, threshold)
    expected = {
        "accuracy": accuracy_score(y_true, predicted),
        "sensitivity": recall_score(y_true, predicted),
        "specificity": recall_score(y_true, predicted, pos_label=0),
        "precision": precision_score(y_true, predicted),
        "f1": f1_score(y_true, predicted),
        "roc_auc": roc_auc_score(y_true, y_score),
    }
    for name, value in expected.items():
        assert metrics[name] == pytest.approx(value, abs=1e-9), name
    assert metrics["tp"] + metrics["fn"] == metrics["n_positive"] == int(y_true.sum())
    assert metrics["tn"] + metrics["fp"] == metrics["n"] - metrics["n_positive"]
    assert metrics["prevalence"] == pytest.approx(y_true.mean(), abs=1e-12)
    assert metrics["undefined"] == {}


@pytest.mark.parametrize("seed", [0, 5])
def test_fast_auc_used_by_the_bootstrap_equals_scikit_learn(seed: int) -> None:
    y_true, y_score = _random_case(seed)
    assert roc_auc_or_none(y_true, y_score) == pytest.approx(roc_auc_score(y_true, y_score), abs=1e-9)


def test_specificity_on_a_hand_worked_example() -> None:
    # 4 negatives: scores 0.1, 0.2 (TN), 0.6, 0.9 (FP) -> specificity 2/4.
    # 3 positives: scores 0.7, 0.8 (TP), 0.4 (FN) -> sensitivity 2/3, precision 2/4.
    y_true = [0, 0, 0, 0, 1, 1, 1]
    y_score = [0.1, 0.2, 0.6, 0.9, 0.7, 0.8, 0.4]
    metrics = binary_classification_metrics(y_true, y_score, threshold=0.5)
    assert (metrics["tn"], metrics["fp"], metrics["fn"], metrics["tp"]) == (2, 2, 1, 2)
    assert metrics["specificity"] == pytest.approx(0.5)
    assert metrics["sensitivity"] == pytest.approx(2 / 3)
    assert metrics["precision"] == pytest.approx(0.5)


def test_score_equal_to_threshold_is_positive() -> None:
    metrics = binary_classification_metrics([1, 0], [0.5, 0.49], threshold=0.5)
    assert metrics["tp"] == 1 and metrics["tn"] == 1


@pytest.mark.parametrize(
    ("y_true", "undefined_metrics"),
    [([1, 1, 1, 1], {"roc_auc", "specificity"}), ([0, 0, 0, 0], {"roc_auc", "sensitivity"})],
)
def test_single_class_gives_none_with_a_reason(y_true: list[int], undefined_metrics: set[str]) -> None:
    metrics = binary_classification_metrics(y_true, [0.1, 0.4, 0.6, 0.9])
    assert undefined_metrics <= set(metrics["undefined"])
    assert metrics["roc_auc"] is None and metrics["undefined"]["roc_auc"] == SINGLE_CLASS_REASON
    for name in undefined_metrics:
        assert metrics[name] is None
    assert metrics["accuracy"] == pytest.approx(0.5)
    curve = roc_curve_points(y_true, [0.1, 0.4, 0.6, 0.9])
    assert curve["fpr"] == [] and curve["undefined_reason"] == SINGLE_CLASS_REASON


def test_no_positive_predictions_makes_precision_undefined_not_zero() -> None:
    metrics = binary_classification_metrics([0, 1, 1], [0.1, 0.2, 0.3], threshold=0.5)
    assert metrics["precision"] is None and "precision" in metrics["undefined"]
    assert metrics["sensitivity"] == 0.0 and metrics["f1"] == 0.0


@pytest.mark.parametrize(
    ("y_true", "y_score", "message"),
    [([0, 1], [0.5], "rows"), ([0, 2], [0.1, 0.2], "0 and 1"), ([0, 1], [0.1, np.nan], "NaN")],
)
def test_malformed_inputs_are_refused(y_true: list[int], y_score: list[float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        binary_classification_metrics(y_true, y_score)


def test_roc_points_match_scikit_learn_and_are_json_ready() -> None:
    y_true, y_score = _random_case(4)
    points = roc_curve_points(y_true, y_score)
    fpr, tpr, thresholds = roc_curve(y_true, y_score)
    np.testing.assert_allclose(points["fpr"], fpr)
    np.testing.assert_allclose(points["tpr"], tpr)
    assert points["thresholds"][0] is None and np.isinf(thresholds[0])
    assert points["auc"] == pytest.approx(roc_auc_score(y_true, y_score))


def test_bootstrap_interval_brackets_the_estimate_and_is_reproducible() -> None:
    y_true, y_score = _random_case(7, n=300)
    low, high = bootstrap_ci(roc_auc_or_none, y_true, y_score, n_boot=500, seed=3)
    assert low is not None and high is not None
    assert low < roc_auc_score(y_true, y_score) < high
    assert 0.02 < high - low < 0.3
    assert bootstrap_ci(roc_auc_or_none, y_true, y_score, n_boot=500, seed=3) == (low, high)
    # scikit-learn's own function, which returns NaN on one-class draws, gives the same interval.
    assert bootstrap_ci(roc_auc_score, y_true, y_score, n_boot=500, seed=3) == pytest.approx((low, high), abs=1e-9)


def test_bootstrap_interval_narrows_with_more_cases() -> None:
    small = bootstrap_ci(roc_auc_or_none, *_random_case(8, n=100), n_boot=300, seed=0)
    large = bootstrap_ci(roc_auc_or_none, *_random_case(8, n=2000), n_boot=300, seed=0)
    assert (large[1] - large[0]) < (small[1] - small[0]) / 2


@pytest.fixture(scope="module")
def cancer() -> tuple[pd.DataFrame, list[str]]:
    return breast_cancer_frame()


def test_logistic_baseline_fits_on_train_only_and_discriminates(cancer: tuple[pd.DataFrame, list[str]]) -> None:
    frame, features = cancer
    train = frame[frame["split"] == "train"]
    test = frame[frame["split"] == "test"]
    baseline = fit_logistic_baseline(train, fitted_preprocessing(train, features), LABEL_COLUMN)
    probabilities = baseline.predict_proba(test)
    assert probabilities.shape == (len(test),) and ((0 <= probabilities) & (probabilities <= 1)).all()
    assert roc_auc_score(test[LABEL_COLUMN], probabilities) > 0.95
    # the baseline brings no preprocessing of its own: it uses the one it is handed, fitted on train
    stats = baseline.preprocessing.describe()
    assert stats["imputation_values"]["mean radius"] == pytest.approx(train["mean radius"].median())


def test_logistic_baseline_refuses_a_frame_with_held_out_rows(cancer: tuple[pd.DataFrame, list[str]]) -> None:
    frame, features = cancer
    with pytest.raises(ValueError, match="other splits"):
        fit_logistic_baseline(frame, fitted_preprocessing(frame, features), LABEL_COLUMN)
