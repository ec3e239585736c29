"""Preprocessing is fitted on the training split only and applied unchanged elsewhere."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from medllm_pipelines.lib.curate.preprocessing import (
    PreprocessingSpec,
    fit_preprocessing,
    load_preprocessing,
    save_preprocessing,
)

NUMERIC = ("signal", "weak_signal", "noise1", "noise2", "noise3")


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    rng = np.random.default_rng(2)
    n = 600
    label = (rng.random(n) < 0.4).astype(int)
    data = pd.DataFrame({
        "patient_pseudonym": [f"p{i:04d}" for i in range(n)],
        "signal": rng.normal(0, 1, n) + 2.5 * label,
        "weak_signal": rng.normal(0, 1, n) + 0.8 * label,
        "noise1": rng.normal(0, 1, n), "noise2": rng.normal(5, 3, n), "noise3": rng.normal(-2, 1, n),
        "sex": rng.choice(["female", "male"], n),
        "label": label,
        "split": rng.choice(["train", "validation", "test"], n, p=[0.7, 0.15, 0.15]),
    })
    data.loc[data.index[::17], "signal"] = np.nan
    # the evaluation splits are shifted: any statistic learned from them would show
    data.loc[data["split"] != "train", "noise2"] += 50
    return data


def _spec(**kwargs) -> PreprocessingSpec:
    return PreprocessingSpec(numeric_columns=NUMERIC, categorical_columns=("sex",), **kwargs)


def test_statistics_come_from_the_training_rows_only(frame):
    fitted = fit_preprocessing(frame, _spec())
    described = fitted.describe()
    train = frame[frame["split"] == "train"]
    assert described["fitted_on"]["rows"] == len(train)
    assert described["imputation_values"]["signal"] == pytest.approx(train["signal"].median())
    noise2 = NUMERIC.index("noise2")
    assert described["zscore"]["mean"][noise2] == pytest.approx(train["noise2"].mean())
    assert fitted.fingerprint() != fit_preprocessing(frame.assign(split="train"), _spec()).fingerprint()


def test_min_max_scaling_and_one_hot_encoding(frame):
    fitted = fit_preprocessing(frame, _spec(scaling="minmax"))
    out = fitted.transform(frame[frame["split"] == "train"])
    assert out[list(NUMERIC)].min().min() == pytest.approx(0.0) and out[list(NUMERIC)].max().max() == pytest.approx(1.0)
    assert {"sex_female", "sex_male"} <= set(out.columns)
    unseen = fitted.transform(frame.head(2).assign(sex="other"))
    assert (unseen[["sex_female", "sex_male"]] == 0).all().all()


@pytest.mark.parametrize("method", ["univariate", "lasso", "rfe"])
def test_feature_selection_keeps_the_informative_features(frame, method):
    fitted = fit_preprocessing(frame, _spec(selection=method, select_k=2, lasso_c=0.02))
    selected = fitted.describe()["feature_selection"]["selected"]
    assert "signal" in selected
    assert len(selected) < len(NUMERIC) + 2


def test_pca_reduces_to_the_declared_components(frame):
    fitted = fit_preprocessing(frame, _spec(pca_components=3))
    assert fitted.transform(frame).shape == (len(frame), 3)
    assert len(fitted.describe()["pca"]["explained_variance_ratio"]) == 3


def test_saved_preprocessing_transforms_serving_rows_identically(frame, tmp_path):
    fitted = fit_preprocessing(frame, _spec(selection="univariate", select_k=3))
    paths = save_preprocessing(fitted, tmp_path / "v1")
    loaded = load_preprocessing(tmp_path / "v1")
    serving = frame[frame["split"] == "test"].head(20)
    pd.testing.assert_frame_equal(loaded.transform(serving), fitted.transform(serving))
    assert loaded.fingerprint() == fitted.fingerprint()
    assert paths["description"].endswith("preprocessing.json")
    # one serving row at a time gives what the batch gave
    np.testing.assert_allclose(loaded.transform_array(serving.head(1)), fitted.transform_array(serving)[:1], rtol=1e-6)


def test_a_changed_pipeline_file_is_refused_before_unpickling(frame, tmp_path):
    save_preprocessing(fit_preprocessing(frame, _spec()), tmp_path / "v1")
    pipeline = tmp_path / "v1" / "preprocessing.joblib"
    pipeline.write_bytes(pipeline.read_bytes() + b"\0")
    with pytest.raises(ValueError, match="SHA-256"):
        load_preprocessing(tmp_path / "v1")


LABS = ("age_years", "hba1c", "fasting_glucose", "total_cholesterol", "bmi", "systolic_bp", "heart_rate")


@pytest.fixture(scope="module")
def clinical() -> pd.DataFrame:
    rng = np.random.default_rng(5)
    n = 400
    label = (rng.random(n) < 0.3).astype(int)
    data = pd.DataFrame({
        "patient_pseudonym": [f"p{i:04d}" for i in range(n)],
        "age_years": rng.normal(55, 12, n),
        "hba1c": rng.normal(5.6, 0.5, n) + 1.5 * label,
        "fasting_glucose": rng.normal(5.2, 0.6, n) + 2.0 * label,
        "total_cholesterol": rng.normal(5.0, 0.8, n),
        "bmi": rng.normal(27, 4, n),
        "systolic_bp": rng.normal(128, 15, n),
        "heart_rate": rng.normal(72, 9, n),
        "sex": rng.choice(["female", "male", None], n),
        "label": label,
        "split": rng.choice(["train", "validation", "test"], n, p=[0.7, 0.15, 0.15]),
    })
    for column, every in (("hba1c", 7), ("fasting_glucose", 9), ("total_cholesterol", 5), ("bmi", 11),
                          ("systolic_bp", 13), ("heart_rate", 6), ("age_years", 10)):
        data.loc[data.index[::every], column] = np.nan
    data.loc[data["split"] != "train", "systolic_bp"] += 60  # a leak of evaluation statistics would show
    return data


def test_the_declared_missing_value_policy_is_a_fitted_step_reported_once(clinical):
    """Row D5's policy is applied inside the pipeline: fitted on train, one report of every imputed value."""
    spec = PreprocessingSpec(numeric_columns=LABS, categorical_columns=("sex",))
    fitted = fit_preprocessing(clinical, spec)
    train = clinical[clinical["split"] == "train"]
    report = fitted.missing_values
    methods = report["method_per_column"]
    assert methods["hba1c"] == {"iterative": int(train["hba1c"].isna().sum())}
    assert methods["total_cholesterol"] == {"knn": int(train["total_cholesterol"].isna().sum())}
    assert methods["systolic_bp"] == {"median": int(train["systolic_bp"].isna().sum())}
    assert methods["heart_rate"] == {"mean": int(train["heart_rate"].isna().sum())}
    # bmi is declared "interpolate" (a patient's time series): a per-person frame has none, its fallback applies
    assert methods["bmi"] == {"fallback_median": int(train["bmi"].isna().sum())}
    # age is not in the policy: the spec's own median imputation fills it
    assert methods["age_years"] == {"spec_imputation_median": int(train["age_years"].isna().sum())}
    assert methods["sex"] == {"missing_category": int(train["sex"].isna().sum())}
    assert report["total_imputed"] == int(train[list(LABS) + ["sex"]].isna().sum().sum())
    declared = fitted.describe()["declared_missing_values"]
    assert declared["statistics"]["systolic_bp"] == pytest.approx(train["systolic_bp"].median())
    # applied unchanged to a test row: its missing systolic_bp gets the training median, not its split's
    test_row = clinical[(clinical["split"] == "test") & clinical["systolic_bp"].isna()].head(1)
    imputed = fitted.pipeline.named_steps["columns"].named_transformers_["numeric"].named_steps["declared"]
    assert imputed.transform(test_row[list(LABS)])["systolic_bp"].iloc[0] == pytest.approx(train["systolic_bp"].median())
    assert np.isfinite(fitted.transform_array(clinical)).all()


def test_a_numeric_column_missing_in_all_training_rows_is_refused(clinical):
    spec = PreprocessingSpec(numeric_columns=LABS, categorical_columns=("sex",))
    with pytest.raises(ValueError, match="entirely missing"):
        fit_preprocessing(clinical.assign(age_years=np.nan), spec)
    with pytest.raises(KeyError, match="lacks feature columns"):
        fit_preprocessing(clinical.drop(columns=["bmi"]), spec)


def test_declaration_is_validated():
    with pytest.raises(ValueError, match="select_k"):
        _spec(selection="rfe")
    with pytest.raises(ValueError, match="scaling"):
        _spec(scaling="robust")
    with pytest.raises(ValueError, match="no training rows"):
        fit_preprocessing(pd.DataFrame({"split": ["test"], "label": [0], **{c: [1.0] for c in NUMERIC}, "sex": ["f"],
                                        "patient_pseudonym": ["p"]}), _spec())


def test_a_numeric_only_spec_is_fitted_and_described(frame):
    spec = PreprocessingSpec(numeric_columns=NUMERIC, categorical_columns=(), declared_missing_values=False)
    fitted = fit_preprocessing(frame, spec)
    described = fitted.describe()
    assert described["categories"] == {} and list(described["imputation_values"]) == list(NUMERIC)
    assert len(fitted.output_features) == len(NUMERIC)  # no one-hot columns
