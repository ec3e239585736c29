from __future__ import annotations

import numpy as np
import pytest
from scipy import stats
from scipy.special import ndtr, ndtri

from medllm_pipelines.lib.evaluate.intervals import (
    bootstrap_intervals,
    cross_validation_metrics,
    cross_validation_summary,
    paired_delta_intervals,
    resample_indices,
)
from medllm_pipelines.lib.evaluate.metrics import roc_auc_or_none
from medllm_pipelines.lib.evaluate.task_metrics import (
    binary_metric_set,
    multiclass_metric_set,
    regression_metric_set,
    segmentation_case_metrics,
    segmentation_metric_set,
    segmentation_set_from_cases,
)

EXACT = 1e-9


def _binary_case(seed: int, n: int = 150) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y_true = rng.integers(0, 2, n)
    return y_true, np.clip(rng.normal(0.4 + 0.2 * y_true, 0.2), 0, 1)


@pytest.mark.parametrize("method", ["percentile", "BCa"])
def test_one_sample_intervals_equal_scipy_bootstrap_with_the_same_draws(method: str) -> None:
    sample = np.random.default_rng(3).lognormal(0.0, 0.8, 45)  # skewed, so BCa differs from percentile
    for statistic in (np.mean, np.std):
        ours = bootstrap_intervals(lambda x: float(statistic(x)), sample, n_boot=2000, seed=11)["value"]
        reference = stats.bootstrap(
            (sample,), statistic, n_resamples=2000, rng=np.random.default_rng(11), method=method, vectorized=False
        )
        interval = ours.percentile if method == "percentile" else ours.bca
        expected = reference.confidence_interval
        assert interval == pytest.approx((expected.low, expected.high), abs=EXACT)
        assert ours.standard_error == pytest.approx(reference.standard_error, abs=EXACT)
    assert ours.bca != pytest.approx(ours.percentile, abs=1e-4)


def test_paired_rows_interval_equals_scipy_paired_bootstrap_for_roc_auc() -> None:
    y_true, y_score = _binary_case(1, n=90)
    ours = bootstrap_intervals(roc_auc_or_none, y_true, y_score, n_boot=300, seed=5)["value"]
    for method, interval in (("percentile", ours.percentile), ("BCa", ours.bca)):
        reference = stats.bootstrap(
            (y_true, y_score), roc_auc_or_none, paired=True, vectorized=False,
            n_resamples=300, rng=np.random.default_rng(5), method=method,
        ).confidence_interval
        assert interval == pytest.approx((reference.low, reference.high), abs=EXACT)
    assert ours.n_defined == 300 and ours.n_undefined == 0


def test_bca_reduces_to_its_closed_form_when_the_acceleration_is_zero() -> None:
    # a sample symmetric about 0: the jackknife deviations are the values themselves, their cubes sum to 0,
    # so a = 0 and BCa = quantiles at Phi(2 z0 +- z_{1-alpha/2}) with z0 = Phi^-1(share of draws below the mean)
    symmetric = np.concatenate([-np.arange(1, 21), np.arange(1, 21)]).astype(float)
    result = bootstrap_intervals(lambda x: float(np.mean(x)), symmetric, n_boot=999, seed=2)["value"]
    draws = np.array(_draw_means(symmetric, 999, 2))
    z0 = ndtri((np.sum(draws < 0) + np.sum(draws <= 0)) / (2 * len(draws)))
    assert result.acceleration == pytest.approx(0.0, abs=EXACT)
    assert result.bias_correction == pytest.approx(z0, abs=EXACT) and z0 != 0.0
    expected = np.quantile(draws, [ndtr(2 * z0 + ndtri(0.025)), ndtr(2 * z0 + ndtri(0.975))])
    assert result.bca == pytest.approx(tuple(expected), abs=EXACT)
    assert result.percentile == pytest.approx(tuple(np.quantile(draws, [0.025, 0.975])), abs=EXACT)


def _draw_means(sample: np.ndarray, n_boot: int, seed: int) -> list[float]:
    rows = resample_indices(len(sample), n_boot, np.random.default_rng(seed))
    return [float(np.mean(sample[r])) for r in rows]


def test_every_metric_of_a_set_gets_intervals_from_the_same_draws() -> None:
    y_true, y_score = _binary_case(2)
    intervals = bootstrap_intervals(binary_metric_set, y_true, y_score, n_boot=200, seed=7)
    full = binary_metric_set(y_true, y_score)
    assert set(intervals) == set(full.values)
    rows = resample_indices(len(y_true), 200, np.random.default_rng(7))
    for name in ("accuracy", "f1", "roc_auc", "pr_auc", "brier"):
        draws = [binary_metric_set(y_true[r], y_score[r])[name] for r in rows]
        assert intervals[name].estimate == pytest.approx(full[name], abs=EXACT)
        assert intervals[name].percentile == pytest.approx(tuple(np.quantile(draws, [0.025, 0.975])), abs=EXACT)
        low, high = intervals[name].bca
        assert low < full[name] < high
    single = bootstrap_intervals(roc_auc_or_none, y_true, y_score, n_boot=200, seed=7)["value"]
    assert single.percentile == pytest.approx(intervals["roc_auc"].percentile, abs=EXACT)
    assert single.bca == pytest.approx(intervals["roc_auc"].bca, abs=EXACT)


def test_regression_multiclass_and_segmentation_sets_bootstrap_too() -> None:
    rng = np.random.default_rng(4)
    truth = rng.normal(size=80)
    regression = bootstrap_intervals(regression_metric_set, truth, truth + rng.normal(0, 0.5, 80), n_boot=100)
    assert regression["r2"].percentile[0] < regression["r2"].estimate < regression["r2"].percentile[1]
    assert regression["rmse"].estimate == pytest.approx(np.sqrt(regression["mse"].estimate), abs=EXACT)

    labels = rng.integers(0, 5, 60)
    proba = rng.dirichlet(np.ones(5), 60)
    proba[np.arange(60), labels] += 1.0
    proba /= proba.sum(axis=1, keepdims=True)
    triage = bootstrap_intervals(multiclass_metric_set, labels, proba, n_boot=100, methods=("percentile",))
    assert set(triage) == {"top1_accuracy", "top3_accuracy", "macro_f1"}
    assert triage["top3_accuracy"].bca is None and triage["top3_accuracy"].percentile[1] <= 1.0

    pred = rng.random((12, 16, 16)) < 0.5
    true = pred ^ (rng.random((12, 16, 16)) < 0.1)
    true[0] = False  # one image without ground truth: its Dice is undefined on every draw that holds it
    cases = segmentation_case_metrics(pred, true)
    by_case = bootstrap_intervals(
        segmentation_set_from_cases,
        *(cases[name] for name in ("dice", "iou", "hd95", "pred_empty", "true_empty")),
        n_boot=150,
    )
    assert by_case["dice"].estimate == pytest.approx(segmentation_metric_set(pred, true)["dice"], abs=EXACT)
    assert by_case["dice"].n_defined == 150  # the other 11 images keep the mean defined
    assert by_case["hd95"].percentile[0] <= by_case["hd95"].estimate <= by_case["hd95"].percentile[1]


def test_undefined_draws_are_skipped_and_counted() -> None:
    y_true = np.array([1, 1] + [0] * 10)
    y_score = np.linspace(0.9, 0.1, 12)
    result = bootstrap_intervals(binary_metric_set, y_true, y_score, n_boot=400, seed=1)["roc_auc"]
    rows = resample_indices(12, 400, np.random.default_rng(1))
    no_positive = sum(int(y_true[r].sum() == 0) for r in rows)
    assert no_positive > 0
    assert result.n_undefined == no_positive and result.n_defined == 400 - no_positive
    defined = [roc_auc_or_none(y_true[r], y_score[r]) for r in rows if y_true[r].sum() > 0]
    assert result.percentile == pytest.approx(tuple(np.quantile(defined, [0.025, 0.975])), abs=EXACT)
    # the two positives rank first: every defined draw and every jackknife sample gives AUC 1, so BCa is undefined
    assert result.bca is None and "jackknife value is equal" in result.reasons["bca"]


def test_stratified_draws_keep_every_stratum_size() -> None:
    y_true = np.array([1, 1, 1] + [0] * 27)
    rows = resample_indices(30, 50, np.random.default_rng(0), stratify=y_true)
    assert rows.shape == (50, 30)
    assert (y_true[rows].sum(axis=1) == 3).all()
    y_score = np.random.default_rng(1).random(30)
    result = bootstrap_intervals(roc_auc_or_none, y_true, y_score, n_boot=200, stratify=y_true)["value"]
    assert result.n_undefined == 0
    unstratified = bootstrap_intervals(roc_auc_or_none, y_true, y_score, n_boot=200)["value"]
    assert unstratified.n_undefined > 0  # 3 positives in 30: some plain draws hold none


def test_metric_undefined_on_the_full_sample_has_no_interval() -> None:
    result = bootstrap_intervals(binary_metric_set, np.zeros(20, dtype=int), np.linspace(0, 1, 20), n_boot=50)
    assert result["roc_auc"].estimate is None and result["roc_auc"].percentile is None
    assert result["roc_auc"].reasons["percentile"] == "the metric is undefined on the full sample"
    assert result["accuracy"].estimate == 0.5 and result["accuracy"].percentile is not None
    with pytest.raises(ValueError, match="unknown interval methods"):
        bootstrap_intervals(roc_auc_or_none, [0, 1], [0.1, 0.9], methods=("basic",))


def test_paired_deltas_are_differences_on_the_same_draws() -> None:
    y_true, model = _binary_case(8)
    baseline = np.clip(model + np.random.default_rng(9).normal(0, 0.25, len(model)), 0, 1)
    deltas = paired_delta_intervals(binary_metric_set, y_true, model, baseline, n_boot=200, seed=3)
    rows = resample_indices(len(y_true), 200, np.random.default_rng(3))
    draws = [roc_auc_or_none(y_true[r], model[r]) - roc_auc_or_none(y_true[r], baseline[r]) for r in rows]
    assert deltas["roc_auc"].estimate == pytest.approx(
        roc_auc_or_none(y_true, model) - roc_auc_or_none(y_true, baseline), abs=EXACT
    )
    assert deltas["roc_auc"].estimate > 0.05  # the noisier baseline ranks worse
    assert deltas["roc_auc"].percentile == pytest.approx(tuple(np.quantile(draws, [0.025, 0.975])), abs=EXACT)
    assert deltas["roc_auc"].bca is not None
    same = paired_delta_intervals(binary_metric_set, y_true, model, model, n_boot=50)["brier"]
    assert same.estimate == 0.0 and same.percentile == (0.0, 0.0)
    assert same.bca is None and "jackknife value is equal" in same.reasons["bca"]


def test_cross_validation_summary_reports_mean_sd_and_undefined_folds() -> None:
    summary = cross_validation_summary([0.9, 0.8, None, 0.85, 0.95])
    assert summary["mean"] == pytest.approx(np.mean([0.9, 0.8, 0.85, 0.95]), abs=EXACT)
    assert summary["sd"] == pytest.approx(np.std([0.9, 0.8, 0.85, 0.95], ddof=1), abs=EXACT)
    assert summary["undefined_folds"] == [2] and summary["n_folds"] == 5 and summary["n_defined"] == 4
    assert summary["per_fold"] == [0.9, 0.8, None, 0.85, 0.95]
    assert cross_validation_summary([0.7])["sd"] is None

    rng = np.random.default_rng(6)
    y_true = rng.integers(0, 2, 100)
    y_score = np.clip(rng.normal(0.4 + 0.2 * y_true, 0.2), 0, 1)
    folds = np.arange(100) % 5
    result = cross_validation_metrics(binary_metric_set, folds, y_true, y_score)
    assert result["folds"] == [0, 1, 2, 3, 4]
    per_fold_auc = [roc_auc_or_none(y_true[folds == k], y_score[folds == k]) for k in range(5)]
    assert result["summary"]["roc_auc"]["per_fold"] == pytest.approx(per_fold_auc, abs=EXACT)
    assert result["summary"]["roc_auc"]["mean"] == pytest.approx(np.mean(per_fold_auc), abs=EXACT)
    assert result["summary"]["accuracy"]["sd"] == pytest.approx(
        np.std([binary_metric_set(y_true[folds == k], y_score[folds == k])["accuracy"] for k in range(5)], ddof=1),
        abs=EXACT,
    )
