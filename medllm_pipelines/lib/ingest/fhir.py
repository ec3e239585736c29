"""FHIR R4 Bundles and Bulk Data NDJSON -> flat, typed rows per resource type.

Every resource is validated with ``fhir.resources.R4B`` (R4 data; the package's
default namespace is R5). A resource that fails goes to quarantine with a
reason built from the validator's error *types and locations only* (never
the offending values, which may be identifiers); the rest of the file
proceeds.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import orjson

from medllm_pipelines.lib.common import codes
from medllm_pipelines.lib.common.records import QuarantineRecord, sha256_bytes
from medllm_pipelines.lib.ingest.landing import FHIR_NDJSON

STAGE = "ingest"

# table name -> FHIR resource type it holds
FHIR_TABLES: dict[str, str] = {
    "patients": "Patient",
    "encounters": "Encounter",
    "conditions": "Condition",
    "observations": "Observation",
    "medication_requests": "MedicationRequest",
    "notes": "DocumentReference",
    "consents": "Consent",
}
TABLE_OF_TYPE = {rtype: table for table, rtype in FHIR_TABLES.items()}

LINEAGE_COLUMNS = [
    "institution",
    "resource_type",
    "resource_key",
    "version_id",
    "content_hash",
    "source_object",
    "source_position",
]


@dataclass
class ParsedFhir:
    """Rows per table plus what was set aside; ``resources_seen`` = all entries read."""

    rows: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: {t: [] for t in FHIR_TABLES})
    quarantine: list[QuarantineRecord] = field(default_factory=list)
    out_of_scope: int = 0
    resources_seen: int = 0

    def extend(self, other: ParsedFhir) -> None:
        for table, rows in other.rows.items():
            self.rows[table].extend(rows)
        self.quarantine.extend(other.quarantine)
        self.out_of_scope += other.out_of_scope
        self.resources_seen += other.resources_seen

    @property
    def records_out(self) -> int:
        return sum(len(r) for r in self.rows.values())


@lru_cache(maxsize=None)
def _model_class(resource_type: str) -> Any:
    from fhir.resources.R4B import get_fhir_model_class

    return get_fhir_model_class(resource_type)


def _string_leaves(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _string_leaves(item)
    elif isinstance(value, list):
        for item in value:
            yield from _string_leaves(item)


_ELEMENT_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")


def _safe_location(loc: tuple[Any, ...], error_type: str | None) -> str:
    """An error location fit for the quarantine log.

    An undeclared key is data from the file, not a FHIR element name (a bad
    export may key objects by phone number or name), so it is never echoed;
    neither is any other part that does not look like an element name.
    """
    parts = []
    for index, part in enumerate(loc):
        if isinstance(part, int):
            parts.append(str(part))
        elif error_type == "extra_forbidden" and index == len(loc) - 1:
            parts.append("<undeclared element>")
        elif _ELEMENT_NAME.fullmatch(str(part)):
            parts.append(str(part))
        else:
            parts.append("<redacted>")
    return ".".join(parts)


def describe_validation_error(error: Exception, resource: dict[str, Any]) -> str:
    """A reason naming fields and error kinds, scrubbed of any value in the resource."""
    errors = getattr(error, "errors", None)
    if callable(errors):
        parts = []
        for item in errors(include_input=False, include_url=False)[:5]:
            loc = _safe_location(item.get("loc", ()), item.get("type")) or "<resource>"
            parts.append(f"{loc}: {item.get('type', 'invalid')} ({item.get('msg', '')})")
        message = "; ".join(parts)
    else:
        message = type(error).__name__
    for leaf in sorted(set(_string_leaves(resource)), key=len, reverse=True):
        if len(leaf) >= 3 and leaf in message:
            message = message.replace(leaf, "<redacted>")
    return message[:500]


def _iter_entries(content: bytes, kind: str) -> tuple[list[tuple[int, Any, str | None]], dict[str, str]]:
    """(position, parsed JSON or a malformed marker, fullUrl) per entry, and the
    Bundle's fullUrl -> resource key map so ``urn:uuid:`` references resolve.

    Raises ``orjson.JSONDecodeError`` when a Bundle file is not JSON at all.
    """
    entries: list[tuple[int, Any, str | None]] = []
    refs: dict[str, str] = {}
    if kind == FHIR_NDJSON:
        for line_no, line in enumerate(content.splitlines()):
            if not line.strip():
                continue
            try:
                entries.append((line_no, orjson.loads(line), None))
            except orjson.JSONDecodeError:
                entries.append((line_no, _MalformedLine(), None))
        return entries, refs
    document = orjson.loads(content)
    if not (isinstance(document, dict) and document.get("resourceType") == "Bundle"):
        return [(0, document, None)], refs
    for index, entry in enumerate(document.get("entry") or []):
        if not isinstance(entry, dict):
            entries.append((index, _MalformedLine(), None))
            continue
        resource, full_url = entry.get("resource"), entry.get("fullUrl")
        if full_url and isinstance(resource, dict):
            refs[full_url] = resource.get("id") or _key_from_url(full_url)
        entries.append((index, resource, full_url))
    return entries, refs


def _key_from_url(url: str) -> str:
    return url.rsplit(":", 1)[-1].rsplit("/", 1)[-1]


class _MalformedLine:
    """Marker for an NDJSON line or Bundle entry that is not JSON."""


def parse_fhir_object(
    content: bytes,
    *,
    kind: str,
    institution: str | None,
    source_object: str,
    asset: str,
) -> ParsedFhir:
    """Parse one landed FHIR file (Bundle JSON or NDJSON)."""
    result = ParsedFhir()

    def quarantine(position: int | None, rtype: str | None, code: str, reason: str) -> None:
        result.quarantine.append(
            QuarantineRecord(STAGE, asset, institution, source_object, position, rtype, code, reason)
        )

    try:
        content.decode("utf-8")
    except UnicodeDecodeError as exc:
        result.resources_seen = 1
        quarantine(None, None, "encoding_error", f"file is not valid UTF-8 (byte offset {exc.start})")
        return result
    if not content.strip():
        result.resources_seen = 1
        quarantine(None, None, "empty_file", "file is empty")
        return result
    try:
        entries, refs = _iter_entries(content, kind)
    except orjson.JSONDecodeError as exc:
        result.resources_seen = 1
        quarantine(None, None, "malformed_json", f"JSON syntax error at char {exc.pos}: {exc.msg}")
        return result

    for position, resource, full_url in entries:
        result.resources_seen += 1
        if isinstance(resource, _MalformedLine):
            quarantine(position, None, "malformed_json", "line is not valid JSON")
            continue
        if not isinstance(resource, dict) or "resourceType" not in resource:
            quarantine(position, None, "not_fhir", "JSON value has no resourceType: not a FHIR resource")
            continue
        rtype = resource["resourceType"]
        try:
            model = _model_class(str(rtype))
        except (ValueError, KeyError, AttributeError):
            quarantine(position, None, "unknown_resource_type", "resourceType is not an R4 resource type")
            continue
        try:
            model.model_validate(resource)
        except Exception as exc:  # pydantic ValidationError, fhir.resources ValueErrors
            quarantine(position, rtype, "invalid_resource", describe_validation_error(exc, resource))
            continue
        table = TABLE_OF_TYPE.get(rtype)
        if table is None:
            result.out_of_scope += 1
            continue
        key = resource.get("id") or _key_from_url(full_url or "")
        row = _EXTRACTORS[rtype](resource, refs)
        row.update(
            institution=institution,
            resource_type=rtype,
            resource_key=key,
            version_id=(resource.get("meta") or {}).get("versionId"),
            content_hash=sha256_bytes(orjson.dumps(resource, option=orjson.OPT_SORT_KEYS)),
            source_object=source_object,
            source_position=position,
        )
        result.rows[table].append(row)
    return result


# --- extraction helpers -----------------------------------------------------
def _reference_key(reference: dict[str, Any] | None, refs: dict[str, str]) -> str | None:
    if not reference or not reference.get("reference"):
        return None
    ref = str(reference["reference"])
    if ref in refs:
        return refs[ref]
    return ref.rstrip("/").rsplit("/", 1)[-1].removeprefix("urn:uuid:")


def _first_coding(concept: dict[str, Any] | None) -> dict[str, Any]:
    for coding in (concept or {}).get("coding") or []:
        return coding
    return {}


def _identifier(resource: dict[str, Any], predicate: Callable[[dict[str, Any]], bool]) -> str | None:
    for ident in resource.get("identifier") or []:
        if predicate(ident):
            return ident.get("value")
    return None


def _is_mrn(ident: dict[str, Any]) -> bool:
    system = str(ident.get("system") or "")
    type_code = _first_coding(ident.get("type")).get("code")
    return type_code == "MR" or system.endswith(":mrn")


def _name_parts(resource: dict[str, Any]) -> dict[str, str | None]:
    zh = en = None
    for name in resource.get("name") or []:
        text = name.get("text") or " ".join([*(name.get("given") or []), name.get("family") or ""]).strip()
        if not text:
            continue
        if any("\u4e00" <= ch <= "\u9fff" for ch in text):
            zh = zh or text
        else:
            en = en or text
    return {"name_zh": zh, "name_en": en}


def _telecom(resource: dict[str, Any], system: str) -> str | None:
    for contact in resource.get("telecom") or []:
        if contact.get("system") == system:
            return contact.get("value")
    return None


def _address(resource: dict[str, Any]) -> str | None:
    for address in resource.get("address") or []:
        if address.get("text"):
            return address["text"]
        parts = [
            address.get("country"),
            address.get("state"),
            address.get("city"),
            address.get("district"),
            *(address.get("line") or []),
        ]
        joined = " ".join(p for p in parts if p)
        if joined:
            return joined
    return None


def _patient(r: dict[str, Any], refs: dict[str, str]) -> dict[str, Any]:
    return {
        "mrn": _identifier(r, _is_mrn),
        "resident_id": _identifier(r, lambda i: i.get("system") == codes.PRC_RESIDENT_ID),
        **_name_parts(r),
        "gender": r.get("gender"),
        "birth_date": r.get("birthDate"),
        "phone": _telecom(r, "phone"),
        "email": _telecom(r, "email"),
        "address": _address(r),
    }


def _encounter(r: dict[str, Any], refs: dict[str, str]) -> dict[str, Any]:
    period = r.get("period") or {}
    return {
        "patient_key": _reference_key(r.get("subject"), refs),
        "status": r.get("status"),
        "encounter_class": (r.get("class") or {}).get("code"),
        "start": period.get("start"),
        "end": period.get("end"),
    }


def _condition(r: dict[str, Any], refs: dict[str, str]) -> dict[str, Any]:
    coding = _first_coding(r.get("code"))
    return {
        "patient_key": _reference_key(r.get("subject"), refs),
        "code_system": coding.get("system"),
        "code": coding.get("code"),
        "display": coding.get("display"),
        "clinical_status": _first_coding(r.get("clinicalStatus")).get("code"),
        "onset": r.get("onsetDateTime"),
        "recorded_date": r.get("recordedDate"),
    }


def _observation(r: dict[str, Any], refs: dict[str, str]) -> dict[str, Any]:
    coding = _first_coding(r.get("code"))
    quantity = r.get("valueQuantity") or {}
    value = quantity.get("value")
    return {
        "patient_key": _reference_key(r.get("subject"), refs),
        "status": r.get("status"),
        "category": _first_coding((r.get("category") or [{}])[0]).get("code"),
        "code_system": coding.get("system"),
        "code": coding.get("code"),
        "display": coding.get("display"),
        "value": float(value) if value is not None else None,
        "unit": quantity.get("code") or quantity.get("unit"),
        "unit_system": quantity.get("system"),
        "effective": r.get("effectiveDateTime") or (r.get("effectivePeriod") or {}).get("start"),
    }


def _medication_request(r: dict[str, Any], refs: dict[str, str]) -> dict[str, Any]:
    coding = _first_coding(r.get("medicationCodeableConcept"))
    return {
        "patient_key": _reference_key(r.get("subject"), refs),
        "status": r.get("status"),
        "code_system": coding.get("system"),
        "code": coding.get("code"),
        "display": coding.get("display"),
        "authored_on": r.get("authoredOn"),
    }


def _document_reference(r: dict[str, Any], refs: dict[str, str]) -> dict[str, Any]:
    text = None
    content_type = None
    language = None
    for content in r.get("content") or []:
        attachment = content.get("attachment") or {}
        content_type = attachment.get("contentType")
        language = attachment.get("language")
        if attachment.get("data"):
            try:
                text = base64.b64decode(attachment["data"]).decode("utf-8", errors="replace")
            except (binascii.Error, ValueError):
                text = None
            break
    return {
        "patient_key": _reference_key(r.get("subject"), refs),
        "status": r.get("status"),
        "date": r.get("date"),
        "content_type": content_type,
        "language": language,
        "text": text,
    }


def _consent(r: dict[str, Any], refs: dict[str, str]) -> dict[str, Any]:
    provision = r.get("provision") or {}
    period = provision.get("period") or {}
    return {
        "patient_key": _reference_key(r.get("patient"), refs),
        "status": r.get("status"),
        "scope": _first_coding(r.get("scope")).get("code"),
        "provision_type": provision.get("type"),
        "date_time": r.get("dateTime"),
        "period_start": period.get("start"),
        "period_end": period.get("end"),
    }


_EXTRACTORS: dict[str, Callable[[dict[str, Any], dict[str, str]], dict[str, Any]]] = {
    "Patient": _patient,
    "Encounter": _encounter,
    "Condition": _condition,
    "Observation": _observation,
    "MedicationRequest": _medication_request,
    "DocumentReference": _document_reference,
    "Consent": _consent,
}
