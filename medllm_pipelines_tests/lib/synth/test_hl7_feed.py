"""The whsy HL7 v2 feed: parsable by the HL7 parser, identities where de-identification must
find them, second registrations for record linkage, and every seeded defect quarantined where
the manifest says."""

from __future__ import annotations

from medllm_pipelines.lib.common import codes
from medllm_pipelines.lib.ingest.hl7 import parse_hl7_object
from medllm_pipelines.lib.ingest.landing import HL7V2, classify
from medllm_pipelines.lib.synth.hl7 import ADT_FILE, ORU_FILE
from medllm_pipelines_tests.lib.synth.conftest import Hospital

EXPECTED_REASON = {
    "malformed_file": "bad_segment",
    "missing_required_field": "missing_msh",
}
# Defects the HL7 parser accepts as interface engines do: the message is used, the date left empty
# and a warning recorded at its position (cleaning then decides about the row).
EXPECTED_WARNING = {"unparseable_date": "unparseable_date"}


def _parse(hospital: Hospital, relpath: str):
    return parse_hl7_object((hospital.root / relpath).read_bytes(), institution="whsy", source_object=relpath,
                            asset="ingest/hl7")


def test_the_landing_classifier_sees_hl7_files() -> None:
    assert classify(ADT_FILE) == classify(ORU_FILE) == HL7V2


def test_a_clean_feed_parses_without_quarantine_and_as_counted(clean_hospital: Hospital) -> None:
    counts = clean_hospital.manifest.counts["whsy"]
    parsed = [_parse(clean_hospital, relpath) for relpath in (ADT_FILE, ORU_FILE)]

    assert [q for result in parsed for q in result.quarantine] == []
    totals = {table: sum(len(result.rows[table]) for result in parsed)
              for table in ("patients", "encounters", "observations", "conditions")}
    assert totals == {"patients": counts["resources"]["Patient"], "encounters": counts["resources"]["Encounter"],
                      "observations": counts["resources"]["Observation"],
                      "conditions": counts["resources"]["Condition"]}
    for result in parsed:
        result.reconciliation()


def test_patients_are_second_registrations_with_identifiers_in_pid(clean_hospital: Hospital) -> None:
    counts = clean_hospital.manifest.counts["whsy"]
    people = {}  # identities are per registration: a whsy patient is found by name and birth date
    for row in clean_hospital.identities:
        people.setdefault((row["name_zh"], row["birth_date"]), row)
    rows = {row["resource_key"]: row for row in _parse(clean_hospital, ADT_FILE).rows["patients"]}

    assert len(rows) == counts["patient_records"] >= 4
    without_id = 0
    for row in rows.values():
        person = people[(row["name_zh"], row["birth_date"])]
        assert person["institution"] != "whsy" and row["mrn"].startswith("WS") and row["mrn"] != person["mrn"]
        assert (row["phone"], row["email"], row["address"]) == (person["phone"], person["email"], person["address"])
        assert row["name_en"] == person["name_en"]
        if row["resident_id"] is None:
            without_id += 1
        else:
            assert row["resident_id"] == person["resident_id"]
    assert without_id == len(counts["persons_without_resident_id_in_pid"])


def test_labs_are_loinc_with_ucum_units_and_diagnoses_icd10(clean_hospital: Hospital) -> None:
    observations = _parse(clean_hospital, ORU_FILE).rows["observations"]
    conditions = _parse(clean_hospital, ADT_FILE).rows["conditions"]

    assert {(o["code"], o["unit"]) for o in observations} == {("4548-4", "%"), ("14771-0", "mmol/L"),
                                                              ("14647-2", "mmol/L")}
    assert {(o["code_system"], o["unit_system"], o["category"]) for o in observations} == {
        (codes.LOINC, codes.UCUM, "laboratory")}
    assert all(o["effective"].endswith("+08:00") and o["value"] > 0 for o in observations)
    assert conditions and {c["code_system"] for c in conditions} == {codes.ICD10_WHO}


def test_every_seeded_hl7_defect_is_quarantined_where_the_manifest_says(defective_hospital: Hospital) -> None:
    defects = [d for d in defective_hospital.manifest.defects if d.file.endswith(".hl7")]
    listed = {(d.file, d.position): EXPECTED_REASON[d.defect_type] for d in defects if d.defect_type in EXPECTED_REASON}
    warned = {(d.file, d.position, EXPECTED_WARNING[d.defect_type]) for d in defects if d.defect_type in EXPECTED_WARNING}
    found = {}
    warnings = set()
    for relpath in (ADT_FILE, ORU_FILE):
        result = _parse(defective_hospital, relpath)
        result.reconciliation()
        found.update({(relpath, q.position): q.reason_code for q in result.quarantine})
        warnings.update((relpath, w.position, w.code) for w in result.warnings)

    assert listed, "the heavy-defect hospital seeds HL7 defects"
    assert found == listed
    assert warned <= warnings
