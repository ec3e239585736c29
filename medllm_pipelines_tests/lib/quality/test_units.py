"""Unit conversion through ucumvert/pint: factors from the library, molar masses and the HbA1c
master equation declared; results identical to the former declared factors except where the
declared molar masses intentionally refine them."""

from __future__ import annotations

import datetime as dt

import pandas as pd
import pytest

from medllm_pipelines.lib.common import codes
from medllm_pipelines.lib.quality import units
from medllm_pipelines.lib.quality.cleaning import clean_observations, load_rules
from medllm_pipelines.lib.quality.units import (
    EQUATION,
    UnitError,
    pint_conversion,
    ucum_quantity,
)

NOW = dt.datetime(2024, 6, 1, 12, 0, tzinfo=dt.UTC)
# The hand-written factors of cleaning_rules.yaml 1.0.0 (value * scale + offset).
FORMER_FACTORS = {
    ("hba1c", "mmol/mol"): (0.09148, 2.152),
    ("fasting_glucose", "mg/dL"): (0.05550622, 0.0),
    ("total_cholesterol", "mg/dL"): (0.02586, 0.0),
    ("bmi", "kg/m^2"): (1.0, 0.0),
    ("body_weight", "[lb_av]"): (0.45359237, 0.0),
    ("body_weight", "g"): (0.001, 0.0),
    ("body_height", "m"): (100.0, 0.0),
    ("body_height", "[in_i]"): (2.54, 0.0),
    ("heart_rate", "{beats}/min"): (1.0, 0.0),
}
REFINED_BY_MOLAR_MASS = {("fasting_glucose", "mg/dL"): 180.156, ("total_cholesterol", "mg/dL"): 386.65}


@pytest.fixture(scope="module")
def rules():
    return load_rules()


def test_every_former_unit_is_still_accepted_and_nothing_else_is_added(rules):
    accepted = {key for key, conversion in rules.conversions.items() if conversion.method != "identity"}

    assert accepted == set(FORMER_FACTORS)


@pytest.mark.parametrize("key", sorted(set(FORMER_FACTORS) - set(REFINED_BY_MOLAR_MASS)))
def test_library_factors_equal_the_former_declared_ones(rules, key):
    conversion = rules.conversion(*key)
    scale, offset = FORMER_FACTORS[key]

    assert conversion.scale == pytest.approx(scale, abs=1e-12) and conversion.offset == pytest.approx(offset, abs=1e-12)


@pytest.mark.parametrize("key", sorted(REFINED_BY_MOLAR_MASS))
def test_mass_to_molar_uses_the_declared_molar_mass(rules, key):
    conversion = rules.conversion(*key)
    molar_mass = REFINED_BY_MOLAR_MASS[key]

    assert conversion.method == "pint:chemistry"
    assert conversion.scale == pytest.approx(10 / molar_mass, rel=1e-12)  # mg/dL -> mmol/L = 10 mg/L per g/mol
    former = FORMER_FACTORS[key][0]
    assert abs(conversion.scale - former) / former < 2e-4  # the former factors were rounded


def test_hba1c_ifcc_is_the_declared_master_equation_not_a_unit_conversion(rules):
    conversion = rules.conversion("hba1c", "mmol/mol")

    assert conversion.method == EQUATION and "master equation" in conversion.note
    assert conversion(48) == pytest.approx(6.543, abs=1e-3)
    # What a units library alone would say: mmol/mol is dimensionless, 48 mmol/mol = 4.8 %.
    assert (48 * ucum_quantity("mmol/mol")).to(ucum_quantity("%").units).magnitude == pytest.approx(4.8)


def test_non_ucum_spellings_need_a_declared_alias():
    with pytest.raises(UnitError):
        ucum_quantity("kg/m^2")
    with pytest.raises(UnitError):
        pint_conversion("hba1c", "mg/dL", "%")  # changes dimension, no molar mass declared


def _row(key: str, code: str, value: float, unit: str) -> dict:
    return {"patient_key": "p1", "status": "final", "category": "laboratory", "code_system": codes.LOINC,
            "code": code, "display": None, "value": value, "unit": unit, "unit_system": codes.UCUM,
            "effective": "2024-03-05T09:30:00+08:00", "institution": "h1", "resource_type": "Observation",
            "resource_key": key, "version_id": None, "content_hash": key, "source_object": "d" * 64,
            "source_position": int(key[1:])}


SOURCE_CODE = {"hba1c": "59261-8", "fasting_glucose": "1558-6", "total_cholesterol": "2093-3", "bmi": "39156-5",
               "body_weight": "29463-7", "body_height": "8302-2", "heart_rate": "8867-4"}
VALUES = {"hba1c": 48.0, "fasting_glucose": 126.0, "total_cholesterol": 200.0, "bmi": 24.3, "body_weight": 154.0,
          "body_height": 1.72, "heart_rate": 72.0}


def test_clean_observations_output_matches_the_former_factors(rules):
    keys = sorted(FORMER_FACTORS)
    for number, (concept, unit) in enumerate(keys):
        value = VALUES[concept] * (1000 if unit == "g" else 1) / (100 if unit == "[in_i]" else 1)
        VALUES[f"{concept}/{unit}"] = value
    raw = pd.DataFrame([_row(f"o{n}", SOURCE_CODE[c], VALUES[f"{c}/{u}"], u) for n, (c, u) in enumerate(keys)])
    patients = pd.DataFrame({"institution": ["h1"], "resource_key": ["p1"], "birth_date": ["1980-01-01"]})

    out = clean_observations(raw, patients, "quality/clean_observations", NOW, rules).frame

    assert list(out.columns) == ["institution", "patient_key", "resource_key", "concept", "loinc", "source_loinc",
                                 "source_code_system", "value", "unit", "source_unit", "effective_date",
                                 "effective_at", "source_object", "source_position"]
    for row in out.itertuples():
        concept, unit = keys[int(row.resource_key[1:])]
        scale, offset = FORMER_FACTORS[(concept, unit)]
        former = round(VALUES[f"{concept}/{unit}"] * scale + offset, 4)
        if (concept, unit) in REFINED_BY_MOLAR_MASS:
            assert row.value == pytest.approx(former, rel=2e-4), (concept, unit)
        else:
            assert row.value == pytest.approx(former, abs=1e-6), (concept, unit)


def test_rows_are_converted_without_touching_the_units_library(rules, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("unit parsed per row")

    monkeypatch.setattr(units, "ucum_quantity", refuse)
    monkeypatch.setattr(units, "pint_conversion", refuse)
    raw = pd.DataFrame([_row("o1", "1558-6", 126.0, "mg/dL")] * 50)
    patients = pd.DataFrame({"institution": ["h1"], "resource_key": ["p1"], "birth_date": ["1980-01-01"]})

    out = clean_observations(raw, patients, "quality/clean_observations", NOW, rules).frame

    assert out["value"].iloc[0] == pytest.approx(126 * 10 / 180.156, abs=1e-4)
