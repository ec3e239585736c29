from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.calibration import calibration_curve
from sklearn.metrics import average_precision_score, confusion_matrix, f1_score, precision_recall_curve, roc_curve
from torchmetrics.functional.classification import binary_calibration_error

from medllm_pipelines.lib.evaluate.curves import (
    NO_POSITIVES_REASON,
    choose_threshold,
    confusion_matrix_at,
    decision_curve,
    expected_calibration_error,
    precision_recall_points,
    reliability_diagram,
)

EXACT = 1e-9


def _case(seed: int, n: int = 400) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y_score = rng.beta(2, 3, n)
    y_true = (rng.random(n) < np.clip(y_score * 1.2, 0, 1)).astype(int)  # miscalibrated on purpose
    return y_true, y_score


@pytest.mark.parametrize("strategy", ["uniform", "quantile"])
@pytest.mark.parametrize("seed", [0, 1])
def test_reliability_diagram_agrees_with_scikit_learn(strategy: str, seed: int) -> None:
    y_true, y_score = _case(seed)
    diagram = reliability_diagram(y_true, y_score, n_bins=8, strategy=strategy)
    prob_true, prob_pred = calibration_curve(y_true, y_score, n_bins=8, strategy=strategy)
    filled = [bin_ for bin_ in diagram["bins"] if bin_["count"]]
    assert [bin_["observed_rate"] for bin_ in filled] == pytest.approx(list(prob_true), abs=EXACT)
    assert [bin_["mean_predicted"] for bin_ in filled] == pytest.approx(list(prob_pred), abs=EXACT)
    counts = [bin_["count"] for bin_ in diagram["bins"]]
    assert sum(counts) == 400 and len(counts) == 8
    if strategy == "quantile":
        assert set(counts) == {50}  # continuous scores: equal-count bins hold n / n_bins each
    else:
        assert [bin_["upper"] for bin_ in diagram["bins"]] == pytest.approx(list(np.linspace(0.125, 1, 8)))


def test_reliability_diagram_and_ece_by_hand() -> None:
    y_true = np.array([0, 0, 1, 1, 1, 0])
    y_score = np.array([0.1, 0.5, 0.5, 0.6, 0.9, 0.95])
    diagram = reliability_diagram(y_true, y_score, n_bins=2)
    low, high = diagram["bins"]
    # 0.5 sits on the inner edge and falls in the lower bin (scikit-learn's convention)
    assert (low["count"], high["count"]) == (3, 3)
    assert low["mean_predicted"] == pytest.approx(1.1 / 3) and low["observed_rate"] == pytest.approx(1 / 3)
    assert high["mean_predicted"] == pytest.approx(2.45 / 3) and high["observed_rate"] == pytest.approx(2 / 3)
    by_hand = 0.5 * abs(1 / 3 - 1.1 / 3) + 0.5 * abs(2 / 3 - 2.45 / 3)
    assert expected_calibration_error(y_true, y_score, n_bins=2) == pytest.approx(by_hand, abs=EXACT)
    empty_bins = reliability_diagram(y_true, y_score, n_bins=10)["bins"]
    assert empty_bins[3]["count"] == 0 and empty_bins[3]["observed_rate"] is None


@pytest.mark.parametrize("n_bins", [5, 10, 15])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ece_agrees_with_torchmetrics_binary_calibration_error(n_bins: int, seed: int) -> None:
    y_true, y_score = _case(seed)
    reference = binary_calibration_error(torch.from_numpy(y_score), torch.from_numpy(y_true), n_bins=n_bins, norm="l1")
    assert reference.dtype == torch.float64
    ece = expected_calibration_error(y_true, y_score, n_bins=n_bins)
    assert ece == pytest.approx(reference.item(), abs=EXACT)
    assert ece > 0.02  # the scores were drawn miscalibrated


def test_decision_curve_matches_hand_values() -> None:
    y_true = np.array([1, 1, 0, 1, 0, 0, 0, 0, 1, 0])
    y_score = np.array([0.9, 0.8, 0.7, 0.6, 0.4, 0.3, 0.25, 0.2, 0.15, 0.1])
    curve = decision_curve(y_true, y_score, thresholds=[0.1, 0.25, 0.5, 0.75])
    # t=0.5: rows >= 0.5 are TP 3, FP 1 -> 3/10 - 1/10 * 1 = 0.2; treat all: 0.4 - 0.6 * 1 = -0.2
    # t=0.25: TP 3, FP 4 -> 0.3 - 0.4 / 3; t=0.75: TP 2, FP 0 -> 0.2; t=0.1: everyone treated = treat all
    assert curve["net_benefit_model"] == pytest.approx([0.4 - 0.6 / 9, 0.3 - 0.4 / 3, 0.2, 0.2], abs=EXACT)
    treat_all = [0.4 - 0.6 / 9, 0.4 - 0.6 / 3, -0.2, 0.4 - 0.6 * 3]
    assert curve["net_benefit_treat_all"] == pytest.approx(treat_all, abs=EXACT)
    assert curve["net_benefit_treat_none"] == [0.0] * 4
    assert curve["prevalence"] == 0.4
    default = decision_curve(y_true, y_score)
    assert len(default["thresholds"]) == 99 and default["thresholds"][0] == 0.01 and default["thresholds"][-1] == 0.99
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        decision_curve(y_true, y_score, thresholds=[0.0, 0.5])


@pytest.mark.parametrize("threshold", [0.2, 0.45, 0.8])
def test_confusion_matrix_agrees_with_scikit_learn(threshold: float) -> None:
    y_true, y_score = _case(3)
    result = confusion_matrix_at(y_true, y_score, threshold)
    assert result["matrix"] == confusion_matrix(y_true, (y_score >= threshold).astype(int), labels=[0, 1]).tolist()
    assert result["tn"] + result["fp"] + result["fn"] + result["tp"] == 400


def test_precision_recall_points_agree_with_scikit_learn() -> None:
    y_true, y_score = _case(4)
    points = precision_recall_points(y_true, y_score)
    precision, recall, thresholds = precision_recall_curve(y_true, y_score)
    assert points["precision"] == pytest.approx(list(precision), abs=EXACT)
    assert points["recall"] == pytest.approx(list(recall), abs=EXACT)
    assert points["thresholds"] == pytest.approx(list(thresholds), abs=EXACT)
    assert points["average_precision"] == pytest.approx(average_precision_score(y_true, y_score), abs=EXACT)
    none = precision_recall_points(np.zeros(5, dtype=int), np.linspace(0, 1, 5))
    assert none["average_precision"] is None and none["undefined_reason"] == NO_POSITIVES_REASON


def _brute_force(y_true: np.ndarray, y_score: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    candidates = np.unique(y_score)[::-1]
    sens = np.array([np.mean(y_score[y_true == 1] >= t) for t in candidates])
    spec = np.array([np.mean(y_score[y_true == 0] < t) for t in candidates])
    f1 = np.array([f1_score(y_true, (y_score >= t).astype(int)) for t in candidates])
    return candidates, sens, spec, f1


@pytest.mark.parametrize("seed", [0, 5])
def test_threshold_rules_on_validation_agree_with_brute_force(seed: int) -> None:
    y_val, p_val = _case(seed, n=200)
    p_val[:40] = np.round(p_val[:40], 1)  # ties
    candidates, sens, spec, f1 = _brute_force(y_val, p_val)

    youden = choose_threshold(y_val, p_val, "youden")
    fpr, tpr, roc_thresholds = roc_curve(y_val, p_val, drop_intermediate=False)
    assert youden.threshold == roc_thresholds[np.argmax(tpr - fpr)]
    assert youden.criterion == pytest.approx(np.max(sens + spec - 1), abs=EXACT)

    best_f1 = choose_threshold(y_val, p_val, "f1")
    assert best_f1.threshold == candidates[np.argmax(f1)]
    assert best_f1.criterion == pytest.approx(np.max(f1), abs=EXACT)

    constrained = choose_threshold(y_val, p_val, "sensitivity>=0.9")
    assert constrained.threshold == candidates[np.flatnonzero(sens >= 0.9)[0]]
    assert constrained.sensitivity >= 0.9
    assert constrained.specificity == pytest.approx(np.max(spec[sens >= 0.9]), abs=EXACT)
    assert constrained.as_dict()["chosen_on"] == "validation"


def test_threshold_is_never_chosen_on_test_or_on_one_class() -> None:
    y_val, p_val = _case(0, n=50)
    with pytest.raises(ValueError, match="never on the test split"):
        choose_threshold(y_val, p_val, split="test")
    with pytest.raises(ValueError, match="both classes"):
        choose_threshold(np.zeros(10, dtype=int), np.linspace(0, 1, 10))
    with pytest.raises(ValueError, match="unknown rule"):
        choose_threshold(y_val, p_val, "accuracy")
