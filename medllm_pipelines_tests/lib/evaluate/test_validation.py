"""Validation methods and public benchmarks of the tabular model (issue 12 items 2, 4, 5; rows V3, V5, V6).

A small synthetic T2D cohort (features as curate/diabetes_features builds them, splits and folds from the
split stage's own ``split_persons``, three institutions with a few persons registered at two) goes through
the sections with epochs capped, so the file stays fast on two shared cores; the public benchmarks run at
tiny settings, and an unloadable one is simulated through the module's seam.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from medllm_pipelines.lib.curate.dataset import join_features_with_splits
from medllm_pipelines.lib.curate.spec import load_spec
from medllm_pipelines.lib.curate.splits import EXTERNAL, NEAR_DUPLICATE_KEY, TEST, split_persons
from medllm_pipelines.lib.evaluate import public_benchmarks as pb
from medllm_pipelines.lib.evaluate import validation as v
from medllm_pipelines.lib.evaluate.adapters import EvaluationRequest
from medllm_pipelines.lib.evaluate.outputs import ReportSection
from medllm_pipelines.lib.train.store import ModelStore

FAST_EPOCHS = 4
INSTITUTIONS = ("hzsf", "jhsq", "rvic")
PERSONS = 420


def synthetic_cohort(n: int = PERSONS, seed: int = 3) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per-person T2D features (plausible units, a few gaps) and a de-identified patients table.

    The label follows HbA1c, glucose and BMI; each person is registered at one institution, 8 % also at a
    second one (linked by the pseudonym, as deidentify/patients releases them).
    """
    rng = np.random.default_rng(seed)
    persons = [f"p_{i:024x}" for i in range(n)]
    age = rng.choice(np.arange(22.5, 93, 5.0), size=n)
    bmi = rng.normal(27, 4.5, n).clip(16, 48)
    hba1c = rng.normal(5.8, 0.8, n).clip(4.0, 12.0)
    glucose = (hba1c * 1.1 + rng.normal(0, 0.6, n)).clip(3.5, 20.0)
    risk = 1.6 * (hba1c - 6.0) + 0.5 * (glucose - 6.5) + 0.08 * (bmi - 27) + rng.normal(0, 0.7, n)
    label = (risk > 0.3).astype(int)
    features = pd.DataFrame({
        "patient_pseudonym": persons,
        "age_years": age,
        "bmi": bmi.round(1),
        "hba1c": hba1c.round(1),
        "fasting_glucose": glucose.round(1),
        "systolic_bp": rng.normal(128, 15, n).round(),
        "diastolic_bp": rng.normal(80, 9, n).round(),
        "heart_rate": rng.normal(74, 10, n).round(),
        "total_cholesterol": rng.normal(5.0, 0.9, n).round(1),
        "sex": rng.choice(["female", "male"], size=n),
        "label": label,
    })
    gaps = rng.random((n, 2)) < 0.04
    features.loc[gaps[:, 0], "total_cholesterol"] = np.nan
    features.loc[gaps[:, 1], "bmi"] = np.nan
    home = rng.choice(INSTITUTIONS, size=n)
    patients = pd.DataFrame({"patient_pseudonym": persons, "institution": home, "sex": features["sex"],
                             "age_band": [f"{int(a - 2.5)}-{int(a + 1.5)}" for a in age]})
    linked = rng.random(n) < 0.08
    second = [INSTITUTIONS[(INSTITUTIONS.index(h) + 1) % 3] for h in home[linked]]
    extra = patients[linked].assign(institution=second)
    return features, pd.concat([patients, extra], ignore_index=True)


def request_for(features: pd.DataFrame, patients: pd.DataFrame, store_root: Path, **tables: pd.DataFrame
                ) -> EvaluationRequest:
    """What the t2d evaluation asset hands the sections: the dataset joined with the split stage's splits."""
    spec = load_spec("t2d_risk")
    outcome = split_persons(features, spec.split_config, spec.feature_columns,
                            ("patient_pseudonym", NEAR_DUPLICATE_KEY))
    dataset = join_features_with_splits(features, outcome.splits)
    tables = {"dataset": dataset.frame, "splits": outcome.splits, "patients": patients, **tables}
    return EvaluationRequest(spec=spec, policy=None, record={}, dataset=dataset, tables=tables,
                             store=ModelStore(store_root), size="demo", seed=0)


@pytest.fixture(scope="module")
def cohort() -> tuple[pd.DataFrame, pd.DataFrame]:
    return synthetic_cohort()


@pytest.fixture(scope="module")
def request_(cohort, tmp_path_factory) -> EvaluationRequest:
    features, patients = cohort
    return request_for(features, patients, tmp_path_factory.mktemp("store"))


@pytest.fixture(scope="module")
def fit_log() -> dict[str, list]:
    """Every fit the cross-validation and external sections make, with the persons it saw (via the seam)."""
    return {"cv": [], "external": []}


@pytest.fixture(scope="module")
def cv_section(request_, fit_log) -> ReportSection:
    monkeypatch = pytest.MonkeyPatch()
    original = v.fit_spec_path

    def recording(spec, rows, config):
        fit_log["cv"].append(set(rows["patient_pseudonym"]))
        return original(spec, rows, config)

    monkeypatch.setattr(v, "fit_spec_path", recording)
    try:
        return v.cross_validation_section(request_, max_epochs=FAST_EPOCHS)
    finally:
        monkeypatch.undo()


@pytest.fixture(scope="module")
def external_section(request_, fit_log) -> ReportSection:
    monkeypatch = pytest.MonkeyPatch()
    original = v.fit_spec_path

    def recording(spec, rows, config):
        fit_log["external"].append(set(rows["patient_pseudonym"]))
        return original(spec, rows, config)

    monkeypatch.setattr(v, "fit_spec_path", recording)
    try:
        return v.external_validation_section(request_, max_epochs=FAST_EPOCHS)
    finally:
        monkeypatch.undo()


# --------------------------------------------------------------------------------------------- cross-validation


def test_folds_are_disjoint_cover_development_persons_and_exclude_the_test_split(request_) -> None:
    rows = v.development_rows(request_)
    assert sorted(rows["fold"].unique()) == [0, 1, 2, 3, 4]
    assert rows.groupby("patient_pseudonym")["fold"].nunique().max() == 1  # a person is in exactly one fold
    assert set(rows["split"]) == {"train", "validation"}
    test_persons = set(request_.dataset.split(TEST)["patient_pseudonym"])
    assert test_persons and not test_persons & set(rows["patient_pseudonym"])


def test_each_fold_is_scored_by_a_fit_that_never_saw_it(request_, cv_section, fit_log) -> None:
    rows = v.development_rows(request_)
    assert len(fit_log["cv"]) == 5
    for fold, seen in enumerate(fit_log["cv"]):
        held = set(rows.loc[rows["fold"] == fold, "patient_pseudonym"])
        assert not held & seen
        assert seen == set(rows["patient_pseudonym"]) - held  # fitted on all the other folds


def test_cross_validation_reports_per_fold_and_mean_sd_for_model_and_baseline(cv_section) -> None:
    summary = cv_section.summary
    assert cv_section.clause.startswith("5.3.2.1") and "V3" in cv_section.clause
    assert summary["folds"] == summary["folds_fitted"] == 5
    for name in ("model", "baseline"):
        assert 0.6 < summary[f"{name}_roc_auc_mean"] <= 1.0  # the label is learnable from HbA1c and glucose
        assert 0.0 <= summary[f"{name}_brier_mean"] < 0.25
        assert summary[f"{name}_accuracy_sd"] is not None and summary[f"{name}_accuracy_sd"] >= 0
    low, high = summary["model_roc_auc_pooled_interval"]
    assert low <= summary["model_roc_auc_pooled"] <= high
    model_minus_baseline = summary["model_roc_auc_mean"] - summary["baseline_roc_auc_mean"]
    assert summary["delta_roc_auc_mean"] == pytest.approx(model_minus_baseline)
    per_fold = cv_section.tables[1]
    assert len(per_fold.rows) == 5 and per_fold.headers[0] == "fold"
    assert cv_section.figures[0].png.startswith(b"\x89PNG")
    assert "k_folds: 5" in cv_section.text and "reach no fit" in cv_section.text


def test_cross_validation_without_folds_is_undefined_with_the_reason(cohort, tmp_path) -> None:
    features, patients = cohort
    request = request_for(features, patients, tmp_path)
    no_folds = request.tables["splits"].drop(columns=["fold"])
    request = replace(request, tables={**request.tables, "splits": no_folds})
    section = v.cross_validation_section(request)
    assert section.summary["status"] == "undefined"
    assert "fold" in section.summary["reason"] and not section.tables


def test_a_training_set_with_one_class_is_refused_not_fitted(request_) -> None:
    rows = v.development_rows(request_)
    negatives = rows[rows["label"] == 0]
    with pytest.raises(v.UnfittableError, match="one class"):
        v.fit_spec_path(request_.spec, negatives.drop(columns=["fold"]), v.spec_train_config(request_.spec, "demo", 2))
    with pytest.raises(ValueError, match="train and validation rows only"):
        v.fit_spec_path(request_.spec, request_.dataset.frame, v.spec_train_config(request_.spec, "demo", 2))


# ------------------------------------------------------------------------------------------ external validation


def test_a_held_out_institution_is_never_in_its_training(request_, external_section, fit_log) -> None:
    pairs = v.person_institutions(request_.dataset.frame["patient_pseudonym"], request_.tables["patients"])
    assert len(fit_log["external"]) == len(INSTITUTIONS)
    for institution, seen in zip(INSTITUTIONS, fit_log["external"], strict=True):
        registered = set(pairs.loc[pairs["institution"] == institution, "patient_pseudonym"])
        assert registered and not registered & seen
        split = v.held_out_split(request_, institution)
        assert set(split[split == EXTERNAL].index) >= registered  # linked persons go with either institution


def test_external_validation_reports_internal_external_and_the_drop(external_section) -> None:
    summary = external_section.summary
    assert "V6" in external_section.clause
    assert summary["institutions"] == list(INSTITUTIONS) == summary["institutions_validated"]
    for institution in INSTITUTIONS:
        internal, external = summary[f"{institution}_roc_auc_internal"], summary[f"{institution}_roc_auc_external"]
        assert 0.5 < external <= 1.0 and 0.5 < internal <= 1.0
        assert summary[f"{institution}_roc_auc_drop"] == pytest.approx(external - internal)
    assert summary["worst_roc_auc_drop"] == min(summary[f"{i}_roc_auc_drop"] for i in INSTITUTIONS)
    table = external_section.tables[0]
    assert [row[0] for row in table.rows] == list(INSTITUTIONS)
    assert external_section.figures and external_section.figures[0].png.startswith(b"\x89PNG")


def test_no_period_in_the_tables_means_no_temporal_split_and_says_what_is_needed(external_section) -> None:
    summary = external_section.summary
    assert summary["temporal_split"] == "undefined"
    assert "effective_year" in summary["temporal_reason"] and "observations" in summary["temporal_reason"]
    assert "No temporal split" in external_section.text
    assert "generated by this project" in external_section.text  # the synthetic institutions are ours


def test_a_period_per_person_gives_a_temporal_split_on_later_persons(cohort, tmp_path, monkeypatch) -> None:
    features, patients = cohort
    rng = np.random.default_rng(5)
    persons = features["patient_pseudonym"]
    observations = pd.DataFrame({"patient_pseudonym": np.repeat(persons, 2),
                                 "effective_year": np.repeat(rng.integers(2021, 2026, len(persons)), 2)
                                 + np.tile([0, 1], len(persons))})
    request = request_for(features, patients, tmp_path, observations=observations)
    periods, source = v.person_periods(request.tables)
    assert source.startswith("observations.effective_year") and periods.min() >= 2021
    only_one = replace(request, tables={**request.tables, "patients": patients.assign(institution="hzsf")})
    seen: list[set[str]] = []
    original = v.fit_spec_path
    monkeypatch.setattr(v, "fit_spec_path", lambda spec, rows, config: (
        seen.append(set(rows["patient_pseudonym"])), original(spec, rows, config))[1])
    section = v.external_validation_section(only_one, max_epochs=FAST_EPOCHS)
    assert section.summary["institutions_validated"] == []
    assert "at least two" in section.summary["institution_reason"]
    assert section.summary["temporal_split"] == "done"
    temporal = section.summary["sites"][-1]
    assert temporal["n_external"] > 0 and temporal["model"]["external"]["roc_auc"] > 0.5
    assert len(seen) == 1  # one fit: the temporal one
    cutoff = float(temporal["name"].split("first seen ")[1].split("-")[0])
    assert periods[sorted(seen[0])].max() <= cutoff  # the fit saw no person who entered care after the cutoff
    assert (periods > cutoff).sum() <= temporal["n_external"]  # every later person is tested, none trained on


# -------------------------------------------------------------------------------------------- public benchmarks

TINY = v.BenchmarkSettings("demo", wdbc_folds=2, diabetes_folds=2, diabetes_max_epochs=5, pima_seeds=(7,),
                           heart_internal_folds=2, max_epochs=3, n_boot=20)


@pytest.fixture(scope="module")
def benchmarks() -> v.PublicBenchmarks:
    monkeypatch = pytest.MonkeyPatch()

    def missing(name):
        raise OSError("data file missing")

    monkeypatch.setattr(pb, "_sklearn_dataset", missing)  # WDBC and diabetes cannot be loaded
    try:
        return v.run_public_benchmarks(settings=TINY)
    finally:
        monkeypatch.undo()


def test_an_unloadable_benchmark_is_an_undefined_row_with_the_reason_never_a_zero(benchmarks) -> None:
    assert set(benchmarks.unavailable) == {"wdbc", "diabetes_progression"}
    assert "scikit-learn" in benchmarks.unavailable["wdbc"] and "data file missing" in benchmarks.unavailable["wdbc"]
    section = v.public_benchmarks_section("demo", benchmarks)
    rows = {row[0]: row for row in section.tables[0].rows}
    assert rows["WDBC"][2] == "undefined" and rows["WDBC"][-1].startswith("undefined: ")
    assert rows["Diabetes progression"][2] == "undefined"
    assert section.summary["wdbc_accuracy"] is None and section.summary["diabetes_r2_mlp"] is None
    assert section.summary["unavailable"]["wdbc"] == benchmarks.unavailable["wdbc"]


def test_loaded_benchmarks_sit_beside_their_published_figures(benchmarks) -> None:
    assert set(benchmarks.results) == {"pima", "uci_heart"}
    section = v.public_benchmarks_section("demo", benchmarks)
    assert "V5" in section.clause and section.summary["reduced"] is True
    pima = [row for row in section.tables[0].rows if row[0] == "Pima (Ripley split)"]
    assert any("0.199" in str(row[4]) for row in pima)
    refit = [row for row in pima if "refit" in row[1]]
    assert {row[-1] for row in refit} == {"met"}  # Ripley's 66 and 67 errors are reproduced exactly
    error = section.summary["pima_test_error_rate"]
    assert 0.1 < error < 0.45
    heart_rows = [row for row in section.tables[0].rows if row[0] == "UCI heart"]
    assert len(heart_rows) == 4 and all(row[-1] in ("met", "not met", "reference") for row in heart_rows)
    assert section.tables[1].rows[0][0] == "Cleveland (internal CV)"
    assert section.figures[0].png.startswith(b"\x89PNG")
    metadata = benchmarks.as_metadata()
    assert metadata["settings"]["wdbc_folds"] == 2 and "pima" in metadata["results"]
    assert "Demo size" in section.text


def test_the_uci_heart_table_joins_the_external_section_when_given(request_, benchmarks, monkeypatch) -> None:
    monkeypatch.setattr(v, "_validate_site", lambda request, name, split, config, n_boot: v.SiteResult(
        name, 0, 0, 0, 0, reason="skipped in this test"))
    section = v.external_validation_section(request_, max_epochs=1, benchmarks=benchmarks)
    assert any(table.title.startswith("UCI heart disease") for table in section.tables)
    assert section.summary["institutions_validated"] == []


def test_benchmark_settings_reduce_only_at_demo_size() -> None:
    assert v.benchmark_settings("full").wdbc_folds == 10 and v.benchmark_settings("full").max_epochs is None
    assert v.benchmark_settings("demo").wdbc_folds < 10
    with pytest.raises(ValueError, match="size must be"):
        v.benchmark_settings("huge")
    with pytest.raises(ValueError, match="unknown public benchmarks"):
        v.run_public_benchmarks(settings=TINY, only=("imagenet",))


def test_validation_sections_run_the_benchmarks_once_and_share_them(request_, benchmarks, monkeypatch) -> None:
    runs = []
    monkeypatch.setattr(v, "run_public_benchmarks", lambda size: runs.append(size) or benchmarks)
    monkeypatch.setattr(v, "cross_validation_section", lambda request: ReportSection("cross_validation", "cv", "V3"))
    monkeypatch.setattr(v, "_validate_site", lambda request, name, split, config, n_boot: v.SiteResult(
        name, 0, 0, 0, 0, reason="skipped in this test"))
    sections = v.validation_sections(request_)
    assert runs == ["demo"]
    assert [s.key for s in sections] == ["cross_validation", "external_validation", "public_benchmarks"]
    assert any(t.title.startswith("UCI heart disease") for t in sections[1].tables)
