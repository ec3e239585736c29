"""FHIR as senders send it: R4 elements R4B lacks, transaction/batch requests (erasure on DELETE Patient),
Bulk Data manifests and OperationOutcome files, the new tables, and no exception ever escaping one entry."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from medllm_pipelines.lib.common import codes
from medllm_pipelines.lib.ingest import fhir_mapping
from medllm_pipelines.lib.ingest.feed import ParsedFeed, check_bulk_manifests
from medllm_pipelines.lib.ingest.fhir import parse_fhir_object
from medllm_pipelines.lib.ingest.fhir_r4 import normalise_r4_to_r4b
from medllm_pipelines.lib.ingest.fhir_validation import FULL, ResourceValidator
from medllm_pipelines.lib.ingest.landing import FHIR_BUNDLE, FHIR_NDJSON

CORPUS = Path(__file__).resolve().parents[3].parent / "shared" / "conformance" / "fhir"


def parse(content: bytes, kind: str = FHIR_BUNDLE) -> ParsedFeed:
    result = parse_fhir_object(content, kind=kind, institution="h1", source_object="s" * 64, asset="ingest/fhir")
    result.reconciliation()  # every entry is a row, a quarantine record or a declared-rule count
    return result


def patient(pid: str = "p1") -> dict[str, Any]:
    return {"resourceType": "Patient", "id": pid, "gender": "female", "birthDate": "1960-02-03",
            "identifier": [{"system": codes.mrn_system("h1"), "value": "MRN7"}]}


def transaction(*entries: dict[str, Any], timestamp: str | None = "2025-05-01T08:00:00+08:00") -> bytes:
    bundle: dict[str, Any] = {"resourceType": "Bundle", "type": "transaction", "entry": list(entries)}
    if timestamp:
        bundle["timestamp"] = timestamp
    return orjson.dumps(bundle)


def request(method: str, url: str, resource: dict[str, Any] | None = None) -> dict[str, Any]:
    entry: dict[str, Any] = {"request": {"method": method, "url": url}}
    if resource is not None:
        entry["resource"] = resource
    return entry


# --- transactions -------------------------------------------------------------------------------
def test_delete_of_a_patient_is_an_erasure_request_recorded_as_a_consent_withdrawal() -> None:
    result = parse(transaction(
        request("PUT", "Patient/p1", patient()),
        request("DELETE", "Patient/p1"),
        request("DELETE", "http://fhir.example.org/base/Patient/p2"),
    ))

    erasures = result.rows["consents"]
    assert [(e["patient_key"], e["status"], e["provision_type"]) for e in erasures] == [
        ("p1", "inactive", codes.ERASURE_REQUEST), ("p2", "inactive", codes.ERASURE_REQUEST),
    ]
    assert erasures[0]["date_time"] == "2025-05-01T08:00:00+08:00"  # the Bundle's timestamp
    assert [e["source_position"] for e in erasures] == [1, 2]
    assert result.events == {codes.ERASURE_REQUEST: 2}
    assert len(result.rows["patients"]) == 1


def test_conditional_delete_keeps_the_identifier_for_cleaning_to_resolve() -> None:
    result = parse(transaction(request("DELETE", f"Patient?identifier={codes.PRC_RESIDENT_ID}%7C110105194912310021")))

    (erasure,) = result.rows["consents"]
    assert erasure["patient_key"] is None
    assert (erasure["erasure_identifier_system"], erasure["erasure_identifier_value"]) == (
        codes.PRC_RESIDENT_ID, "110105194912310021")


def test_a_delete_that_names_nobody_is_quarantined_not_dropped() -> None:
    result = parse(transaction(request("DELETE", "Patient?name=peter")))

    assert [q.reason_code for q in result.quarantine] == ["unresolvable_erasure_request"]
    assert "peter" not in result.quarantine[0].reason


def test_other_requests_are_counted_under_their_own_rules() -> None:
    result = parse(orjson.dumps({"resourceType": "Bundle", "type": "batch", "entry": [
        request("DELETE", "Observation/o1"),
        request("GET", "Patient?name=peter"),
        {"request": {"method": "HEAD", "url": "Patient/1"}},
        request("PATCH", "Patient/1", {"resourceType": "Binary", "contentType": "application/json-patch+json"}),
        {"response": {"status": "201 Created", "location": "Patient/9/_history/1"}},
        request("POST", "Patient", patient("p3")),
    ]}))

    assert result.removals() == {"out_of_scope_resource_type": 0, "delete_request": 1, "request_only": 2,
                                 "patch_request": 1, "response_only": 1}
    assert len(result.rows["patients"]) == 1
    assert result.quarantine == []


# --- Bulk Data export -----------------------------------------------------------------------
def test_operation_outcome_lines_are_counted_not_quarantined() -> None:
    outcome = {"resourceType": "OperationOutcome",
               "issue": [{"severity": "error", "code": "processing", "diagnostics": "Patient/9 not found"}]}
    lines = b"\n".join(orjson.dumps(r) for r in (patient(), outcome, outcome))

    result = parse(lines, kind=FHIR_NDJSON)

    assert result.removed_by_rule == {"operation_outcome": 2}
    assert len(result.rows["patients"]) == 1


def test_a_bulk_manifest_is_recognised_and_its_counts_checked() -> None:
    manifest = {
        "transactionTime": "2025-05-01T00:00:00Z", "request": "https://ehr.example/fhir/$export",
        "requiresAccessToken": True,
        "output": [{"type": "Patient", "url": "https://x/Patient.ndjson", "count": 2},
                   {"type": "Observation", "url": "https://x/Observation_1.ndjson", "count": 10},
                   {"type": "Observation", "url": "https://x/Observation_2.ndjson", "count": 5},
                   {"type": "Condition", "url": "https://x/Condition.ndjson"}],
        "error": [{"type": "OperationOutcome", "url": "https://x/err.ndjson"}],
    }

    result = parse(orjson.dumps(manifest))

    assert result.quarantine == []
    assert result.removed_by_rule == {"bulk_export_manifest": 1}
    check = check_bulk_manifests(result.manifests, {"Patient": 2, "Observation": 14, "Condition": 3})
    assert check.mismatches == {"Observation": {"declared": 15, "arrived": 14}}
    meta = check.as_metadata()
    assert (meta["bulk_counts_match"], meta["bulk_types_without_count"], meta["bulk_error_files_declared"]) == (
        False, ["Condition"], 1)


# --- R4 read with R4B models ----------------------------------------------------------------
def test_r4_resource_types_r4b_removed_are_out_of_scope_not_unknown() -> None:
    product = {"resourceType": "MedicinalProduct", "id": "mp1", "name": [{"productName": "Metformin 500 mg"}]}
    evidence_r4 = {"resourceType": "Evidence", "id": "ev1", "status": "active",
                   "exposureBackground": {"reference": "EvidenceVariable/1"}}

    result = parse(b"\n".join(orjson.dumps(r) for r in (product, evidence_r4)), kind=FHIR_NDJSON)

    assert result.quarantine == []
    assert result.out_of_scope_by_type == {"MedicinalProduct": 1, "Evidence": 1}


def test_an_r4_extension_with_value_meta_does_not_cost_the_resource() -> None:
    resource = patient()
    resource["extension"] = [{"url": "http://example.org/source-meta", "valueMeta": {"versionId": "3"}}]
    assert ResourceValidator(FULL).validate(resource) is not None  # R4B alone rejects it

    result = parse(orjson.dumps(resource), kind=FHIR_NDJSON)

    assert len(result.rows["patients"]) == 1
    assert result.events == {"r4_elements_dropped_for_validation": 1}
    stripped, dropped = normalise_r4_to_r4b(resource)
    assert dropped == 1 and "extension" not in stripped and "extension" in resource  # the original is untouched


# --- new tables -----------------------------------------------------------------------------
def test_allergy_procedure_report_and_immunization_rows() -> None:
    resources = [
        {"resourceType": "AllergyIntolerance", "id": "a1", "patient": {"reference": "Patient/p1"},
         "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical",
                                        "code": "active"}]},
         "type": "allergy", "category": ["medication"], "criticality": "high",
         "code": {"coding": [{"system": codes.SNOMED_CT, "code": "294505008", "display": "Penicillin allergy"}]},
         "recordedDate": "2020-01-02"},
        {"resourceType": "Procedure", "id": "pr1", "status": "completed", "subject": {"reference": "Patient/p1"},
         "code": {"coding": [{"system": codes.SNOMED_CT, "code": "73761001"}]},
         "performedPeriod": {"start": "2021-01-01T10:00:00Z", "end": "2021-01-01T11:00:00Z"}},
        {"resourceType": "DiagnosticReport", "id": "d1", "status": "final", "subject": {"reference": "Patient/p1"},
         "code": {"coding": [{"system": codes.LOINC, "code": "57698-3"}]}, "effectiveDateTime": "2021-02-02",
         "result": [{"reference": "Observation/o1"}, {"reference": "Observation/o2"}],
         "conclusion": "Ms Ouyang's lipids are fine"},
        {"resourceType": "Immunization", "id": "i1", "status": "completed", "patient": {"reference": "Patient/p1"},
         "vaccineCode": {"coding": [{"system": "http://hl7.org/fhir/sid/cvx", "code": "140"}]},
         "occurrenceDateTime": "2021-10-01"},
    ]

    result = parse(b"\n".join(orjson.dumps(r) for r in resources), kind=FHIR_NDJSON)

    allergy, = result.rows["allergy_intolerances"]
    assert (allergy["patient_key"], allergy["category"], allergy["criticality"], allergy["code"]) == (
        "p1", "medication", "high", "294505008")
    procedure, = result.rows["procedures"]
    assert (procedure["performed_start"], procedure["performed_end"]) == ("2021-01-01T10:00:00Z", "2021-01-01T11:00:00Z")
    report, = result.rows["diagnostic_reports"]
    assert report["result_count"] == 2 and "Ouyang" not in str(report)  # free text stays in the raw object
    immunization, = result.rows["immunizations"]
    assert (immunization["code"], immunization["occurrence"], immunization["source_position"]) == ("140", "2021-10-01", 3)


# --- exceptions stay with their entry ------------------------------------------------------
def test_an_exception_while_mapping_one_entry_quarantines_that_entry_only(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(resource: dict[str, Any], refs: dict[str, str]) -> dict[str, Any]:
        raise ZeroDivisionError("boom")

    monkeypatch.setitem(fhir_mapping.EXTRACTORS, "Encounter", broken)
    encounter = {"resourceType": "Encounter", "status": "finished",
                 "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"}}

    result = parse(transaction(request("POST", "Patient", patient()), request("POST", "Encounter", encounter)))

    assert len(result.rows["patients"]) == 1
    assert [(q.position, q.resource_type, q.reason_code) for q in result.quarantine] == [(1, "Encounter", "parse_error")]
    assert result.quarantine[0].reason == "ZeroDivisionError while reading the entry"


# --- property: mutated and truncated FHIR never raises and always reconciles ----------------
KNOWN_REASONS = {
    "malformed_json", "not_fhir", "unknown_resource_type", "invalid_resource", "encoding_error", "empty_file",
    "parse_error", "unresolvable_erasure_request",
}


@pytest.fixture(scope="module")
def seeds(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[str, bytes]]:
    from medllm_pipelines.lib.synth import DefectRates, generate_hospital

    root = tmp_path_factory.mktemp("fhir-seeds")
    generate_hospital(root, patients=4, seed=11, defect_rates=DefectRates.none())
    found: list[tuple[str, bytes]] = []
    for path in sorted(root.rglob("*")):
        if path.suffix == ".ndjson":
            found.append((FHIR_NDJSON, b"\n".join(path.read_bytes().splitlines()[:4])))
        elif path.suffix == ".json" and "fhir" in path.parts:
            found.append((FHIR_BUNDLE, path.read_bytes()))
    found.append((FHIR_BUNDLE, transaction(request("PUT", "Patient/p1", patient()), request("DELETE", "Patient/p1"),
                                           request("DELETE", "Patient?identifier=x%7C1"), request("GET", "Patient/2"))))
    found.append((FHIR_NDJSON, b'{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"exception"}]}'))
    found.append((FHIR_BUNDLE, b'{"transactionTime":"2025-01-01T00:00:00Z","request":"x","output":'
                               b'[{"type":"Patient","url":"u","count":1}],"error":[]}'))
    if CORPUS.is_dir():
        for name in ("spec-examples-r4/Bundle-bundle-transaction.json", "spec-examples-r4/Consent-consent-example-basic.json",
                     "spec-examples-r4/package.json"):
            found.append((FHIR_BUNDLE, (CORPUS / name).read_bytes()))
        synthea = sorted((CORPUS / "synthea-r4").glob("*.json"))[:1]
        for path in synthea:
            bundle = orjson.loads(path.read_bytes())
            bundle["entry"] = bundle["entry"][:25]
            found.append((FHIR_BUNDLE, orjson.dumps(bundle)))
            found.append((FHIR_NDJSON, b"\n".join(orjson.dumps(e["resource"]) for e in bundle["entry"])))
    return found


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12) | st.sampled_from(["Patient", "DELETE", "GET", "Patient/1", "urn:uuid:1", "2024-13-45"]),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(
        st.sampled_from(["resourceType", "id", "entry", "resource", "request", "method", "url", "fullUrl", "meta",
                         "subject", "code", "coding", "status", "x"]) | st.text(max_size=6), children, max_size=3),
    max_leaves=8,
)
RAW_TOKENS = [b"\xff\xfe", b"\x00", b"{", b"}", b"]", b",", b'"', b"\n", b"123456789012345678901234567890",
              b"1e400", b"NaN", b'{"resourceType":', "\u4e2d".encode("gbk")]


def _paths(node: Any, into: list[tuple[Any, Any]]) -> list[tuple[Any, Any]]:
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, child in items:
        into.append((node, key))
        _paths(child, into)
    return into


def _mutate_json(document: Any, data: st.DataObject) -> Any:
    document = copy.deepcopy(document)
    paths = _paths(document, [])
    for _ in range(data.draw(st.integers(1, 3))):
        if not paths:
            return data.draw(JSON_VALUES)
        container, key = data.draw(st.sampled_from(paths))
        action = data.draw(st.sampled_from(["replace", "delete", "wrap"]))
        if action == "delete" and isinstance(container, dict):
            container.pop(key, None)
        elif action == "wrap":
            container[key] = [container[key]] if data.draw(st.booleans()) else {"x": container[key]}
        else:
            container[key] = data.draw(JSON_VALUES)
        paths = _paths(document, [])
    return document


def _mutate(kind: str, content: bytes, data: st.DataObject) -> bytes:
    how = data.draw(st.sampled_from(["truncate", "bytes", "json", "json", "json"]))
    if how == "truncate":
        return content[: data.draw(st.integers(0, len(content)))]
    if how == "bytes":
        at = data.draw(st.integers(0, len(content)))
        return content[:at] + data.draw(st.sampled_from(RAW_TOKENS)) + content[at + data.draw(st.integers(0, 3)):]
    if kind == FHIR_NDJSON:
        lines = content.split(b"\n")
        index = data.draw(st.integers(0, len(lines) - 1))
        try:
            lines[index] = orjson.dumps(_mutate_json(orjson.loads(lines[index]), data))
        except orjson.JSONDecodeError:
            lines[index] = lines[index][::-1]
        return b"\n".join(lines)
    return orjson.dumps(_mutate_json(orjson.loads(content), data))


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_mutated_fhir_never_raises_and_always_reconciles(seeds: list[tuple[str, bytes]], data: st.DataObject) -> None:
    kind, content = data.draw(st.sampled_from(seeds))
    mutated = _mutate(kind, content, data)

    result = parse_fhir_object(mutated, kind=kind, institution="h1", source_object="m" * 64, asset="ingest/fhir")

    reconciliation = result.reconciliation()  # raises when an entry is lost or invented
    assert reconciliation.records_in >= 1 or mutated.strip().startswith(b"{")  # only an entry-less Bundle reads 0
    assert {q.reason_code for q in result.quarantine} <= KNOWN_REASONS
    for rows in result.rows.values():
        assert all(row["source_position"] is not None and row["source_object"] == "m" * 64 for row in rows)
