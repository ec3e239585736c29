"""FHIR R4 Bundles and NDJSON -> rows, with bad input quarantined without its values."""

from __future__ import annotations

import base64
import copy
from typing import Any

import orjson
import pytest

from medllm_pipelines.lib.common import codes
from medllm_pipelines.lib.ingest.feed import ParsedFeed
from medllm_pipelines.lib.ingest.fhir import parse_fhir_object
from medllm_pipelines.lib.ingest.landing import FHIR_BUNDLE, FHIR_NDJSON

NAME_ZH = "欧阳娜娜"
PHONE = "13812345678"
RESIDENT_ID = "11010519491231002X"
SENSITIVE = (NAME_ZH, PHONE, RESIDENT_ID, "娜娜")
PATIENT_UUID = "9b2f6c1e-5d4a-4e8b-9c3d-2a1b0c9d8e7f"


def patient(**overrides: Any) -> dict[str, Any]:
    resource = {
        "resourceType": "Patient",
        "identifier": [
            {
                "type": {"coding": [{"system": codes.IDENTIFIER_TYPE, "code": "MR"}]},
                "system": codes.mrn_system("h1"),
                "value": "MRN000123",
            },
            {"system": codes.PRC_RESIDENT_ID, "value": RESIDENT_ID},
        ],
        "name": [{"text": NAME_ZH}, {"family": "Ouyang", "given": ["Nana"]}],
        "gender": "female",
        "birthDate": "1949-12-31",
        "telecom": [{"system": "phone", "value": PHONE}],
        "address": [{"text": "北京市朝阳区建国路88号"}],
    }
    resource.update(overrides)
    return resource


def observation(subject: str, **overrides: Any) -> dict[str, Any]:
    resource = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": codes.LOINC, "code": "4548-4", "display": "HbA1c"}]},
        "subject": {"reference": subject},
        "effectiveDateTime": "2024-03-05T09:30:00+08:00",
        "valueQuantity": {"value": 6.8, "unit": "%", "system": codes.UCUM, "code": "%"},
    }
    resource.update(overrides)
    return resource


def parse(content: bytes, kind: str = FHIR_BUNDLE) -> ParsedFeed:
    result = parse_fhir_object(content, kind=kind, institution="h1", source_object="a" * 64, asset="ingest/fhir")
    # Every entry read leaves as a row, a quarantine record or an out-of-scope count.
    assert result.resources_seen == result.records_out + len(result.quarantine) + result.out_of_scope
    return result


def bundle(bundle_type: str, entries: list[dict[str, Any]]) -> bytes:
    return orjson.dumps({"resourceType": "Bundle", "type": bundle_type, "entry": entries})


def only_reasons(result: ParsedFeed) -> list[tuple[int | None, str]]:
    return [(q.position, q.reason_code) for q in result.quarantine]


@pytest.mark.parametrize("patient_id", [None, "pat-1"], ids=["no_id", "with_id"])
def test_transaction_bundle_resolves_urn_uuid_references_to_the_patient_key(patient_id):
    subject = patient() if patient_id is None else patient(id=patient_id)
    content = bundle(
        "transaction",
        [
            {"fullUrl": f"urn:uuid:{PATIENT_UUID}", "resource": subject, "request": {"method": "POST", "url": "Patient"}},
            {
                "fullUrl": "urn:uuid:0f0e0d0c-0000-4000-8000-000000000001",
                "resource": observation(f"urn:uuid:{PATIENT_UUID}"),
                "request": {"method": "POST", "url": "Observation"},
            },
        ],
    )

    result = parse(content)

    (row,) = result.rows["patients"]
    (obs,) = result.rows["observations"]
    assert row["resource_key"] == (patient_id or PATIENT_UUID)
    assert obs["patient_key"] == row["resource_key"]
    assert (obs["code"], obs["value"], obs["unit"]) == ("4548-4", 6.8, "%")
    assert (row["source_position"], obs["source_position"]) == (0, 1)
    assert result.quarantine == []


def test_patient_identifiers_and_demographics_are_extracted():
    result = parse(bundle("collection", [{"fullUrl": "http://h1.example/fhir/Patient/p1", "resource": patient(id="p1")}]))

    (row,) = result.rows["patients"]
    assert {k: row[k] for k in ("mrn", "resident_id", "name_zh", "name_en", "gender", "birth_date", "phone")} == {
        "mrn": "MRN000123",
        "resident_id": RESIDENT_ID,
        "name_zh": NAME_ZH,
        "name_en": "Nana Ouyang",
        "gender": "female",
        "birth_date": "1949-12-31",
        "phone": PHONE,
    }
    assert row["address"] == "北京市朝阳区建国路88号"
    assert (row["institution"], row["source_object"]) == ("h1", "a" * 64)


def test_collection_bundle_with_relative_references():
    content = bundle(
        "collection",
        [
            {"fullUrl": "http://h1.example/fhir/Patient/p1", "resource": patient(id="p1")},
            {"fullUrl": "http://h1.example/fhir/Observation/o1", "resource": observation("Patient/p1", id="o1")},
        ],
    )

    result = parse(content)

    assert [r["resource_key"] for r in result.rows["patients"]] == ["p1"]
    assert [(r["resource_key"], r["patient_key"]) for r in result.rows["observations"]] == [("o1", "p1")]


def test_ndjson_positions_point_at_lines_and_one_bad_line_does_not_stop_the_file():
    lines = [
        orjson.dumps(patient(id="p1")),
        orjson.dumps(observation("Patient/p1", id="o1")),
        b'{"resourceType": "Observation", "id": "o2", ',  # cut off mid-line
        b"",
        orjson.dumps(observation("Patient/p1", id="o3")),
    ]
    content = b"\n".join(lines) + b"\n"

    result = parse(content, kind=FHIR_NDJSON)

    assert only_reasons(result) == [(2, "malformed_json")]
    assert [(r["resource_key"], r["source_position"]) for r in result.rows["observations"]] == [("o1", 1), ("o3", 4)]
    bad_line = content.splitlines()[result.quarantine[0].position]
    assert bad_line.startswith(b'{"resourceType": "Observation", "id": "o2"')
    assert result.resources_seen == 4  # the blank line is not an entry


@pytest.mark.parametrize(
    ("content", "code"),
    [
        (f'{{"resourceType": "Bundle", "entry": [{{"resource": {{"name": [{{"text": "{NAME_ZH}"'.encode(), "malformed_json"),
        (b"", "empty_file"),
        (b"  \n\t\n", "empty_file"),
        (f'{{"resourceType": "Patient", "name": [{{"text": "{NAME_ZH}"}}]}}'.encode("gbk"), "encoding_error"),
    ],
    ids=["truncated_json", "zero_bytes", "whitespace", "gbk"],
)
@pytest.mark.parametrize("kind", [FHIR_BUNDLE, FHIR_NDJSON])
def test_unreadable_files_are_quarantined_whole_without_their_content(content, code, kind):
    if kind == FHIR_NDJSON and code in ("malformed_json", "encoding_error"):
        code_position = (0, code)  # NDJSON: the one broken line (the rest of a file would proceed)
    else:
        code_position = (None, code)

    result = parse(content, kind=kind)

    assert only_reasons(result) == [code_position]
    assert result.records_out == 0
    assert not [s for s in SENSITIVE if s in result.quarantine[0].reason]


@pytest.mark.parametrize(
    "document",
    [{"patients": [{"name": NAME_ZH}]}, [1, 2, 3], "just a string"],
    ids=["object", "array", "string"],
)
def test_json_that_is_not_fhir_is_quarantined(document):
    result = parse(orjson.dumps(document))

    assert only_reasons(result) == [(0, "not_fhir")]


def test_unknown_resource_type_is_quarantined():
    result = parse(orjson.dumps({"resourceType": "PatientRecord", "id": "x"}))

    assert only_reasons(result) == [(0, "unknown_resource_type")]


INVALID_RESOURCES = {
    "observation_without_code": (
        {k: v for k, v in observation("Patient/p1", note=[{"text": f"{NAME_ZH} {PHONE}"}]).items() if k != "code"},
        "code",
    ),
    "bad_birth_date": (patient(birthDate="1949-13-45"), "birthDate"),
    "birth_date_holds_a_name": (patient(birthDate=NAME_ZH), "birthDate"),
    "phone_as_number": (patient(telecom=[{"system": "phone", "value": int(PHONE)}]), "telecom"),
    "phone_as_a_field_name": ({**{k: v for k, v in patient().items() if k != "telecom"}, PHONE: "x"}, "undeclared"),
    "name_as_a_nested_field_name": (patient(name=[{"text": "x", NAME_ZH: RESIDENT_ID}]), "name.0.<undeclared"),
}


@pytest.mark.parametrize(("resource", "field"), INVALID_RESOURCES.values(), ids=INVALID_RESOURCES.keys())
def test_invalid_resources_are_quarantined_naming_the_field_but_no_value(resource, field):
    content = bundle(
        "collection",
        [
            {"fullUrl": "http://h1.example/fhir/Patient/p0", "resource": patient(id="p0", name=[{"text": "李四"}])},
            {"resource": resource},
        ],
    )

    result = parse(content)

    (record,) = result.quarantine
    assert (record.position, record.reason_code, record.resource_type) == (1, "invalid_resource", resource["resourceType"])
    assert field in record.reason
    assert not [s for s in SENSITIVE if s in record.reason], record.reason
    assert [r["resource_key"] for r in result.rows["patients"]] == ["p0"]  # the rest of the file proceeds


def test_valid_out_of_scope_resources_are_counted_not_quarantined():
    content = bundle(
        "collection",
        [
            {"resource": {"resourceType": "Organization", "id": "org1", "name": "Peking Union Medical College Hospital"}},
            {"resource": {"resourceType": "Practitioner", "id": "dr1"}},
            {"resource": patient(id="p1")},
        ],
    )

    result = parse(content)

    assert result.out_of_scope == 2
    assert result.quarantine == []
    assert result.records_out == 1


def test_bundle_entries_that_are_not_objects_or_lack_a_resource_are_quarantined():
    content = orjson.dumps({"resourceType": "Bundle", "type": "collection", "entry": ["oops", {"fullUrl": "urn:uuid:x"}]})

    result = parse(content)

    assert only_reasons(result) == [(0, "malformed_json"), (1, "not_fhir")]


def test_note_text_is_decoded_and_consent_links_to_its_patient():
    note = {
        "resourceType": "DocumentReference",
        "id": "n1",
        "status": "current",
        "subject": {"reference": "Patient/p1"},
        "content": [
            {"attachment": {"contentType": "text/plain; charset=utf-8", "language": "zh-CN",
                            "data": base64.b64encode("主诉：口渴多饮三月".encode()).decode()}}
        ],
    }
    consent = {
        "resourceType": "Consent",
        "id": "c1",
        "status": "active",
        "scope": {"coding": [{"system": codes.CONSENT_SCOPE, "code": "research"}]},
        "category": [{"coding": [{"system": codes.CONSENT_CATEGORY, "code": "57016-8"}]}],
        "patient": {"reference": "Patient/p1"},
        "dateTime": "2024-01-02T10:00:00+08:00",
        "provision": {"type": "deny"},
    }
    result = parse(b"\n".join(orjson.dumps(r) for r in (note, consent)), kind=FHIR_NDJSON)

    (note_row,) = result.rows["notes"]
    (consent_row,) = result.rows["consents"]
    assert (note_row["patient_key"], note_row["text"], note_row["language"]) == ("p1", "主诉：口渴多饮三月", "zh-CN")
    assert (consent_row["patient_key"], consent_row["scope"], consent_row["provision_type"]) == ("p1", "research", "deny")


def test_content_hash_identifies_the_resource_not_its_key_order():
    a = patient(id="p1")
    b = dict(reversed(list(copy.deepcopy(a).items())))
    changed = patient(id="p1", gender="male")

    hashes = [parse(orjson.dumps(r)).rows["patients"][0]["content_hash"] for r in (a, b, changed)]

    assert hashes[0] == hashes[1] != hashes[2]
