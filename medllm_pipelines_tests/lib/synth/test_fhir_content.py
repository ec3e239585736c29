"""The FHIR feeds: valid R4 where not defective, and each institution's dialect."""

from __future__ import annotations

import base64
import json
import re
from collections import defaultdict
from typing import Any

import pytest
from fhir.resources.R4B import get_fhir_model_class
from fhir.resources.R4B.bundle import Bundle

from medllm_pipelines.lib.common import codes
from medllm_pipelines.lib.synth import INSTITUTION_BY_CODE
from medllm_pipelines_tests.lib.synth.conftest import Hospital

INSTITUTIONS = ["hzsf", "rvic", "jhsq"]
TIMESTAMP = {
    "hzsf": re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\+08:00$"),
    "rvic": re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$"),
    "jhsq": re.compile(r"^\d{4}-\d{2}-\d{2}$"),
}


def _resources_by_patient(hospital: Hospital, institution: str) -> dict[str, list[dict[str, Any]]]:
    grouped: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for _, _, resource in hospital.readable_resources(institution):
        reference = (resource.get("subject") or resource.get("patient") or {}).get("reference")
        key = resource["id"] if resource["resourceType"] == "Patient" else str(reference)
        grouped[key.removeprefix("urn:uuid:").removeprefix("Patient/")].append(resource)
    return grouped


@pytest.mark.parametrize("institution", INSTITUTIONS)
@pytest.mark.parametrize("fixture", ["clean_hospital", "defective_hospital"])
def test_every_non_defective_resource_validates_as_r4(institution: str, fixture: str,
                                                      request: pytest.FixtureRequest) -> None:
    hospital: Hospital = request.getfixturevalue(fixture)
    listed = hospital.defect_positions()
    checked = 0
    for relpath, position, resource in hospital.readable_resources(institution):
        if (relpath, position) in listed:
            continue
        get_fhir_model_class(resource["resourceType"]).model_validate(resource)
        checked += 1
    assert checked > 100


@pytest.mark.parametrize("institution", ["hzsf", "jhsq"])
def test_bundles_validate_and_have_the_institutions_bundle_type(clean_hospital: Hospital, institution: str) -> None:
    expected = {"hzsf": "transaction", "jhsq": "collection"}[institution]
    files = clean_hospital.fhir_files(institution)
    assert files and all(p.parent.name == "bundles" for p in files)
    for path in files:
        document = json.loads(path.read_text("utf-8"))
        Bundle.model_validate(document)
        assert document["type"] == expected
        for entry in document["entry"]:
            assert entry["fullUrl"] == f"urn:uuid:{entry['resource']['id']}"
            if expected == "transaction":
                assert entry["request"]["method"] in {"POST", "PUT"}


def test_transaction_bundles_hold_one_patient_and_collections_about_fifty(clean_hospital: Hospital) -> None:
    for institution, most in (("hzsf", 1), ("jhsq", 50)):
        for path in clean_hospital.fhir_files(institution):
            entries = json.loads(path.read_text("utf-8"))["entry"]
            patients = sum(e["resource"]["resourceType"] == "Patient" for e in entries)
            assert 1 <= patients <= most


def test_bulk_export_has_one_resource_type_per_file(clean_hospital: Hospital) -> None:
    files = clean_hospital.fhir_files("rvic")
    assert {p.name for p in files} == {f"{t}.ndjson" for t in ("Patient", "Encounter", "Condition", "Observation",
                                                               "MedicationRequest", "DocumentReference", "Consent")}
    for path in files:
        types = {json.loads(line)["resourceType"] for line in path.read_text("utf-8").splitlines()}
        assert types == {path.stem}


@pytest.mark.parametrize("institution", INSTITUTIONS)
def test_references_resolve_to_resources_of_the_same_feed(clean_hospital: Hospital, institution: str) -> None:
    ids = {(r["resourceType"], r["id"]) for _, _, r in clean_hospital.readable_resources(institution)}
    prefix = "Patient/" if institution == "rvic" else "urn:uuid:"
    for _, _, resource in clean_hospital.readable_resources(institution):
        for field, rtype in (("subject", "Patient"), ("patient", "Patient"), ("encounter", "Encounter")):
            reference = resource.get(field)
            if isinstance(reference, dict):
                target = reference["reference"]
                if institution == "rvic":
                    assert target.startswith(f"{rtype}/")
                else:
                    assert target.startswith(prefix)
                assert (rtype, target.rsplit("/", 1)[-1].removeprefix("urn:uuid:")) in ids


@pytest.mark.parametrize("institution", INSTITUTIONS)
def test_every_resource_names_its_source_institution(clean_hospital: Hospital, institution: str) -> None:
    sources = {r["meta"]["source"] for _, _, r in clean_hospital.readable_resources(institution)}
    assert sources == {f"urn:medllm:institution:{institution}"}


@pytest.mark.parametrize("institution", INSTITUTIONS)
def test_timestamps_follow_the_institutions_style(clean_hospital: Hospital, institution: str) -> None:
    pattern = TIMESTAMP[institution]
    seen = 0
    for _, _, resource in clean_hospital.readable_resources(institution):
        values = [resource.get("effectiveDateTime"), resource.get("authoredOn"), resource.get("dateTime"),
                  (resource.get("period") or {}).get("start")]
        for value in filter(None, values):
            assert pattern.match(value), value
            seen += 1
    assert seen > 100


@pytest.mark.parametrize(
    ("institution", "concept_code", "system", "unit", "low", "high"),
    [
        ("hzsf", "1558-6", codes.LOINC, "mg/dL", 55, 420),
        ("hzsf", "4548-4", codes.LOINC, "%", 3.5, 15.5),
        ("hzsf", "2093-3", codes.LOINC, "mg/dL", 90, 400),
        ("rvic", "14771-0", codes.LOINC, "mmol/L", 3.0, 23.0),
        ("rvic", "59261-8", codes.LOINC, "mmol/mol", 15, 150),
        ("rvic", "14647-2", codes.LOINC, "mmol/L", 2.3, 10.5),
        ("jhsq", "GLU-F", codes.local_lab_system("jhsq"), "mmol/L", 3.0, 23.0),
        ("jhsq", "HBA1C", codes.local_lab_system("jhsq"), "%", 3.5, 15.5),
        ("jhsq", "TC", codes.local_lab_system("jhsq"), "mmol/L", 2.3, 10.5),
    ],
)
def test_labs_use_the_institutions_codes_and_plausible_values_in_its_units(
    clean_hospital: Hospital, institution: str, concept_code: str, system: str, unit: str, low: float, high: float
) -> None:
    values = []
    for _, _, resource in clean_hospital.readable_resources(institution):
        if resource["resourceType"] != "Observation":
            continue
        coding = resource["code"]["coding"][0]
        if coding["code"] == concept_code:
            assert coding["system"] == system
            quantity = resource["valueQuantity"]
            assert (quantity["unit"], quantity["code"], quantity["system"]) == (unit, unit, codes.UCUM)
            assert resource["category"][0]["coding"][0]["code"] == "laboratory"
            values.append(quantity["value"])
    assert len(values) >= 10
    assert low <= min(values) and max(values) <= high


@pytest.mark.parametrize(("institution", "pattern"), [
    ("hzsf", r"^[A-Z]\d{2}(\.\d)?$"), ("rvic", r"^[A-Z]\d{2}(\.\d{1,2})?$"), ("jhsq", r"^[A-Z]\d{2}\.[0-9x]\d{2}$"),
])
def test_diagnoses_use_the_institutions_icd_edition(clean_hospital: Hospital, institution: str, pattern: str) -> None:
    system = INSTITUTION_BY_CODE[institution].diagnosis_system
    conditions = [r for _, _, r in clean_hospital.readable_resources(institution) if r["resourceType"] == "Condition"]
    assert conditions
    for condition in conditions:
        coding = condition["code"]["coding"][0]
        assert coding["system"] == system
        assert re.match(pattern, coding["code"]), coding["code"]


def test_type2_diabetes_condition_present_exactly_when_the_truth_says_so(clean_hospital: Hospital) -> None:
    truth = {(row["institution"], row["patient_resource_id"]): row["t2d"] for row in clean_hospital.patient_truth}
    for institution in INSTITUTIONS:
        for patient_id, resources in _resources_by_patient(clean_hospital, institution).items():
            has_e11 = any(r["resourceType"] == "Condition" and r["code"]["coding"][0]["code"].startswith("E11")
                          for r in resources)
            assert has_e11 == truth[(institution, patient_id)]


def _consent_state(consents: list[dict[str, Any]]) -> str:
    if not consents:
        return codes.CONSENT_UNKNOWN
    latest = max(consents, key=lambda c: c["dateTime"])
    if latest["status"] == "inactive":
        return codes.CONSENT_WITHDRAWN
    if latest["status"] == "rejected" or latest["provision"]["type"] == "deny":
        return codes.CONSENT_REFUSED
    return codes.CONSENT_GRANTED


def test_consent_history_encodes_the_intended_state(clean_hospital: Hospital) -> None:
    truth = {(row["institution"], row["patient_resource_id"]): row["consent_state"]
             for row in clean_hospital.patient_truth}
    seen = set()
    for institution in INSTITUTIONS:
        for patient_id, resources in _resources_by_patient(clean_hospital, institution).items():
            consents = [r for r in resources if r["resourceType"] == "Consent"]
            for consent in consents:
                assert consent["scope"]["coding"][0]["code"] == "research"
                assert consent["category"][0]["coding"][0]["code"] == "57016-8"
            state = _consent_state(consents)
            assert state == truth[(institution, patient_id)]
            seen.add(state)
            if state == codes.CONSENT_WITHDRAWN:
                first, later = sorted(consents, key=lambda c: c["dateTime"])
                assert (first["status"], first["provision"]["type"]) == ("active", "permit")
                assert later["dateTime"] > first["dateTime"]
    assert {codes.CONSENT_GRANTED, codes.CONSENT_REFUSED, codes.CONSENT_WITHDRAWN} <= seen


@pytest.mark.parametrize(("institution", "language"), [("hzsf", "zh-CN"), ("rvic", "en-US"), ("jhsq", "zh-CN")])
def test_notes_are_utf8_text_in_the_institutions_language(clean_hospital: Hospital, institution: str,
                                                          language: str) -> None:
    notes = [r for _, _, r in clean_hospital.readable_resources(institution)
             if r["resourceType"] == "DocumentReference"]
    assert notes
    for note in notes:
        attachment = note["content"][0]["attachment"]
        assert attachment["contentType"] == "text/plain; charset=utf-8"
        assert attachment["language"] == language
        text = base64.b64decode(attachment["data"]).decode("utf-8")
        has_chinese_prose = "患者" in text
        assert has_chinese_prose == (language == "zh-CN")
