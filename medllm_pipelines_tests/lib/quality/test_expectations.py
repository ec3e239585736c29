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
            "resident_id": ["11010519491231002X", None, None],
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
            "effective_at": ["2024-03-05T01:30:00+00:00", None],
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
    meta = outcome.as_metadata()
    assert (meta["suite"], meta["expectations_failed"], meta["rows_validated"]) == ("clean_patients", 2, len(frame))
    assert meta["failures"]["expect_column_values_to_be_in_set(gender)"] == {
        "unexpected_count": 1, "unexpected_percent": pytest.approx(100 / len(frame), abs=1e-3),
        "records": [f"{SOURCE[:12]}#2"]}
    assert "张三" not in str(meta) and "06/05/1975" not in str(meta)


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


# --- accuracy / consistency / completeness suites, and Data Docs -------------------------
def test_observation_ranges_are_per_loinc_code_and_unit_as_the_rules_declare():
    from medllm_pipelines.lib.common import codes
    from medllm_pipelines.lib.quality.cleaning import load_rules

    rules = load_rules()
    declared = {
        (e["kwargs"]["row_condition"], e["kwargs"]["min_value"], e["kwargs"]["max_value"])
        for e in load_suite("clean_observations").expectations if "row_condition" in e["kwargs"]
    }

    assert declared == {
        (f'loinc=="{c.canonical_loinc}" & unit=="{c.canonical_unit}"', *rules.concepts[c.name]["plausible"])
        for c in codes.CONCEPTS
    }


def test_a_value_outside_its_loincs_range_fails_naming_the_record():
    frame = clean_observations_frame()
    frame.loc[1, "value"] = 45.0  # fasting glucose 45 mmol/L: inside the generic 0-350, outside 1.5-40

    outcome = run_suite("clean_observations", frame)

    assert [(o.expectation, o.failing_records) for o in outcome.failed] == [
        ("expect_column_values_to_be_between", [f"{SOURCE[:12]}#11"])
    ]


def test_instants_without_an_offset_fail_the_iso_8601_expectation():
    frame = clean_observations_frame()
    frame.loc[0, "effective_at"] = "2024-03-05T01:30:00"

    outcome = run_suite("clean_observations", frame)

    assert [(o.column, o.failing_records) for o in outcome.failed] == [("effective_at", [f"{SOURCE[:12]}#10"])]


def test_parsed_and_cleaned_synthetic_feeds_pass_every_suite(parsed_hospital):
    import datetime as dt

    from medllm_pipelines.lib.quality.cleaning import (
        clean_conditions,
        clean_observations,
        load_rules,
    )

    raw, patients, rules = parsed_hospital.raw, parsed_hospital.patients, load_rules()
    frames = {
        "raw_patients": raw["patients"], "raw_encounters": raw["encounters"],
        "raw_observations": raw["observations"], "raw_conditions": raw["conditions"],
        "clean_patients": patients,
        "clean_observations": clean_observations(raw["observations"], patients, "o",
                                                 dt.datetime(2026, 1, 1, tzinfo=dt.UTC), rules).frame,
        "clean_conditions": clean_conditions(raw["conditions"], patients, "c", rules).frame,
    }

    assert {p.stem for p in SUITES_DIR.glob("*.json")} == set(frames)
    assert "whsy" in set(raw["observations"]["institution"])
    for name, frame in frames.items():
        outcome = run_suite(name, frame)
        assert outcome.success, outcome.summary()


def test_data_docs_are_built_as_static_html_without_record_values(tmp_path):
    from medllm_pipelines.lib.quality.expectations import build_data_docs

    bad = clean_patients_frame()
    bad.loc[1, "birth_date"] = "06/05/1975"
    bad.loc[2, "gender"] = "张三"
    outcomes = [run_suite("clean_patients", bad), run_suite("clean_observations", clean_observations_frame())]

    index = build_data_docs(outcomes, tmp_path / "docs")

    assert index == (tmp_path / "docs" / "index.html").resolve() and index.is_file()
    pages = [p for p in (tmp_path / "docs").rglob("*") if p.is_file()]
    text = "\n".join(p.read_text("utf-8", errors="ignore") for p in pages if p.suffix in (".html", ".json"))
    assert "clean_patients" in text and "clean_observations" in text
    assert f"{SOURCE[:12]}#1" in text  # failing records by reference
    for value in ("张三", "06/05/1975", "欧阳娜娜", "11010519491231002X"):
        assert value not in text, value
