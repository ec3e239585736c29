from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from medllm_pipelines.lib.train.preprocessing import (
    PREPROCESSOR_FILENAME,
    fit_preprocessor,
    load_preprocessor,
    save_preprocessor,
)

NUMERIC = ["age", "bmi", "hba1c"]
CATEGORICAL = ["sex"]


@pytest.fixture()
def diabetes_like_frame() -> pd.DataFrame:
    rng = np.random.default_rng(3)
    n = 200
    frame = pd.DataFrame(
        {
            "age": rng.normal(55, 12, n),
            "bmi": rng.normal(28, 5, n),
            "hba1c": rng.normal(6.0, 1.0, n),
            "sex": rng.choice(["male", "female", "other", "unknown"], n),
            "split": rng.choice(["train", "validation", "test"], n, p=[0.6, 0.2, 0.2]),
        }
    )
    frame.loc[frame.index[::7], "bmi"] = np.nan
    frame.loc[frame.index[::11], "sex"] = None
    return frame


def _train(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[frame["split"] == "train"]


@pytest.mark.parametrize(
    "change",
    ["shift_values", "add_missing", "new_category"],
)
def test_statistics_come_from_train_rows_only(diabetes_like_frame: pd.DataFrame, change: str) -> None:
    """Rewriting validation and test rows leaves medians, means, scales and categories untouched."""
    before = fit_preprocessor(_train(diabetes_like_frame), NUMERIC, CATEGORICAL).fitted_statistics()
    changed = diabetes_like_frame.copy()
    held_out = changed["split"] != "train"
    if change == "shift_values":
        changed.loc[held_out, NUMERIC] = changed.loc[held_out, NUMERIC] * 10 + 100
    elif change == "add_missing":
        changed.loc[held_out, NUMERIC] = np.nan
    else:
        changed.loc[held_out, "sex"] = "intersex"
    after = fit_preprocessor(_train(changed), NUMERIC, CATEGORICAL).fitted_statistics()
    assert after == before


def test_statistics_do_follow_train_rows(diabetes_like_frame: pd.DataFrame) -> None:
    """The control for the test above: train rows do move the fitted statistics."""
    before = fit_preprocessor(_train(diabetes_like_frame), NUMERIC, CATEGORICAL).fitted_statistics()
    changed = diabetes_like_frame.copy()
    changed.loc[changed["split"] == "train", "age"] += 10
    after = fit_preprocessor(_train(changed), NUMERIC, CATEGORICAL).fitted_statistics()
    assert after["mean"]["age"] == pytest.approx(before["mean"]["age"] + 10)
    assert after["median"]["age"] == pytest.approx(before["median"]["age"] + 10)


def test_missing_values_imputed_with_train_median_and_counted(diabetes_like_frame: pd.DataFrame) -> None:
    train = _train(diabetes_like_frame)
    fitted = fit_preprocessor(train, NUMERIC, CATEGORICAL)
    report = fitted.missing_values.to_dict()
    assert report["imputed_per_column"] == {column: int(train[column].isna().sum()) for column in NUMERIC + CATEGORICAL}
    assert report["imputed_per_column"]["bmi"] > 0 and report["n_rows"] == len(train)
    assert "median" in report["numeric_policy"]

    row = train.iloc[[0]].copy()
    row["bmi"] = np.nan
    transformed = fitted.transform(row)
    bmi_index = fitted.feature_names_out.index("numeric__bmi")
    stats = fitted.fitted_statistics()
    expected = (stats["median"]["bmi"] - stats["mean"]["bmi"]) / stats["scale"]["bmi"]
    assert transformed[0, bmi_index] == pytest.approx(expected, rel=1e-5)


def test_serving_rows_with_unseen_category_encode_as_zeros(diabetes_like_frame: pd.DataFrame) -> None:
    fitted = fit_preprocessor(_train(diabetes_like_frame), NUMERIC, CATEGORICAL)
    row = pd.DataFrame({"age": [60.0], "bmi": [30.0], "hba1c": [7.1], "sex": ["not-a-category"], "extra": [1]})
    sex_columns = [i for i, name in enumerate(fitted.feature_names_out) if name.startswith("categorical__sex")]
    assert fitted.transform(row)[0, sex_columns].tolist() == [0.0] * len(sex_columns)


def test_missing_feature_column_is_named(diabetes_like_frame: pd.DataFrame) -> None:
    fitted = fit_preprocessor(_train(diabetes_like_frame), NUMERIC, CATEGORICAL)
    with pytest.raises(KeyError, match="hba1c"):
        fitted.transform(diabetes_like_frame.drop(columns=["hba1c"]))


def test_saved_preprocessor_transforms_identically_and_refuses_tampering(
    diabetes_like_frame: pd.DataFrame, tmp_path: Path
) -> None:
    fitted = fit_preprocessor(_train(diabetes_like_frame), NUMERIC, CATEGORICAL)
    save_preprocessor(fitted, tmp_path)
    loaded = load_preprocessor(tmp_path)
    np.testing.assert_array_equal(loaded.transform(diabetes_like_frame), fitted.transform(diabetes_like_frame))
    config = json.loads((tmp_path / "preprocessor.json").read_text())
    assert config["config"]["numeric_columns"] == NUMERIC
    assert config["missing_values"]["imputed_per_column"]["bmi"] > 0

    with (tmp_path / PREPROCESSOR_FILENAME).open("ab") as handle:
        handle.write(b"\0")
    with pytest.raises(ValueError, match="SHA-256"):
        load_preprocessor(tmp_path)


def test_all_missing_numeric_column_in_train_is_refused(diabetes_like_frame: pd.DataFrame) -> None:
    train = _train(diabetes_like_frame).copy()
    train["hba1c"] = np.nan
    with pytest.raises(ValueError, match="hba1c"):
        fit_preprocessor(train, NUMERIC, CATEGORICAL)
