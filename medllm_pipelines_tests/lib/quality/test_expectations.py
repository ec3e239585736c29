"""Expectation suites: pass on clean frames, name the failed expectation and records on bad ones."""

from __future__ import annotations

import pandas as pd
import pytest

from medllm_pipelines.lib.quality.expectations import SUITES_DIR, load_suite, run_suite

SOURCE = "0123456789abcdef" * 4


def clean_patients_frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "institution": ["h1", "h1", "h2"],
            "resource_key": ["p1", "p2", "p1"],
            "birth_date": ["1980-05-06", "1975-01-01", "2000-12-31"],
            "gender": ["female", "male", "unknown"],
            "name_zh": ["欧阳娜娜", "张三", None],
            "source_object": [SOURCE] * 3,
            "source_position": [0, 1, 2],
        }
    )


def clean_observations_frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "institution": ["h1", "h1"],
            "patient_key": ["p1", "p2"],
            "concept": ["hba1c", "fasting_glucose"],
            "loinc": ["4548-4", "14771-0"],
            "value": [6.5, 7.0],
            "unit": ["%", "mmol/L"],
            "effective_date": ["2024-03-05", "2024-03-06"],
            "source_object": [SOURCE] * 2,
            "source_position": [10, 11],
        }
    )


@pytest.mark.parametrize("suite", sorted(p.stem for p in SUITES_DIR.glob("*.json")))
def test_suites_load_with_a_version(suite):
    spec = load_suite(suite)

    assert spec.name == suite
    assert spec.version and spec.expectations


@pytest.mark.parametrize(
    ("suite", "frame"),
    [("clean_patients", clean_patients_frame()), ("clean_observations", clean_observations_frame())],
)
def test_clean_frames_pass(suite, frame):
    outcome = run_suite(suite, frame)

    assert outcome.success, outcome.summary()
    assert outcome.evaluated == len(load_suite(suite).expectations)
    assert outcome.rows == len(frame)


def test_a_bad_frame_fails_naming_the_expectation_and_the_records_not_the_values():
    frame = clean_patients_frame()
    frame.loc[1, "birth_date"] = "06/05/1975"  # not ISO 8601
    frame.loc[2, "gender"] = "张三"  # a value that must not show up in the report

    outcome = run_suite("clean_patients", frame)

    assert not outcome.success
    failed = {(o.expectation, o.column): o for o in outcome.failed}
    assert set(failed) == {
        ("expect_column_values_to_match_regex", "birth_date"),
        ("expect_column_values_to_be_in_set", "gender"),
    }
    assert failed[("expect_column_values_to_match_regex", "birth_date")].failing_records == [f"{SOURCE[:12]}#1"]
    assert failed[("expect_column_values_to_be_in_set", "gender")].failing_records == [f"{SOURCE[:12]}#2"]
    summary = outcome.summary()
    assert "expect_column_values_to_be_in_set(gender) failed for 1 rows" in summary
    assert f"{SOURCE[:12]}#1" in summary
    assert "张三" not in summary and "06/05/1975" not in summary


def test_duplicate_keys_and_wrong_unit_pairs_are_caught():
    patients = pd.concat([clean_patients_frame(), clean_patients_frame().iloc[[0]]], ignore_index=True)
    observations = clean_observations_frame()
    observations.loc[0, "unit"] = "mmol/mol"

    patient_outcome = run_suite("clean_patients", patients)
    observation_outcome = run_suite("clean_observations", observations)

    assert [(o.expectation, o.unexpected_count) for o in patient_outcome.failed] == [
        ("expect_compound_columns_to_be_unique", 2)
    ]
    assert [(o.expectation, o.column, o.failing_records) for o in observation_outcome.failed] == [
        ("expect_column_pair_values_to_be_in_set", "concept", [f"{SOURCE[:12]}#10"])
    ]


def test_records_without_a_source_are_named_by_row():
    frame = clean_patients_frame().drop(columns=["source_object", "source_position"])
    frame.loc[0, "birth_date"] = None

    outcome = run_suite("clean_patients", frame)

    (failed,) = outcome.failed
    assert (failed.expectation, failed.failing_records) == ("expect_column_values_to_not_be_null", ["row 0"])
