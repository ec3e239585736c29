"""Cleaning and harmonisation under the declared rules; every result reconciles."""

from __future__ import annotations

import datetime as dt
from typing import Any
from zoneinfo import ZoneInfo

import pandas as pd
import pytest

from medllm_pipelines.lib.common import codes
from medllm_pipelines.lib.quality.cleaning import (
    UnparseableDate,
    clean_conditions,
    clean_consents,
    clean_observations,
    clean_patients,
    load_rules,
    normalise_icd10,
    parse_fhir_datetime,
    resident_id_is_valid,
)

SHANGHAI = ZoneInfo("Asia/Shanghai")
TODAY = dt.date(2024, 6, 1)
NOW = dt.datetime(2024, 6, 1, 12, 0, tzinfo=dt.UTC)
UTC = dt.UTC


@pytest.fixture(scope="module")
def rules():
    return load_rules()


# --- dates --------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "tz", "expected"),
    [
        ("2024", SHANGHAI, (dt.date(2024, 1, 1), None)),
        ("2024-03", SHANGHAI, (dt.date(2024, 3, 1), None)),
        ("2024-03-05", SHANGHAI, (dt.date(2024, 3, 5), None)),
        ("2024-03-05T01:30:00+08:00", UTC, (dt.date(2024, 3, 5), dt.datetime(2024, 3, 4, 17, 30, tzinfo=UTC))),
        ("2024-03-05T12:00:00Z", SHANGHAI, (dt.date(2024, 3, 5), dt.datetime(2024, 3, 5, 12, 0, tzinfo=UTC))),
        ("2024-03-05T01:30:00", SHANGHAI, (dt.date(2024, 3, 5), dt.datetime(2024, 3, 4, 17, 30, tzinfo=UTC))),
        ("2024-03-05T01:30:00", ZoneInfo("UTC"), (dt.date(2024, 3, 5), dt.datetime(2024, 3, 5, 1, 30, tzinfo=UTC))),
        (
            "2024-03-05T01:30:00.250+08:00",
            UTC,
            (dt.date(2024, 3, 5), dt.datetime(2024, 3, 4, 17, 30, 0, 250000, tzinfo=UTC)),
        ),
        (None, SHANGHAI, None),
        ("", SHANGHAI, None),
        (float("nan"), SHANGHAI, None),
    ],
    ids=[
        "year", "year_month", "date", "offset", "zulu", "naive_local", "naive_utc_site", "fraction", "none", "empty",
        "nan",
    ],
)
def test_parse_fhir_datetime(text, tz, expected):
    assert parse_fhir_datetime(text, tz) == expected


@pytest.mark.parametrize("text", ["2024-13", "2024-02-30", "05/03/2024", "yesterday", "2024-03-05T25:00:00", "1980-1-1"])
def test_unparseable_dates_raise(text):
    with pytest.raises(UnparseableDate):
        parse_fhir_datetime(text, SHANGHAI)


# --- resident IDs ---------------------------------------------------------------
def with_check_digit(first17: str) -> str:
    """ISO 7064 MOD 11-2, written from the standard rather than the library's table."""
    total = sum(int(d) * pow(2, 17 - i, 11) for i, d in enumerate(first17))
    check = (12 - total % 11) % 11
    return first17 + ("X" if check == 10 else str(check))


VALID_ID = with_check_digit("44030419900307123")
VALID_X_ID = with_check_digit("11010519491231002")


def test_computed_ids_are_valid():
    assert VALID_X_ID.endswith("X")  # the textbook example
    assert resident_id_is_valid(VALID_ID)
    assert resident_id_is_valid(VALID_X_ID)
    assert resident_id_is_valid(VALID_X_ID.lower())


@pytest.mark.parametrize(
    "value",
    [
        VALID_ID[:17] + str((int(VALID_ID[17]) + 1) % 10) if VALID_ID[17].isdigit() else VALID_ID[:17] + "0",
        VALID_X_ID[:17] + "0",
        VALID_ID[:17],
        VALID_ID + "0",
        "A" + VALID_ID[1:],
        None,
        "",
    ],
    ids=["wrong_check_digit", "x_replaced", "17_chars", "19_chars", "letter", "none", "empty"],
)
def test_invalid_resident_ids(value):
    assert not resident_id_is_valid(value)


# --- patients -----------------------------------------------------------------
def patient_row(
    key: str, birth_date: Any, *, content: str | None = None, position: int = 0, **overrides: Any
) -> dict[str, Any]:
    row = {
        "mrn": f"MRN-{key}",
        "resident_id": None,
        "name_zh": "张三",
        "name_en": None,
        "gender": "female",
        "birth_date": birth_date,
        "phone": "13812345678",
        "email": None,
        "address": None,
        "institution": "h1",
        "resource_type": "Patient",
        "resource_key": key,
        "version_id": None,
        "content_hash": content or f"hash-{key}",
        "source_object": "c" * 64,
        "source_position": position,
    }
    row.update(overrides)
    return row


def test_clean_patients_dedupes_and_quarantines_impossible_birth_dates(rules):
    raw = pd.DataFrame(
        [
            patient_row("p1", "1980-05-06", resident_id=VALID_ID, position=0),
            patient_row("p1", "1980-05-06", resident_id=VALID_ID, position=1),  # same content resent
            patient_row("p2", "1975", gender="M", resident_id=VALID_ID[:17] + "0", position=2),
            patient_row("p3", "2030-01-01", position=3),  # future
            patient_row("p4", "1899-12-31", position=4),  # before 1900
            patient_row("p5", "1980-02-30", position=5),  # not a date
            patient_row("p6", None, position=6),
        ]
    )

    result = clean_patients(raw, "quality/clean_patients", TODAY, rules)

    out = result.frame.set_index("resource_key")
    assert list(out.index) == ["p1", "p2"]
    assert out.loc["p2", "birth_date"] == "1975-01-01"
    assert out.loc["p2", "gender"] == "unknown"
    assert out["resident_id_valid"].tolist() == [True, False]
    assert result.details["invalid_resident_ids"] == 1
    assert sorted((q.position, q.reason_code) for q in result.quarantine) == [
        (3, "impossible_date"),
        (4, "impossible_date"),
        (5, "unparseable_date"),
        (6, "missing_required_field"),
    ]
    assert result.reconciliation.balanced
    assert result.reconciliation.removed_by_rule == {"duplicate_record": 1, "superseded_version": 0}
    for record in result.quarantine:
        assert not [v for v in ("1980-02-30", "2030-01-01", "1899-12-31", "张三") if v in record.reason]
        assert (record.stage, record.resource_type, record.source_object) == ("quality", "Patient", "c" * 64)


@pytest.mark.parametrize("order", ["oldest_first", "newest_first"])
def test_a_superseded_version_gives_way_to_the_newest_whatever_the_row_order(rules, order):
    old = patient_row("p1", "1980-05-06", content="v1", version_id="1", gender="unknown", position=0)
    new = patient_row("p1", "1980-05-06", content="v2", version_id="2", gender="female", position=0)
    rows = [old, new] if order == "oldest_first" else [new, old]

    result = clean_patients(pd.DataFrame(rows), "quality/clean_patients", TODAY, rules)

    assert result.frame["content_hash"].tolist() == ["v2"]
    assert result.reconciliation.removed_by_rule["superseded_version"] == 1


def test_versions_compare_as_numbers_not_text(rules):
    rows = [
        patient_row("p1", "1980-05-06", content="v10", version_id="10"),
        patient_row("p1", "1980-05-06", content="v9", version_id="9"),
    ]

    result = clean_patients(pd.DataFrame(rows), "quality/clean_patients", TODAY, rules)

    assert result.frame["content_hash"].tolist() == ["v10"]


def test_without_versions_the_later_delivery_wins(rules):
    rows = [patient_row("p1", "1980-05-06", content="first"), patient_row("p1", "1981-05-06", content="second")]

    result = clean_patients(pd.DataFrame(rows), "quality/clean_patients", TODAY, rules)

    assert result.frame["birth_date"].tolist() == ["1981-05-06"]


# --- observations ---------------------------------------------------------------
CLEAN_PATIENTS = pd.DataFrame(
    {
        "institution": ["h1", "h2"],
        "resource_key": ["p1", "p9"],
        "birth_date": ["1980-05-06", "2000-01-01"],
    }
)


def obs_row(key: str, code: str, value: Any, unit: str | None, *, patient: str = "p1", institution: str = "h1",
            effective: str | None = "2024-03-05T09:30:00+08:00", system: str = codes.LOINC) -> dict[str, Any]:
    return {
        "patient_key": patient,
        "status": "final",
        "category": "laboratory",
        "code_system": system,
        "code": code,
        "display": None,
        "value": value,
        "unit": unit,
        "unit_system": codes.UCUM,
        "effective": effective,
        "institution": institution,
        "resource_type": "Observation",
        "resource_key": key,
        "version_id": None,
        "content_hash": f"hash-{key}",
        "source_object": "d" * 64,
        "source_position": int(key.removeprefix("o")),
    }


@pytest.fixture(scope="module")
def cleaned_observations(rules):
    raw = pd.DataFrame(
        [
            obs_row("o1", "1558-6", 126, "mg/dL"),  # fasting glucose, mass units
            obs_row("o2", "59261-8", 48, "mmol/mol"),  # HbA1c, IFCC
            obs_row("o3", "GLU-F", 6.1, "mmol/L", patient="p9", institution="h2",
                    system=codes.local_lab_system("h2"), effective="2024-03-05"),
            obs_row("o4", "14771-0", 400, "mmol/L"),  # implausible
            obs_row("o5", "14771-0", 6.0, "g/L"),  # unit with no declared conversion
            obs_row("o6", "4548-4", 6.0, "%", effective="1979-01-01"),  # before birth
            obs_row("o7", "4548-4", 6.0, "%", effective="2024-07-01T08:00:00+08:00"),  # after NOW
            obs_row("o8", "4548-4", 6.0, "%", patient="ghost"),
            obs_row("o9", "2345-7", 1.0, "mg"),  # a valid LOINC code the platform does not use
            obs_row("o10", "4548-4", None, "%"),
            obs_row("o11", "4548-4", 6.0, "%", effective="05/03/2024"),
            obs_row("o12", "XYZ", 6.0, "%", system=codes.local_lab_system("h2"), institution="h2", patient="p9"),
            obs_row("o13", "29463-7", 154, "[lb_av]"),  # weight in pounds
            obs_row("o14", "4548-5", 6.0, "%"),  # LOINC form, wrong mod-10 check digit
        ]
    )
    return clean_observations(raw, CLEAN_PATIENTS, "quality/clean_observations", NOW, rules)


def test_units_are_converted_to_the_canonical_unit(cleaned_observations):
    out = cleaned_observations.frame.set_index("resource_key")

    o1 = out.loc["o1", ["concept", "loinc", "source_loinc", "unit"]].tolist()
    assert o1 == ["fasting_glucose", "14771-0", "1558-6", "mmol/L"]
    assert out.loc["o1", "value"] == pytest.approx(6.99, abs=0.01)
    assert out.loc["o2", ["concept", "loinc", "unit", "source_unit"]].tolist() == ["hba1c", "4548-4", "%", "mmol/mol"]
    assert out.loc["o2", "value"] == pytest.approx(6.54, abs=0.01)
    assert out.loc["o13", "value"] == pytest.approx(69.85, abs=0.01)
    assert cleaned_observations.details["converted_per_concept"] == {"fasting_glucose": 1, "hba1c": 1, "body_weight": 1}


def test_local_lab_codes_map_to_loinc(cleaned_observations):
    row = cleaned_observations.frame.set_index("resource_key").loc["o3"]

    assert (row["concept"], row["loinc"], row["value"], row["effective_date"], row["effective_at"]) == (
        "fasting_glucose", "14771-0", 6.1, "2024-03-05", None
    )


def test_bad_observations_are_quarantined_with_a_reason_code(cleaned_observations):
    reasons = {f"o{q.position}": q.reason_code for q in cleaned_observations.quarantine}

    assert reasons == {
        "o4": "implausible_value",
        "o5": "unknown_unit",
        "o6": "impossible_date",
        "o7": "impossible_date",
        "o8": "unknown_patient",
        "o10": "missing_required_field",
        "o11": "unparseable_date",
        "o14": "invalid_code",
    }
    assert sorted(cleaned_observations.frame["resource_key"]) == ["o1", "o13", "o2", "o3"]


def test_observation_results_reconcile(cleaned_observations):
    recon = cleaned_observations.reconciliation

    assert recon.balanced
    assert (recon.records_in, recon.records_out, recon.quarantined) == (14, 4, 8)
    assert recon.removed_by_rule["out_of_scope_code"] == 2


def test_effective_instant_is_utc_and_date_is_as_written(cleaned_observations):
    row = cleaned_observations.frame.set_index("resource_key").loc["o1"]

    assert row["effective_date"] == "2024-03-05"
    assert row["effective_at"] == "2024-03-05T01:30:00+00:00"


# --- conditions -------------------------------------------------------------------
@pytest.mark.parametrize(
    ("system", "code", "expected"),
    [
        (codes.ICD10_WHO, "E11.9", "E11.9"),
        (codes.ICD10_CM, "E11.65", "E11.6"),
        (codes.ICD10_CN, "E11.900", "E11.9"),
        (codes.ICD10_CM, "E119", "E11.9"),
        (codes.ICD10_WHO, " e11.9 ", "E11.9"),
        (codes.ICD10_WHO, "E11", "E11"),
        (codes.ICD10_WHO, "I10", "I10"),
        (codes.ICD10_WHO, "not a code", None),
        (codes.ICD10_WHO, "11.9", None),
        (codes.ICD10_WHO, "", None),
        (codes.ICD10_WHO, None, None),
        (codes.SNOMED_CT, "44054006", None),
        (None, "E11.9", None),
    ],
)
def test_normalise_icd10(system, code, expected):
    assert normalise_icd10(system, code) == expected


def condition_row(key: str, code: str, *, patient: str = "p1", onset: str | None = None, recorded: str | None = None,
                  system: str = codes.ICD10_CN) -> dict[str, Any]:
    return {
        "patient_key": patient, "code_system": system, "code": code, "display": None, "clinical_status": "active",
        "onset": onset, "recorded_date": recorded, "institution": "h1", "resource_type": "Condition",
        "resource_key": key, "version_id": None, "content_hash": f"hash-{key}", "source_object": "e" * 64,
        "source_position": int(key.removeprefix("c")),
    }


def test_clean_conditions(rules):
    raw = pd.DataFrame(
        [
            condition_row("c1", "E11.900", onset="2020-04-01"),
            condition_row("c2", "E11.9", recorded="2021-07-08T10:00:00+08:00"),  # no onset: recordedDate
            condition_row("c3", "??"),
            condition_row("c4", "I10", patient="ghost"),
            condition_row("c5", "I10", onset="2020-13"),
        ]
    )

    result = clean_conditions(raw, CLEAN_PATIENTS, "quality/clean_conditions", rules)

    out = result.frame.set_index("resource_key")
    assert out[["icd10", "icd10_category", "onset_date"]].to_dict("index") == {
        "c1": {"icd10": "E11.9", "icd10_category": "E11", "onset_date": "2020-04-01"},
        "c2": {"icd10": "E11.9", "icd10_category": "E11", "onset_date": "2021-07-08"},
    }
    reasons = {q.position: q.reason_code for q in result.quarantine}
    assert reasons == {3: "invalid_code", 4: "unknown_patient", 5: "unparseable_date"}
    assert result.reconciliation.balanced


def test_clean_consents_records_the_decision_instant_in_utc(rules):
    base = {"status": "active", "scope": "research", "provision_type": "permit", "period_start": None,
            "period_end": None, "institution": "h1", "resource_type": "Consent", "version_id": None,
            "source_object": "f" * 64}
    raw = pd.DataFrame(
        [
            {**base, "patient_key": patient, "date_time": when, "resource_key": f"k{i}", "content_hash": str(i),
             "source_position": i}
            for i, (patient, when) in enumerate(
                [("p1", "2024-01-02T07:00:00+08:00"), ("p1", "2024-01-03"), ("ghost", "2024-01-03")]
            )
        ]
    )

    result = clean_consents(raw, CLEAN_PATIENTS, "quality/clean_consents", rules)

    assert result.frame["decided_at"].tolist() == ["2024-01-01T23:00:00+00:00", "2024-01-03T00:00:00+00:00"]
    assert [q.reason_code for q in result.quarantine] == ["unknown_patient"]
    assert result.reconciliation.balanced


def test_rules_file_declares_every_concept(rules):
    assert set(rules.concepts) == {c.name for c in codes.CONCEPTS}
    for spec in rules.concepts.values():
        low, high = spec["plausible"]
        assert low < high
