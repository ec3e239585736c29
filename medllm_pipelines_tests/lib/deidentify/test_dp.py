"""Differential privacy: unbiased noise of the right variance, and a budget that cannot be overspent."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from medllm_pipelines.lib.deidentify.dp import (
    LedgerIntegrityError,
    PrivacyBudgetExceeded,
    PrivacyLedger,
    PrivateStatistics,
    analytic_gaussian_sigma,
    classic_gaussian_sigma,
    gaussian_mechanism,
    laplace_mechanism,
)

DRAWS = 20_000


def test_laplace_noise_is_unbiased_with_variance_2b2() -> None:
    rng = np.random.default_rng(20261128)
    epsilon, sensitivity = 0.5, 1.0
    samples = laplace_mechanism(np.full(DRAWS, 100.0), sensitivity, epsilon, rng)
    b = sensitivity / epsilon
    standard_error = math.sqrt(2) * b / math.sqrt(DRAWS)
    assert abs(samples.mean() - 100.0) < 4 * standard_error
    assert samples.var() == pytest.approx(2 * b * b, rel=0.05)


def test_gaussian_noise_is_unbiased_with_the_calibrated_variance() -> None:
    rng = np.random.default_rng(7)
    sigma = analytic_gaussian_sigma(1.0, 1.0, 1e-5)
    assert sigma == pytest.approx(3.7306, abs=1e-3)  # Balle & Wang 2018, epsilon=1, delta=1e-5
    samples = gaussian_mechanism(np.zeros(DRAWS), 1.0, 1.0, 1e-5, rng)
    assert abs(samples.mean()) < 4 * sigma / math.sqrt(DRAWS)
    assert samples.std() == pytest.approx(sigma, rel=0.03)


@pytest.mark.parametrize("epsilon", [0.1, 0.5, 0.9])
def test_analytic_gaussian_is_never_noisier_than_the_classic_bound(epsilon: float) -> None:
    assert analytic_gaussian_sigma(1.0, epsilon, 1e-6) < classic_gaussian_sigma(1.0, epsilon, 1e-6)


def test_seeded_releases_are_reproducible(tmp_path: Path) -> None:
    def release(path: Path) -> int:
        ledger = PrivacyLedger(path, dataset="curate/diabetes_features", epsilon_budget=1.0)
        return PrivateStatistics(ledger, rng=np.random.default_rng(3)).count(412, epsilon=0.1, query="n").value

    assert release(tmp_path / "a.json") == release(tmp_path / "b.json")


def test_sum_and_mean_clip_to_the_declared_bounds(tmp_path: Path) -> None:
    ledger = PrivacyLedger(tmp_path / "ledger.json", dataset="ds", epsilon_budget=1e6)
    stats = PrivateStatistics(ledger, rng=np.random.default_rng(11))
    values = [5.0, 6.0, 7.0, 1_000.0]  # the outlier is clipped to 14
    noisy_sums = [stats.sum(values, lower=0, upper=14, epsilon=1e4, query="sum").value for _ in range(5)]
    assert np.mean(noisy_sums) == pytest.approx(32.0, abs=0.05)
    mean = stats.mean(values, lower=0, upper=14, epsilon=1e4, query="mean")
    assert mean.value == pytest.approx(8.0, abs=0.05) and mean.sensitivity == 7  # centred: half the range
    with pytest.raises(ValueError, match="bounds"):
        stats.sum(values, lower=5, upper=5, epsilon=1, query="bad")


def test_histogram_counts_declared_categories_only(tmp_path: Path) -> None:
    ledger = PrivacyLedger(tmp_path / "ledger.json", dataset="ds", epsilon_budget=1e6)
    stats = PrivateStatistics(ledger, rng=np.random.default_rng(5))
    values = ["E11"] * 30 + ["I10"] * 12 + ["Z99"] * 4
    released = stats.histogram(values, categories=["E11", "I10", "E78"], epsilon=1e5, query="dx")
    assert released.value == {"E11": 30, "I10": 12, "E78": 0}
    noisy = stats.histogram(values, categories=["E11", "I10", "E78"], epsilon=0.05, query="dx")
    assert all(v >= 0 and isinstance(v, int) for v in noisy.value.values())


def test_budget_is_refused_before_any_noise_is_drawn(tmp_path: Path) -> None:
    path = tmp_path / "ledger.json"
    ledger = PrivacyLedger(path, dataset="curate/diabetes_features", epsilon_budget=1.0, delta_budget=1e-5)
    stats = PrivateStatistics(ledger, rng=np.random.default_rng(0), actor="analyst")
    for _ in range(10):
        stats.count(100, epsilon=0.1, query="cohort size")  # 10 x 0.1 = exactly the budget
    with pytest.raises(PrivacyBudgetExceeded, match=r"needs epsilon=0.01 but only 0 of 1 is left"):
        stats.count(100, epsilon=0.01, query="one more")
    assert len(ledger.entries()) == 10 and ledger.spent()[0] == pytest.approx(1.0)

    # a new ledger object on the same file sees the same spend
    again = PrivacyLedger(path, dataset="curate/diabetes_features", epsilon_budget=1.0, delta_budget=1e-5)
    assert again.remaining()[0] == pytest.approx(0.0, abs=1e-9)


def test_delta_budget_is_enforced_for_gaussian_releases(tmp_path: Path) -> None:
    ledger = PrivacyLedger(tmp_path / "ledger.json", dataset="ds", epsilon_budget=10.0, delta_budget=1e-5)
    stats = PrivateStatistics(ledger, rng=np.random.default_rng(0))
    stats.count(50, epsilon=1.0, delta=6e-6, query="a", mechanism="gaussian")
    with pytest.raises(PrivacyBudgetExceeded, match="delta"):
        stats.count(50, epsilon=1.0, delta=6e-6, query="b", mechanism="gaussian")
    with pytest.raises(ValueError, match="delta"):
        stats.count(50, epsilon=1.0, query="c", mechanism="gaussian")


def test_budget_cannot_be_raised_by_reopening(tmp_path: Path) -> None:
    path = tmp_path / "ledger.json"
    PrivateStatistics(PrivacyLedger(path, dataset="ds", epsilon_budget=1.0)).count(1, epsilon=0.5, query="q")
    with pytest.raises(ValueError, match="cannot be changed"):
        PrivacyLedger(path, dataset="ds", epsilon_budget=5.0)


def test_editing_the_ledger_is_detected(tmp_path: Path) -> None:
    path = tmp_path / "ledger.json"
    ledger = PrivacyLedger(path, dataset="ds", epsilon_budget=1.0)
    stats = PrivateStatistics(ledger)
    stats.count(1, epsilon=0.6, query="q1")
    stats.count(1, epsilon=0.3, query="q2")
    data = json.loads(path.read_text())
    data["entries"][0]["epsilon"] = 0.01  # try to win back budget
    path.write_text(json.dumps(data))
    with pytest.raises(LedgerIntegrityError, match="entry 0"):
        ledger.charge(0.5, query="q3", mechanism="laplace")
    data["entries"] = data["entries"][1:]
    path.write_text(json.dumps(data))
    with pytest.raises(LedgerIntegrityError):
        ledger.spent()


def test_a_centred_mean_is_unbiased_with_the_half_range_noise(tmp_path: Path) -> None:
    ledger = PrivacyLedger(tmp_path / "ledger.json", dataset="ds", epsilon_budget=1e9)
    stats = PrivateStatistics(ledger, rng=np.random.default_rng(5))
    values = np.full(400, 6.5)
    releases = [stats.mean(values, lower=4.0, upper=15.0, epsilon=1.0, query="hba1c") for _ in range(300)]
    assert releases[0].sensitivity == 5.5 and releases[0].noise_scale == pytest.approx(5.5 / 0.5)
    assert np.mean([r.value for r in releases]) == pytest.approx(6.5, abs=0.02)


def test_grouped_means_are_charged_once_and_scale_with_contributions(tmp_path: Path) -> None:
    ledger = PrivacyLedger(tmp_path / "ledger.json", dataset="ds", epsilon_budget=1.0)
    stats = PrivateStatistics(ledger, rng=np.random.default_rng(9))
    groups = {"hzsf": [6.0] * 300, "rvic": [8.0] * 300, "jhsq": []}
    release = stats.grouped_mean(groups, lower=4.0, upper=15.0, epsilon=0.5, query="mean_hba1c_by_institution",
                                 contributions=2)
    assert set(release.value) == {"hzsf", "rvic", "jhsq"}
    assert len(ledger.entries()) == 1 and ledger.spent()[0] == pytest.approx(0.5)  # one charge, every group
    assert release.sensitivity == 2 * 5.5 and release.noise_scale == pytest.approx(11.0 / 0.25)
    assert release.value["hzsf"] == pytest.approx(6.0, abs=1.5) and release.value["rvic"] == pytest.approx(8.0, abs=1.5)
    assert 4.0 <= release.value["jhsq"] <= 15.0  # an empty group releases noise inside the bounds, never an error
    with pytest.raises(PrivacyBudgetExceeded):
        stats.grouped_mean(groups, lower=4.0, upper=15.0, epsilon=0.6, query="again", contributions=2)
