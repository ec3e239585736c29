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
    transform,
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
    out = transform(fitted, frame[frame["split"] == "train"])
    assert out[list(NUMERIC)].min().min() == pytest.approx(0.0) and out[list(NUMERIC)].max().max() == pytest.approx(1.0)
    assert {"sex_female", "sex_male"} <= set(out.columns)
    unseen = transform(fitted, frame.head(2).assign(sex="other"))
    assert (unseen[["sex_female", "sex_male"]] == 0).all().all()


@pytest.mark.parametrize("method", ["univariate", "lasso", "rfe"])
def test_feature_selection_keeps_the_informative_features(frame, method):
    fitted = fit_preprocessing(frame, _spec(selection=method, select_k=2, lasso_c=0.02))
    selected = fitted.describe()["feature_selection"]["selected"]
    assert "signal" in selected
    assert len(selected) < len(NUMERIC) + 2


def test_pca_reduces_to_the_declared_components(frame):
    fitted = fit_preprocessing(frame, _spec(pca_components=3))
    assert transform(fitted, frame).shape == (len(frame), 3)
    assert len(fitted.describe()["pca"]["explained_variance_ratio"]) == 3


def test_saved_preprocessing_transforms_serving_rows_identically(frame, tmp_path):
    fitted = fit_preprocessing(frame, _spec(selection="univariate", select_k=3))
    paths = save_preprocessing(fitted, tmp_path / "v1")
    pipeline, described = load_preprocessing(tmp_path / "v1")
    serving = frame[frame["split"] == "test"].head(20)
    pd.testing.assert_frame_equal(transform(pipeline, serving, fitted.spec), transform(fitted, serving))
    assert described["fingerprint"] == fitted.fingerprint()
    assert paths["description"].endswith("preprocessing.json")


def test_declaration_is_validated():
    with pytest.raises(ValueError, match="select_k"):
        _spec(selection="rfe")
    with pytest.raises(ValueError, match="scaling"):
        _spec(scaling="robust")
    with pytest.raises(ValueError, match="no training rows"):
        fit_preprocessing(pd.DataFrame({"split": ["test"], "label": [0], **{c: [1.0] for c in NUMERIC}, "sex": ["f"],
                                        "patient_pseudonym": ["p"]}), _spec())
