"""The per-person feature table built from de-identified tables."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from medllm_pipelines.lib.curate.features import age_band_midpoint, build_features
from medllm_pipelines.lib.curate.spec import load_spec


@pytest.mark.parametrize(
    ("band", "midpoint"),
    [("0-4", 2.5), ("40-44", 42.5), ("45-49", 47.5), ("90+", 92.5), (None, None), ("", None), (float("nan"), None)],
)
def test_age_band_midpoint(band, midpoint):
    assert age_band_midpoint(band) == midpoint


LABELS = pd.DataFrame({"patient_pseudonym": ["p_3", "p_1", "p_2"], "label": [0, 1, 0]})
PATIENTS = pd.DataFrame(
    {
        "patient_pseudonym": ["p_1", "p_1", "p_2", "p_3"],
        "institution": ["h2", "h1", "h1", "h1"],
        "sex": ["female", "female", "male", None],
        "age_band": ["45-49", "45-49", "90+", "40-44"],
    }
)


def obs(person: str, concept: str, *values: float) -> list[dict]:
    return [{"patient_pseudonym": person, "concept": concept, "value": v} for v in values]


OBSERVATIONS = pd.DataFrame(
    obs("p_1", "hba1c", 6.0, 8.0, 7.0, 100.0)  # median is robust to one outlier
    + obs("p_1", "bmi", 30.0)
    + obs("p_1", "body_weight", 50.0)
    + obs("p_1", "body_height", 100.0)  # would give 50.0: the measured BMI wins
    + obs("p_2", "body_weight", 80.0, 82.0)
    + obs("p_2", "body_height", 200.0)
    + obs("p_2", "fasting_glucose", 5.5)
)


@pytest.fixture(scope="module")
def features() -> pd.DataFrame:
    return build_features(LABELS, PATIENTS, OBSERVATIONS, load_spec("t2d_risk")).set_index("patient_pseudonym")


def test_one_row_per_labelled_person_with_spec_columns(features):
    spec = load_spec("t2d_risk")

    assert list(features.index) == ["p_1", "p_2", "p_3"]
    assert list(features.columns) == [*spec.numeric_features, *spec.categorical_features, "label"]
    assert features["label"].to_dict() == {"p_1": 1, "p_2": 0, "p_3": 0}


def test_labs_are_aggregated_by_median(features):
    assert features.loc["p_1", "hba1c"] == 7.5
    assert features.loc["p_2", "fasting_glucose"] == 5.5


def test_bmi_is_derived_from_weight_and_height_only_when_missing(features):
    assert features.loc["p_1", "bmi"] == 30.0
    assert features.loc["p_2", "bmi"] == pytest.approx(81.0 / 4.0, abs=0.01)
    assert math.isnan(features.loc["p_3", "bmi"])


def test_demographics_and_never_measured_values(features):
    assert features["age_years"].to_dict() == {"p_1": 47.5, "p_2": 92.5, "p_3": 42.5}
    assert features["sex"].to_dict() == {"p_1": "female", "p_2": "male", "p_3": "unknown"}
    assert features.loc["p_3", ["hba1c", "fasting_glucose", "systolic_bp"]].isna().all()  # not imputed here
