"""FHIR files other projects publish (../shared/conformance/fhir): HL7's R4 examples and Synthea R4
transaction bundles. Per file: rows per table, what is quarantined (and why) and what is set aside under
which rule. Then the quality stage on what they yield (Synthea codes conditions in SNOMED CT).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from medllm_pipelines.lib.ingest.feed import ParsedFeed
from medllm_pipelines.lib.ingest.fhir import parse_fhir_object
from medllm_pipelines.lib.ingest.tables import rows_to_frame
from medllm_pipelines.lib.ingest.fhir_validation import FULL, ResourceValidator
from medllm_pipelines.lib.ingest.landing import FHIR_BUNDLE

CORPUS = Path(__file__).resolve().parents[3].parent / "shared" / "conformance" / "fhir"

pytestmark = pytest.mark.skipif(not CORPUS.is_dir(), reason="../shared/conformance/fhir is not present")

SPEC = "spec-examples-r4"
SYNTHEA = "synthea-r4"


def one(table: str) -> dict[str, Any]:
    return {"rows": {table: 1}}


# file -> expected outcome: rows per table, quarantined {reason: n}, removed {rule: n}, events {name: n}
EXPECTED: dict[str, dict[str, Any]] = {
    # searchset: the MedicationRequest matched, its included Medication has no table
    f"{SPEC}/Bundle-bundle-example.json": {
        "rows": {"medication_requests": 1}, "removed": {"out_of_scope_resource_type": 1},
    },
    # transaction: 2 POST + 3 PUT Patients; DELETE Patient/234 and DELETE Patient?identifier=123456 are
    # erasure requests (consents rows); POST Parameters ($lookup) has no table; 2 GETs are request-only
    f"{SPEC}/Bundle-bundle-transaction.json": {
        "rows": {"patients": 5, "consents": 2},
        "removed": {"out_of_scope_resource_type": 1, "request_only": 2},
        "events": {"erasure_request": 2},
    },
    # XDS document submission: Patient + DocumentReference; 2 Practitioners and the Binary are out of scope
    f"{SPEC}/Bundle-xds.json": {"rows": {"patients": 1, "notes": 1}, "removed": {"out_of_scope_resource_type": 3}},
    f"{SPEC}/Condition-example.json": one("conditions"),
    f"{SPEC}/Condition-f201.json": one("conditions"),
    f"{SPEC}/Condition-stroke.json": one("conditions"),
    # R4 Consent (scope, category, policyRule): valid in R4B (R5 would reject all four)
    f"{SPEC}/Consent-consent-example-Out.json": one("consents"),
    f"{SPEC}/Consent-consent-example-basic.json": one("consents"),
    f"{SPEC}/Consent-consent-example-notThis.json": one("consents"),
    f"{SPEC}/Consent-consent-example-signature.json": one("consents"),
    f"{SPEC}/DiagnosticReport-f201.json": one("diagnostic_reports"),
    f"{SPEC}/DiagnosticReport-ultrasound.json": one("diagnostic_reports"),
    f"{SPEC}/DocumentReference-example.json": one("notes"),
    f"{SPEC}/Encounter-emerg.json": one("encounters"),
    f"{SPEC}/Encounter-example.json": one("encounters"),
    f"{SPEC}/Encounter-f001.json": one("encounters"),
    f"{SPEC}/ImagingStudy-example.json": {"removed": {"out_of_scope_resource_type": 1}},
    f"{SPEC}/MedicationRequest-medrx0301.json": one("medication_requests"),
    f"{SPEC}/MedicationRequest-medrx0302.json": one("medication_requests"),
    # a blood-pressure panel: the panel and its systolic and diastolic components, three rows
    f"{SPEC}/Observation-blood-pressure.json": {"rows": {"observations": 3}},
    # an ECG's components are sampled data, not numbers: the panel row only
    f"{SPEC}/Observation-ekg.json": one("observations"),
    f"{SPEC}/Observation-example.json": one("observations"),
    f"{SPEC}/Observation-f001.json": one("observations"),
    f"{SPEC}/Observation-vitals-panel.json": one("observations"),
    f"{SPEC}/Patient-ch-example.json": one("patients"),
    f"{SPEC}/Patient-dicom.json": one("patients"),
    f"{SPEC}/Patient-example.json": one("patients"),
    f"{SPEC}/Patient-f001.json": one("patients"),
    f"{SPEC}/Patient-f201.json": one("patients"),
    f"{SPEC}/Patient-infant-twin-1.json": one("patients"),
    # the examples package's npm manifest: not FHIR, quarantined with a reason saying what it is
    f"{SPEC}/package.json": {"quarantined": {"not_fhir": 1}},
    # Synthea: Organization, Practitioner, Claim, ExplanationOfBenefit, CarePlan stay in the raw object; each
    # blood-pressure panel (55284-4) adds its two components as rows
    f"{SYNTHEA}/smart-gsd_Buster_Hoeger_ad2e3fc5-2b5d-4cb9-8d03-9ea0f4ac8423.json": {
        "rows": {"patients": 1, "encounters": 6, "conditions": 3, "observations": 39, "medication_requests": 1,
                 "diagnostic_reports": 2, "procedures": 1, "immunizations": 4},
        "removed": {"out_of_scope_resource_type": 15},
        "out_of_scope_by_type": {"Claim": 7, "ExplanationOfBenefit": 6, "Organization": 1, "Practitioner": 1},
    },
    f"{SYNTHEA}/smart-gsd_Edward_Gulgowski_43481611-2459-44f5-ab20-4b142dac160f.json": {
        "rows": {"patients": 1, "encounters": 6, "conditions": 4, "observations": 38, "medication_requests": 3,
                 "diagnostic_reports": 1, "procedures": 3, "immunizations": 6},
        "removed": {"out_of_scope_resource_type": 18},
        "out_of_scope_by_type": {"CarePlan": 1, "Claim": 9, "ExplanationOfBenefit": 6, "Organization": 1,
                                 "Practitioner": 1},
    },
    f"{SYNTHEA}/smart-gsd_Gustavo_Mejia_59a8543c-e24f-4a01-b28b-47ccde6bc11d.json": {
        "rows": {"patients": 1, "encounters": 6, "conditions": 2, "observations": 52, "medication_requests": 1,
                 "diagnostic_reports": 3, "procedures": 1, "immunizations": 5},
        "removed": {"out_of_scope_resource_type": 15},
        "out_of_scope_by_type": {"Claim": 7, "ExplanationOfBenefit": 6, "Organization": 1, "Practitioner": 1},
    },
    f"{SYNTHEA}/smart-gsd_Liz_Conn_27c911c6-f045-4ffa-af5d-6eba57ac94b2.json": {
        "rows": {"patients": 1, "encounters": 7, "conditions": 1, "observations": 42, "medication_requests": 1,
                 "diagnostic_reports": 2, "procedures": 3, "immunizations": 4},
        "removed": {"out_of_scope_resource_type": 18},
        "out_of_scope_by_type": {"CarePlan": 1, "Claim": 8, "ExplanationOfBenefit": 7, "Organization": 1,
                                 "Practitioner": 1},
    },
}


def parse(relpath: str) -> ParsedFeed:
    return parse_fhir_object(
        (CORPUS / relpath).read_bytes(), kind=FHIR_BUNDLE, institution="conf", source_object=relpath,
        asset="ingest/fhir_resources",
    )


def test_every_corpus_file_has_an_expectation() -> None:
    present = {p.relative_to(CORPUS).as_posix() for p in CORPUS.rglob("*") if p.is_file()}
    assert present == set(EXPECTED)


@pytest.mark.parametrize("relpath", sorted(EXPECTED))
def test_file_outcome(relpath: str) -> None:
    expected = EXPECTED[relpath]
    result = parse(relpath)

    assert {t: len(r) for t, r in result.rows.items() if r} == expected.get("rows", {})
    quarantined: dict[str, int] = {}
    for record in result.quarantine:
        quarantined[record.reason_code] = quarantined.get(record.reason_code, 0) + 1
        assert record.source_object == relpath
    assert quarantined == expected.get("quarantined", {})
    assert {k: v for k, v in result.removals().items() if v} == expected.get("removed", {})
    assert {k: v for k, v in result.events.items() if v} == expected.get("events", {})
    if "out_of_scope_by_type" in expected:
        assert result.out_of_scope_by_type == expected["out_of_scope_by_type"]
    result.reconciliation()  # every entry accounted for, or it raises


def test_no_r4_resource_in_the_corpus_is_rejected_by_r4b() -> None:
    """The R4 examples and Synthea validate in full (not only through the shape cache)."""
    validator = ResourceValidator(FULL)
    rejected = []
    for path in sorted(CORPUS.rglob("*.json")):
        document = json.loads(path.read_bytes())
        resources = [document] if document.get("resourceType") not in (None, "Bundle") else [
            e["resource"] for e in document.get("entry", []) if "resource" in e
        ]
        rejected += [(path.name, r["resourceType"]) for r in resources if validator.validate(r) is not None]
    assert rejected == []


def test_erasure_requests_of_the_transaction_example() -> None:
    consents = parse(f"{SPEC}/Bundle-bundle-transaction.json").rows["consents"]

    assert [(c["patient_key"], c["provision_type"], c["status"]) for c in consents] == [
        ("234", "erasure_request", "inactive"), (None, "erasure_request", "inactive"),
    ]
    assert (consents[1]["erasure_identifier_system"], consents[1]["erasure_identifier_value"]) == (None, "123456")
    assert [c["source_position"] for c in consents] == [5, 6]


def synthea_cleaning_inputs() -> tuple[ParsedFeed, Any, pd.DataFrame]:
    """The four Synthea files parsed into one feed, the cleaning rules and the cleaned patients."""
    from medllm_pipelines.lib.quality.cleaning import clean_patients, load_rules

    total = ParsedFeed()
    for relpath in sorted(EXPECTED):
        if relpath.startswith(SYNTHEA):
            total.extend(parse(relpath))
    rules = load_rules()
    patients = clean_patients(rows_to_frame("patients", total.rows["patients"]), "quality/clean_patients",
                              pd.Timestamp("2026-01-01").date(), rules)
    return total, rules, patients.frame


def test_synthea_conditions_are_cleaned_through_the_snomed_crosswalk() -> None:
    from medllm_pipelines.lib.quality.cleaning import clean_conditions

    total, rules, patients = synthea_cleaning_inputs()
    conditions = clean_conditions(rows_to_frame("conditions", total.rows["conditions"]), patients,
                                  "quality/clean_conditions", rules)

    assert conditions.quarantine == []
    assert conditions.reconciliation.removed_by_rule["unmapped_code"] == 0
    assert len(conditions.frame) == 10
    assert set(conditions.frame["code_system"]) == {"http://snomed.info/sct"}
    assert set(conditions.frame["icd10_mapping"]) == {"snomed_ct_crosswalk"}
    hypertension = conditions.frame[conditions.frame["code"] == "38341003"]
    assert set(hypertension["icd10"]) == {"I10"}



def test_a_blood_pressure_panel_gives_its_components_as_rows() -> None:
    """Real feeds send blood pressure as a panel (85354-9; Synthea 55284-4) whose readings are components."""
    from medllm_pipelines.lib.ingest.fhir import ResentFilter

    relpath = f"{SPEC}/Observation-blood-pressure.json"
    resent = ResentFilter()
    result = parse_fhir_object((CORPUS / relpath).read_bytes(), kind=FHIR_BUNDLE, institution="conf",
                               source_object=relpath, asset="ingest/fhir_resources", resent=resent)
    panel, *parts = result.rows["observations"]
    assert (panel["code"], panel["value"], panel["resource_key"]) == ("85354-9", None, "blood-pressure")
    assert [(r["code"], r["value"], r["unit"], r["resource_key"]) for r in parts] == [
        ("8480-6", 107.0, "mm[Hg]", "blood-pressure/component/0"),
        ("8462-4", 60.0, "mm[Hg]", "blood-pressure/component/1")]
    from_panel = ("patient_key", "effective", "status", "category", "institution", "version_id", "content_hash",
                  "source_object", "source_position")  # subject, time, status, lineage
    for part in parts:
        assert {k: part[k] for k in from_panel} == {k: panel[k] for k in from_panel}
    reconciliation = result.reconciliation()
    assert (reconciliation.records_in, reconciliation.records_out) == (3, 3)
    again = parse_fhir_object((CORPUS / relpath).read_bytes(), kind=FHIR_BUNDLE, institution="conf",
                              source_object=relpath, asset="ingest/fhir_resources", resent=resent)
    assert not again.rows.get("observations") and again.resent == 1  # a re-sent panel: no component either
    again.reconciliation()


def test_synthea_blood_pressure_reaches_the_cleaned_observations() -> None:
    import datetime as dt

    from medllm_pipelines.lib.quality.cleaning import clean_observations

    total, rules, patients = synthea_cleaning_inputs()
    cleaned = clean_observations(rows_to_frame("observations", total.rows["observations"]), patients,
                                 "quality/clean_observations", dt.datetime(2026, 1, 1, tzinfo=dt.UTC), rules)
    frame = cleaned.frame
    assert cleaned.quarantine == []
    by_concept = frame.groupby("concept").size().to_dict()
    assert by_concept.get("systolic_bp") == 13 and by_concept.get("diastolic_bp") == 13  # 13 panels, two each
    systolic = frame[frame["concept"] == "systolic_bp"]
    assert set(systolic["loinc"]) == {"8480-6"} and set(systolic["unit"]) == {"mm[Hg]"}
    assert systolic["value"].between(80, 250).all()
