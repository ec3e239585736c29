"""FHIR R4 Bundles and Bulk Data NDJSON -> flat, typed rows per resource type.

Every resource is validated as ``fhir.resources.R4B`` validates it (R4 data;
the package's default namespace is R5), through
:class:`~medllm_pipelines.lib.ingest.fhir_validation.ResourceValidator`, which
accepts and rejects exactly what the models do, several times faster. A
resource that fails goes to quarantine with a reason built from the
validator's error *types and locations only* (never the offending values,
which may be identifiers); the rest of the file proceeds.

NDJSON is read as a stream (:func:`iter_ndjson_batches`): from a binary file
or an iterator of byte chunks (e.g. ``envelope.decrypt_stream``), in batches of
bounded size, so memory stays flat in the file size. Bundles are one JSON
document and are parsed whole (:func:`parse_fhir_object`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import IO, Any

import orjson

from medllm_pipelines.lib.common import codes
from medllm_pipelines.lib.common.records import (
    QuarantineRecord,
    Reconciliation,
    sha256_bytes,
)
from medllm_pipelines.lib.ingest.fhir_validation import ResourceValidator, model_class
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


# Column schema of each table (extracted columns, then lineage). Types:
# "string", "float64", "int64"; every column is nullable.
_EXTRACTED_COLUMNS: dict[str, list[tuple[str, str]]] = {
    "patients": [
        ("mrn", "string"), ("resident_id", "string"), ("name_zh", "string"), ("name_en", "string"),
        ("gender", "string"), ("birth_date", "string"), ("phone", "string"), ("email", "string"),
        ("address", "string"),
    ],
    "encounters": [
        ("patient_key", "string"), ("status", "string"), ("encounter_class", "string"), ("start", "string"),
        ("end", "string"),
    ],
    "conditions": [
        ("patient_key", "string"), ("code_system", "string"), ("code", "string"), ("display", "string"),
        ("clinical_status", "string"), ("onset", "string"), ("recorded_date", "string"),
    ],
    "observations": [
        ("patient_key", "string"), ("status", "string"), ("category", "string"), ("code_system", "string"),
        ("code", "string"), ("display", "string"), ("value", "float64"), ("unit", "string"),
        ("unit_system", "string"), ("effective", "string"),
    ],
    "medication_requests": [
        ("patient_key", "string"), ("status", "string"), ("code_system", "string"), ("code", "string"),
        ("display", "string"), ("authored_on", "string"),
    ],
    "notes": [
        ("patient_key", "string"), ("status", "string"), ("date", "string"), ("content_type", "string"),
        ("language", "string"), ("text", "string"),
    ],
    "consents": [
        ("patient_key", "string"), ("status", "string"), ("scope", "string"), ("provision_type", "string"),
        ("date_time", "string"), ("period_start", "string"), ("period_end", "string"),
    ],
}
_LINEAGE_TYPES = [
    ("institution", "string"), ("resource_type", "string"), ("resource_key", "string"), ("version_id", "string"),
    ("content_hash", "string"), ("source_object", "string"), ("source_position", "int64"),
]
TABLE_SCHEMAS: dict[str, list[tuple[str, str]]] = {
    table: [*columns, *_LINEAGE_TYPES] for table, columns in _EXTRACTED_COLUMNS.items()
}


def table_columns(table: str) -> list[str]:
    """Column names of a parsed table, in order (extracted, then lineage)."""
    return [name for name, _ in TABLE_SCHEMAS[table]]


def rows_to_frame(table: str, rows: list[dict[str, Any]]) -> Any:
    """A pandas frame of parsed rows with the table's declared columns and dtypes (also when empty)."""
    import pandas as pd

    frame = pd.DataFrame(rows, columns=table_columns(table))
    dtypes = {"string": "object", "float64": "float64", "int64": "Int64"}
    return frame.astype({name: dtypes[kind] for name, kind in TABLE_SCHEMAS[table]})


def arrow_schema(table: str) -> Any:
    """The pyarrow schema of a parsed table (for Parquet writers that append batch by batch)."""
    import pyarrow as pa

    types = {"string": pa.string(), "float64": pa.float64(), "int64": pa.int64()}
    return pa.schema([(name, types[kind]) for name, kind in TABLE_SCHEMAS[table]])


@dataclass
class ParsedFhir:
    """Rows per table plus what was set aside.

    ``resources_seen`` counts every entry read (Bundle entry, non-blank NDJSON
    line, HL7 row source); each leaves as a row, a quarantine record, an
    out-of-scope count or - when re-send dropping is on - a ``resent`` count.
    """

    rows: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: {t: [] for t in FHIR_TABLES})
    quarantine: list[QuarantineRecord] = field(default_factory=list)
    out_of_scope: int = 0
    resources_seen: int = 0
    resent: int = 0

    def extend(self, other: ParsedFhir) -> None:
        for table, rows in other.rows.items():
            self.rows.setdefault(table, []).extend(rows)
        self.quarantine.extend(other.quarantine)
        self.out_of_scope += other.out_of_scope
        self.resources_seen += other.resources_seen
        self.resent += other.resent

    @property
    def records_out(self) -> int:
        return sum(len(r) for r in self.rows.values())

    def reconciliation(self) -> Reconciliation:
        """in = out + quarantined + out of scope + re-sent copies dropped (raises when it does not hold)."""
        removed = {"out_of_scope_resource_type": self.out_of_scope}
        if self.resent:
            removed["resent_resource"] = self.resent
        return Reconciliation(self.resources_seen, self.records_out, len(self.quarantine), removed).check()


def dedupe_key(row: dict[str, Any]) -> tuple[Any, ...]:
    """What identifies one version of one resource: (institution, type, id, meta.versionId)."""
    return (row.get("institution"), row.get("resource_type"), row.get("resource_key"), row.get("version_id"))


class ResentFilter:
    """Drops a resource re-sent with the same id, versionId and content (a retried export page).

    A re-send with the same id and version but *different* content is kept:
    that is a conflict for cleaning to resolve (latest wins), not a copy.
    Memory: one 8-byte digest per distinct resource version seen (about 60 bytes
    each in a Python set) - share one filter across the files of a feed to
    drop copies between files.
    """

    def __init__(self) -> None:
        self._seen: set[bytes] = set()

    def is_resent(self, row: dict[str, Any]) -> bool:
        digest = hashlib.blake2b(
            orjson.dumps([*dedupe_key(row), row.get("content_hash")]), digest_size=8
        ).digest()
        if digest in self._seen:
            return True
        self._seen.add(digest)
        return False

    def __len__(self) -> int:
        return len(self._seen)


_default_validator: ResourceValidator | None = None


def default_validator() -> ResourceValidator:
    """The process-wide validator (its shape and leaf caches persist across files)."""
    global _default_validator
    if _default_validator is None:
        _default_validator = ResourceValidator()
    return _default_validator



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


def _bundle_entries(content: bytes) -> tuple[list[tuple[int, Any, str | None]], dict[str, str]]:
    """(position, parsed JSON or a malformed marker, fullUrl) per entry, and the
    Bundle's fullUrl -> resource key map so ``urn:uuid:`` references resolve.

    Raises ``orjson.JSONDecodeError`` when the file is not JSON at all.
    """
    entries: list[tuple[int, Any, str | None]] = []
    refs: dict[str, str] = {}
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


class _EntryParser:
    """Turns one parsed entry into a row or a quarantine record, into ``result``."""

    def __init__(
        self,
        *,
        institution: str | None,
        source_object: str,
        asset: str,
        validator: ResourceValidator | None,
        resent: ResentFilter | None,
    ) -> None:
        self.institution = institution
        self.source_object = source_object
        self.asset = asset
        self.validator = validator or default_validator()
        self.resent = resent

    def quarantine(self, result: ParsedFhir, position: int | None, rtype: str | None, code: str, reason: str) -> None:
        result.quarantine.append(
            QuarantineRecord(STAGE, self.asset, self.institution, self.source_object, position, rtype, code, reason)
        )

    def entry(self, result: ParsedFhir, position: int, resource: Any, full_url: str | None, refs: dict[str, str]) -> None:
        result.resources_seen += 1
        if isinstance(resource, _MalformedLine):
            self.quarantine(result, position, None, "malformed_json", "line is not valid JSON")
            return
        if not isinstance(resource, dict) or "resourceType" not in resource:
            self.quarantine(result, position, None, "not_fhir", "JSON value has no resourceType: not a FHIR resource")
            return
        rtype = resource["resourceType"]
        try:
            model_class(str(rtype))
        except (ValueError, KeyError, AttributeError, TypeError):
            self.quarantine(result, position, None, "unknown_resource_type", "resourceType is not an R4 resource type")
            return
        error = self.validator.validate(resource)
        if error is not None:
            self.quarantine(result, position, rtype, "invalid_resource", describe_validation_error(error, resource))
            return
        table = TABLE_OF_TYPE.get(rtype)
        if table is None:
            result.out_of_scope += 1
            return
        row = _EXTRACTORS[rtype](resource, refs)
        row.update(
            institution=self.institution,
            resource_type=rtype,
            resource_key=resource.get("id") or _key_from_url(full_url or ""),
            version_id=(resource.get("meta") or {}).get("versionId"),
            content_hash=sha256_bytes(orjson.dumps(resource, option=orjson.OPT_SORT_KEYS)),
            source_object=self.source_object,
            source_position=position,
        )
        if self.resent is not None and self.resent.is_resent(row):
            result.resent += 1
            return
        result.rows[table].append(row)


def parse_fhir_object(
    content: bytes,
    *,
    kind: str,
    institution: str | None,
    source_object: str,
    asset: str,
    validator: ResourceValidator | None = None,
    resent: ResentFilter | None = None,
) -> ParsedFhir:
    """Parse one landed FHIR file (Bundle JSON or NDJSON) held in memory.

    NDJSON goes through the same code as :func:`iter_ndjson_batches` (one
    batch); a Bundle is read whole, each entry validated on its own, so one bad
    entry among thousands is the only one quarantined.
    """
    if kind == FHIR_NDJSON:
        result = ParsedFhir()
        for batch in iter_ndjson_batches(
            [content], institution=institution, source_object=source_object, asset=asset,
            batch_size=max(1, content.count(b"\n") + 1), validator=validator, resent=resent,
        ):
            result.extend(batch)
        return result
    parser = _EntryParser(
        institution=institution, source_object=source_object, asset=asset, validator=validator, resent=resent
    )
    result = ParsedFhir()
    try:
        content.decode("utf-8")
    except UnicodeDecodeError as exc:
        result.resources_seen = 1
        parser.quarantine(result, None, None, "encoding_error", f"file is not valid UTF-8 (byte offset {exc.start})")
        return result
    if not content.strip():
        result.resources_seen = 1
        parser.quarantine(result, None, None, "empty_file", "file is empty")
        return result
    try:
        entries, refs = _bundle_entries(content)
    except orjson.JSONDecodeError as exc:
        result.resources_seen = 1
        parser.quarantine(result, None, None, "malformed_json", f"JSON syntax error at char {exc.pos}: {exc.msg}")
        return result
    for position, resource, full_url in entries:
        parser.entry(result, position, resource, full_url, refs)
    return result


DEFAULT_CHUNK_BYTES = 1 << 20
DEFAULT_BATCH_SIZE = 10_000


def _chunks(source: IO[bytes] | Iterable[bytes], chunk_bytes: int) -> Iterator[bytes]:
    read = getattr(source, "read", None)
    if callable(read):
        while chunk := read(chunk_bytes):
            yield chunk
    else:
        for chunk in source:  # type: ignore[union-attr]
            if chunk:
                yield bytes(chunk)


def _lines(chunks: Iterator[bytes]) -> Iterator[tuple[int, int, bytes]]:
    """(line number, byte offset of the line in the stream, line without its end) for every line."""
    carry = b""
    line_no = 0
    offset = 0
    for chunk in chunks:
        data = carry + chunk if carry else chunk
        parts = data.split(b"\n")
        carry = parts.pop()
        for part in parts:
            yield line_no, offset, part[:-1] if part.endswith(b"\r") else part
            line_no += 1
            offset += len(part) + 1
    if carry:
        yield line_no, offset, carry[:-1] if carry.endswith(b"\r") else carry


def iter_ndjson_batches(
    source: IO[bytes] | Iterable[bytes],
    *,
    institution: str | None,
    source_object: str,
    asset: str,
    batch_size: int = DEFAULT_BATCH_SIZE,
    validator: ResourceValidator | None = None,
    resent: ResentFilter | None = None,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
) -> Iterator[ParsedFhir]:
    """Stream a Bulk Data NDJSON file as :class:`ParsedFhir` batches of at most ``batch_size`` entries.

    ``source`` is a binary file-like (``read``) or an iterable of byte chunks
    (``envelope.decrypt_stream`` yields those); chunk boundaries may fall
    anywhere, also inside a line or a UTF-8 sequence. Memory is bounded by
    ``batch_size`` entries plus one chunk, whatever the file size (plus the
    ``resent`` filter's digests when one is given).

    Per line: blank lines are not entries; a line that is not UTF-8 (e.g. GBK
    text) is quarantined as ``encoding_error`` with its line number (the
    record's position) and the byte offset of the first bad byte in the file,
    and the rest of the file proceeds; a line that is not JSON is
    ``malformed_json``; a file with nothing but whitespace is one ``empty_file``.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be positive")
    parser = _EntryParser(
        institution=institution, source_object=source_object, asset=asset, validator=validator, resent=resent
    )
    batch = ParsedFhir()
    in_batch = 0
    any_entry = False
    for line_no, offset, line in _lines(_chunks(source, chunk_bytes)):
        if not line.strip():
            continue
        any_entry = True
        try:
            resource: Any = orjson.loads(line)
        except orjson.JSONDecodeError:
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as exc:
                batch.resources_seen += 1
                parser.quarantine(
                    batch, line_no, None, "encoding_error",
                    f"line is not valid UTF-8 (byte offset {offset + exc.start} in the file, {exc.start} in the line)",
                )
                in_batch += 1
                if in_batch >= batch_size:
                    yield batch
                    batch, in_batch = ParsedFhir(), 0
                continue
            resource = _MalformedLine()
        parser.entry(batch, line_no, resource, None, _NO_REFS)
        in_batch += 1
        if in_batch >= batch_size:
            yield batch
            batch, in_batch = ParsedFhir(), 0
    if not any_entry:
        batch.resources_seen += 1
        parser.quarantine(batch, None, None, "empty_file", "file is empty")
    if batch.resources_seen or not any_entry:
        yield batch


_NO_REFS: dict[str, str] = {}


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
