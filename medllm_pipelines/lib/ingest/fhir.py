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

FHIR as senders send it (R4 4.0.1, transactions, Bulk Data exports); every
entry read leaves as exactly one of:

* a row of a table (:data:`FHIR_TABLES`), including the *erasure request* a
  ``DELETE Patient/<id>`` (or conditional ``DELETE Patient?identifier=...``)
  is: a ``consents`` row with ``provision_type = erasure_request`` that the
  consent registry reads as a withdrawal, so the person leaves every derived
  table (counted in ``events['erasure_request']`` too);
* a quarantine record (reason code + position), also for any exception raised
  while reading, validating or mapping that one entry;
* a count under a declared rule (:data:`RULES`): resource types no table
  holds (``out_of_scope_resource_type``: they stay in the encrypted raw
  object), ``GET``/``HEAD`` entries (``request_only``), ``DELETE`` of other
  types (``delete_request``), ``PATCH`` (``patch_request``), response-only
  entries (``response_only``), ``OperationOutcome`` (``operation_outcome``:
  export error files, ``log.ndjson``), a Bulk Data manifest
  (``bulk_export_manifest``, whose declared counts are kept for checking).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import urllib.parse
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
from medllm_pipelines.lib.ingest.fhir_r4 import normalise_r4_to_r4b, not_validated_as_r4b
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
    "diagnostic_reports": "DiagnosticReport",
    "procedures": "Procedure",
    "allergy_intolerances": "AllergyIntolerance",
    "immunizations": "Immunization",
}
TABLE_OF_TYPE = {rtype: table for table, rtype in FHIR_TABLES.items()}

# Declared rules an entry can be set aside under (never lost: the raw object keeps it).
RULE_OUT_OF_SCOPE = "out_of_scope_resource_type"
RULE_REQUEST_ONLY = "request_only"
RULE_RESPONSE_ONLY = "response_only"
RULE_DELETE = "delete_request"
RULE_PATCH = "patch_request"
RULE_OPERATION_OUTCOME = "operation_outcome"
RULE_BULK_MANIFEST = "bulk_export_manifest"
RULES = (
    RULE_OUT_OF_SCOPE, RULE_REQUEST_ONLY, RULE_RESPONSE_ONLY, RULE_DELETE, RULE_PATCH, RULE_OPERATION_OUTCOME,
    RULE_BULK_MANIFEST,
)
# Counted events that are rows, not removals.
EVENT_ERASURE = codes.ERASURE_REQUEST
EVENT_R4_NORMALISED = "r4_elements_dropped_for_validation"

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
        # only on erasure requests by conditional DELETE (Patient?identifier=system|value): resolved in cleaning
        ("erasure_identifier_system", "string"), ("erasure_identifier_value", "string"),
    ],
    "diagnostic_reports": [
        ("patient_key", "string"), ("encounter_key", "string"), ("status", "string"), ("category", "string"),
        ("code_system", "string"), ("code", "string"), ("display", "string"), ("effective", "string"),
        ("issued", "string"), ("result_count", "int64"),
    ],
    "procedures": [
        ("patient_key", "string"), ("encounter_key", "string"), ("status", "string"), ("code_system", "string"),
        ("code", "string"), ("display", "string"), ("performed_start", "string"), ("performed_end", "string"),
    ],
    "allergy_intolerances": [
        ("patient_key", "string"), ("clinical_status", "string"), ("verification_status", "string"),
        ("allergy_type", "string"), ("category", "string"), ("criticality", "string"), ("code_system", "string"),
        ("code", "string"), ("display", "string"), ("onset", "string"), ("recorded_date", "string"),
    ],
    "immunizations": [
        ("patient_key", "string"), ("encounter_key", "string"), ("status", "string"), ("code_system", "string"),
        ("code", "string"), ("display", "string"), ("occurrence", "string"),
    ],
}
_LINEAGE_TYPES = [
    ("institution", "string"), ("resource_type", "string"), ("resource_key", "string"), ("version_id", "string"),
    ("content_hash", "string"), ("source_object", "string"), ("source_position", "int64"),
]
TABLE_SCHEMAS: dict[str, list[tuple[str, str]]] = {
    table: [*columns, *_LINEAGE_TYPES] for table, columns in _EXTRACTED_COLUMNS.items()
}


# The pandas dtype of each declared column type (nullable integers: Int64).
PANDAS_DTYPES = {"string": "object", "float64": "float64", "int64": "Int64"}


def table_columns(table: str) -> list[str]:
    """Column names of a parsed table, in order (extracted, then lineage)."""
    return [name for name, _ in TABLE_SCHEMAS[table]]


def rows_to_frame(table: str, rows: list[dict[str, Any]]) -> Any:
    """A pandas frame of parsed rows with the table's declared columns and dtypes (also when empty)."""
    import pandas as pd

    frame = pd.DataFrame(rows, columns=table_columns(table))
    return frame.astype({name: PANDAS_DTYPES[kind] for name, kind in TABLE_SCHEMAS[table]})


def arrow_schema(table: str) -> Any:
    """The pyarrow schema of a parsed table (for Parquet writers that append batch by batch)."""
    import pyarrow as pa

    types = {"string": pa.string(), "float64": pa.float64(), "int64": pa.int64()}
    return pa.schema([(name, types[kind]) for name, kind in TABLE_SCHEMAS[table]])


@dataclass(frozen=True)
class BulkManifest:
    """What a Bulk Data ``$export`` manifest declares: resources per type, and error files."""

    declared: dict[str, int]  # resource type -> declared count (types whose count is given)
    undeclared_count_types: tuple[str, ...]  # output types listed without a count
    output_files: int
    error_files: int
    source_object: str


@dataclass
class ParsedFhir:
    """Rows per table plus what was set aside.

    ``resources_seen`` counts every entry read (Bundle entry, non-blank NDJSON
    line, HL7 row source); each leaves as a row, a quarantine record, an
    out-of-scope count, a count under another declared rule
    (``removed_by_rule``) or - when re-send dropping is on - a ``resent`` count.
    ``out_of_scope`` stays a field of its own (HL7 parsing adds to it).
    """

    rows: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: {t: [] for t in FHIR_TABLES})
    quarantine: list[QuarantineRecord] = field(default_factory=list)
    out_of_scope: int = 0
    resources_seen: int = 0
    resent: int = 0
    removed_by_rule: dict[str, int] = field(default_factory=dict)
    events: dict[str, int] = field(default_factory=dict)  # counted, not removals (e.g. erasure requests)
    types_seen: dict[str, int] = field(default_factory=dict)  # resourceType -> entries (manifest checks)
    out_of_scope_by_type: dict[str, int] = field(default_factory=dict)  # resourceType -> entries no table holds
    manifests: list[BulkManifest] = field(default_factory=list)

    def extend(self, other: ParsedFhir) -> None:
        for table, rows in other.rows.items():
            self.rows.setdefault(table, []).extend(rows)
        self.quarantine.extend(other.quarantine)
        self.out_of_scope += other.out_of_scope
        self.resources_seen += other.resources_seen
        self.resent += other.resent
        for mine, theirs in ((self.removed_by_rule, other.removed_by_rule), (self.events, other.events),
                             (self.types_seen, other.types_seen), (self.out_of_scope_by_type, other.out_of_scope_by_type)):
            for name, count in theirs.items():
                mine[name] = mine.get(name, 0) + count
        self.manifests.extend(other.manifests)

    def count(self, rule: str) -> None:
        """One entry set aside under a declared rule."""
        if rule == RULE_OUT_OF_SCOPE:
            self.out_of_scope += 1
        else:
            self.removed_by_rule[rule] = self.removed_by_rule.get(rule, 0) + 1

    def removals(self) -> dict[str, int]:
        """Every declared rule with its count (out of scope and re-sent copies included)."""
        removed = {RULE_OUT_OF_SCOPE: self.out_of_scope, **self.removed_by_rule}
        if self.resent:
            removed["resent_resource"] = self.resent
        return removed

    @property
    def records_out(self) -> int:
        return sum(len(r) for r in self.rows.values())

    def reconciliation(self) -> Reconciliation:
        """in = out + quarantined + set aside by rule + re-sent copies dropped (raises when it does not hold)."""
        return Reconciliation(self.resources_seen, self.records_out, len(self.quarantine), self.removals()).check()


@dataclass
class ManifestCheck:
    """Bulk Data manifests of one feed against what arrived: declared vs. read resources per type.

    ``arrived`` counts the entries of each resourceType read from the feed's
    NDJSON files (valid or not: a quarantined line arrived too). A type whose
    declared count differs is a mismatch: a lost or truncated export file, or a
    page sent twice. Types listed without a count cannot be checked and are named.
    """

    declared: dict[str, int]
    arrived: dict[str, int]
    manifests: int
    error_files: int
    types_without_count: list[str]

    @property
    def mismatches(self) -> dict[str, dict[str, int]]:
        return {
            rtype: {"declared": count, "arrived": self.arrived.get(rtype, 0)}
            for rtype, count in sorted(self.declared.items())
            if self.arrived.get(rtype, 0) != count
        }

    def as_metadata(self) -> dict[str, Any]:
        return {
            "bulk_manifests": self.manifests,
            "bulk_declared_by_type": dict(sorted(self.declared.items())),
            "bulk_arrived_by_type": {t: self.arrived.get(t, 0) for t in sorted(self.declared)},
            "bulk_count_mismatches": self.mismatches,
            "bulk_types_without_count": self.types_without_count,
            "bulk_error_files_declared": self.error_files,
            "bulk_counts_match": not self.mismatches,
        }


def check_bulk_manifests(manifests: Iterable[BulkManifest], arrived: dict[str, int]) -> ManifestCheck:
    """Sum what every manifest of a feed declares and compare it with the NDJSON entries read per type."""
    declared: dict[str, int] = {}
    without: set[str] = set()
    count = errors = 0
    for manifest in manifests:
        count += 1
        errors += manifest.error_files
        without.update(manifest.undeclared_count_types)
        for rtype, n in manifest.declared.items():
            declared[rtype] = declared.get(rtype, 0) + n
    return ManifestCheck(declared, dict(arrived), count, errors, sorted(without - set(declared)))


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


@dataclass
class _Entry:
    """One Bundle entry (or the whole document when it is not a Bundle)."""

    position: int
    resource: Any
    full_url: str | None = None
    request: Any = None
    response: Any = None


@dataclass
class _BundleContext:
    refs: dict[str, str] = field(default_factory=dict)  # fullUrl -> resource key, so urn:uuid: references resolve
    timestamp: str | None = None  # Bundle.timestamp: when the sender assembled the requests


def _bundle_entries(content: bytes) -> tuple[list[_Entry], _BundleContext]:
    """The entries of a Bundle, or the document itself as one entry.

    Raises ``orjson.JSONDecodeError`` when the file is not JSON at all.
    """
    context = _BundleContext()
    document = orjson.loads(content)
    if not (isinstance(document, dict) and document.get("resourceType") == "Bundle"):
        return [_Entry(0, document)], context
    timestamp = document.get("timestamp")
    context.timestamp = timestamp if isinstance(timestamp, str) else None
    raw_entries = document.get("entry")
    if raw_entries is None:
        return [], context
    if not isinstance(raw_entries, list):
        return [_Entry(0, _MalformedLine("Bundle.entry is not an array"))], context
    entries: list[_Entry] = []
    for index, entry in enumerate(raw_entries):
        if not isinstance(entry, dict):
            entries.append(_Entry(index, _MalformedLine("Bundle entry is not a JSON object")))
            continue
        resource, full_url = entry.get("resource"), entry.get("fullUrl")
        if not isinstance(full_url, str):
            full_url = None
        if full_url and isinstance(resource, dict):
            resource_id = resource.get("id")
            context.refs[full_url] = resource_id if isinstance(resource_id, str) and resource_id else _key_from_url(full_url)
        entries.append(_Entry(index, resource, full_url, entry.get("request"), entry.get("response")))
    return entries, context


def _key_from_url(url: str) -> str:
    return url.rsplit(":", 1)[-1].rsplit("/", 1)[-1]


class _MalformedLine:
    """Marker for an NDJSON line or Bundle entry that is not JSON (or not an object where one must be)."""

    def __init__(self, reason: str = "line is not valid JSON") -> None:
        self.reason = reason


def _request_target(url: Any) -> tuple[str | None, str | None, dict[str, list[str]]]:
    """(resource type, id, search parameters) a transaction ``request.url`` names.

    ``Patient/234``, ``http://host/fhir/Patient/234``, ``Patient?identifier=sys|123``
    (conditional); the type is the last path segment that looks like one.
    """
    if not isinstance(url, str) or not url.strip():
        return None, None, {}
    path, _, query = url.strip().partition("?")
    params = urllib.parse.parse_qs(query, keep_blank_values=True) if query else {}
    segments = [s for s in urllib.parse.urlsplit(path).path.split("/") if s] if "://" in path else [
        s for s in path.split("/") if s
    ]
    for index in range(len(segments) - 1, -1, -1):
        segment = segments[index]
        if segment[:1].isupper() and segment.isalpha():
            resource_id = segments[index + 1] if index + 1 < len(segments) else None
            return segment, resource_id, params
    return None, None, params


def _is_bulk_manifest(document: Any) -> bool:
    """A Bulk Data ``$export`` completion manifest (``transactionTime``, ``request``, ``output[]``)."""
    return (
        isinstance(document, dict)
        and "resourceType" not in document
        and isinstance(document.get("output"), list)
        and ("transactionTime" in document or "request" in document or "requiresAccessToken" in document)
    )


def _is_npm_manifest(document: Any) -> bool:
    return (
        isinstance(document, dict)
        and "resourceType" not in document
        and isinstance(document.get("name"), str)
        and "version" in document
        and any(k in document for k in ("fhirVersions", "dependencies", "devDependencies", "canonical", "author"))
    )


def _manifest_of(document: dict[str, Any], source_object: str) -> BulkManifest:
    declared: dict[str, int] = {}
    without_count: set[str] = set()
    outputs = [o for o in document.get("output") or [] if isinstance(o, dict)]
    for output in outputs:
        rtype = output.get("type")
        if not isinstance(rtype, str):
            continue
        count = output.get("count")
        if isinstance(count, int) and not isinstance(count, bool) and count >= 0:
            declared[rtype] = declared.get(rtype, 0) + count
        else:
            without_count.add(rtype)
    errors = document.get("error")
    return BulkManifest(
        declared, tuple(sorted(without_count)), len(outputs), len(errors) if isinstance(errors, list) else 0,
        source_object,
    )


# An outcome of one entry: ("row", table, row) | ("quarantine", rtype, code, reason) | ("rule", rule)
_Outcome = tuple[Any, ...]


class _EntryParser:
    """Turns one parsed entry into a row, a quarantine record or a rule count, into ``result``.

    Everything that can raise happens before ``result`` is touched, so an
    exception in one entry becomes that entry's quarantine record
    (``parse_error``, with its position) and nothing else: the file goes on.
    """

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

    def entry(
        self, result: ParsedFhir, position: int, resource: Any, full_url: str | None, refs: dict[str, str],
        *, request: Any = None, response: Any = None, context: _BundleContext | None = None,
    ) -> None:
        result.resources_seen += 1
        rtype = resource.get("resourceType") if isinstance(resource, dict) else None
        rtype = rtype if isinstance(rtype, str) else None
        normalised = 0
        try:
            outcome, normalised = self._outcome(position, resource, rtype, full_url, refs, request, response, context)
        except Exception as exc:  # noqa: BLE001 - one bad entry must never stop the file
            outcome = ("quarantine", rtype if rtype and _ELEMENT_NAME.fullmatch(rtype) else None, "parse_error",
                       f"{type(exc).__name__} while reading the entry")
        if rtype and _ELEMENT_NAME.fullmatch(rtype):
            result.types_seen[rtype] = result.types_seen.get(rtype, 0) + 1
        if normalised:
            result.events[EVENT_R4_NORMALISED] = result.events.get(EVENT_R4_NORMALISED, 0) + normalised
        kind = outcome[0]
        if kind == "row":
            _, table, row = outcome
            if row is None:  # a re-sent copy
                result.resent += 1
                return
            result.rows.setdefault(table, []).append(row)
            if row.get("provision_type") == EVENT_ERASURE and table == "consents":
                result.events[EVENT_ERASURE] = result.events.get(EVENT_ERASURE, 0) + 1
        elif kind == "rule":
            result.count(outcome[1])
            if outcome[1] == RULE_OUT_OF_SCOPE and rtype:
                result.out_of_scope_by_type[rtype] = result.out_of_scope_by_type.get(rtype, 0) + 1
        elif kind == "manifest":
            result.count(RULE_BULK_MANIFEST)
            result.manifests.append(outcome[1])
        else:
            _, q_type, code, reason = outcome
            self.quarantine(result, position, q_type, code, reason)

    def _outcome(
        self, position: int, resource: Any, rtype: str | None, full_url: str | None, refs: dict[str, str],
        request: Any, response: Any, context: _BundleContext | None,
    ) -> tuple[_Outcome, int]:
        method = request.get("method") if isinstance(request, dict) else None
        method = method.upper() if isinstance(method, str) else None
        if method in ("GET", "HEAD"):
            return ("rule", RULE_REQUEST_ONLY), 0
        if method == "DELETE":
            return self._delete(position, request, context), 0
        if method == "PATCH":
            return ("rule", RULE_PATCH), 0
        if isinstance(resource, _MalformedLine):
            return ("quarantine", None, "malformed_json", resource.reason), 0
        if resource is None and isinstance(response, dict):
            return ("rule", RULE_RESPONSE_ONLY), 0
        if _is_bulk_manifest(resource):
            return ("manifest", _manifest_of(resource, self.source_object)), 0
        if _is_npm_manifest(resource):
            return ("quarantine", None, "not_fhir", "an npm package manifest (package.json), not a FHIR resource"), 0
        if not isinstance(resource, dict) or "resourceType" not in resource:
            return ("quarantine", None, "not_fhir", "JSON value has no resourceType: not a FHIR resource"), 0
        if rtype is None or not _ELEMENT_NAME.fullmatch(rtype):
            return ("quarantine", None, "unknown_resource_type", "resourceType is not an R4 resource type"), 0
        if rtype == "OperationOutcome":
            return ("rule", RULE_OPERATION_OUTCOME), 0
        if not_validated_as_r4b(rtype):
            return ("rule", RULE_OUT_OF_SCOPE), 0  # an R4 type R4B removed or reworked: no table holds it
        try:
            model_class(rtype)
        except (ValueError, KeyError, AttributeError, TypeError):
            return ("quarantine", None, "unknown_resource_type", "resourceType is not an R4 resource type"), 0
        error = self.validator.validate(resource)
        normalised = 0
        if error is not None:
            candidate, dropped = normalise_r4_to_r4b(resource)
            if dropped and self.validator.validate(candidate) is None:
                error, normalised = None, dropped
        if error is not None:
            return ("quarantine", rtype, "invalid_resource", describe_validation_error(error, resource)), 0
        table = TABLE_OF_TYPE.get(rtype)
        if table is None:
            return ("rule", RULE_OUT_OF_SCOPE), normalised
        row = _EXTRACTORS[rtype](resource, refs)
        resource_id = resource.get("id")
        row.update(
            institution=self.institution,
            resource_type=rtype,
            resource_key=resource_id if isinstance(resource_id, str) and resource_id else _key_from_url(full_url or ""),
            version_id=(resource.get("meta") or {}).get("versionId"),
            content_hash=sha256_bytes(orjson.dumps(resource, option=orjson.OPT_SORT_KEYS)),
            source_object=self.source_object,
        )
        return self._keep(table, row, position), normalised

    def _keep(self, table: str, row: dict[str, Any], position: int) -> _Outcome:
        """The row, or None in its place when it is a re-sent copy (the last step: nothing after it raises)."""
        row["source_position"] = position
        if self.resent is not None and self.resent.is_resent(row):
            return ("row", table, None)
        return ("row", table, row)

    def _delete(self, position: int, request: dict[str, Any], context: _BundleContext | None) -> _Outcome:
        """A DELETE: of a Patient, an erasure request (a consents row); of anything else, a counted rule."""
        url = request.get("url")
        rtype, resource_id, params = _request_target(url)
        if rtype != "Patient":
            return ("rule", RULE_DELETE)
        system = value = None
        if resource_id is None:
            identifiers = params.get("identifier") or []
            if len(identifiers) != 1 or set(params) - {"identifier"} or not identifiers[0].strip():
                return ("quarantine", "Patient", "unresolvable_erasure_request",
                        "DELETE of Patients by a search other than one identifier: the persons cannot be resolved")
            token = identifiers[0]
            system, sep, value = token.rpartition("|")
            system = system if sep and system else None
        row = {name: None for name in table_columns("consents")}
        row.update(
            patient_key=resource_id,
            status="inactive",
            scope=None,
            provision_type=EVENT_ERASURE,
            date_time=context.timestamp if context else None,
            erasure_identifier_system=system,
            erasure_identifier_value=value,
            institution=self.institution,
            resource_type="Patient",
            resource_key=resource_id or f"?{urllib.parse.urlsplit(str(url)).query}",
            version_id=None,
            content_hash=sha256_bytes(orjson.dumps(request, option=orjson.OPT_SORT_KEYS)),
            source_object=self.source_object,
        )
        return self._keep("consents", row, position)


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
    """Parse one landed FHIR file (Bundle JSON, a single resource, a Bulk manifest, or NDJSON) held in memory.

    NDJSON goes through the same code as :func:`iter_ndjson_batches` (one
    batch); a Bundle is read whole, each entry validated on its own, so one bad
    entry among thousands is the only one quarantined.
    """
    if kind == FHIR_NDJSON:
        result = ParsedFhir()
        for batch in iter_ndjson_batches(
            [content], institution=institution, source_object=source_object, asset=asset,
            batch_size=max(1, content.count(b"\\n") + 1), validator=validator, resent=resent,
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
        entries, context = _bundle_entries(content)
    except orjson.JSONDecodeError as exc:
        result.resources_seen = 1
        parser.quarantine(result, None, None, "malformed_json", f"JSON syntax error at char {exc.pos}: {exc.msg}")
        return result
    except Exception as exc:  # noqa: BLE001 - e.g. recursion limits on absurdly nested input
        result.resources_seen = 1
        parser.quarantine(result, None, None, "parse_error", f"{type(exc).__name__} while reading the file")
        return result
    for item in entries:
        parser.entry(result, item.position, item.resource, item.full_url, context.refs,
                     request=item.request, response=item.response, context=context)
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


def _coded(concept: dict[str, Any] | None) -> dict[str, Any]:
    """The first coding of a CodeableConcept as the tables' code_system / code / display columns."""
    coding = _first_coding(concept)
    return {"code_system": coding.get("system"), "code": coding.get("code"), "display": coding.get("display")}


def _condition(r: dict[str, Any], refs: dict[str, str]) -> dict[str, Any]:
    return {
        "patient_key": _reference_key(r.get("subject"), refs),
        **_coded(r.get("code")),
        "clinical_status": _first_coding(r.get("clinicalStatus")).get("code"),
        "onset": r.get("onsetDateTime"),
        "recorded_date": r.get("recordedDate"),
    }


def _observation(r: dict[str, Any], refs: dict[str, str]) -> dict[str, Any]:
    quantity = r.get("valueQuantity") or {}
    value = quantity.get("value")
    return {
        "patient_key": _reference_key(r.get("subject"), refs),
        "status": r.get("status"),
        "category": _first_coding((r.get("category") or [{}])[0]).get("code"),
        **_coded(r.get("code")),
        "value": float(value) if value is not None else None,
        "unit": quantity.get("code") or quantity.get("unit"),
        "unit_system": quantity.get("system"),
        "effective": r.get("effectiveDateTime") or (r.get("effectivePeriod") or {}).get("start"),
    }


def _medication_request(r: dict[str, Any], refs: dict[str, str]) -> dict[str, Any]:
    return {
        "patient_key": _reference_key(r.get("subject"), refs),
        "status": r.get("status"),
        **_coded(r.get("medicationCodeableConcept")),
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
        "erasure_identifier_system": None,
        "erasure_identifier_value": None,
    }


def _diagnostic_report(r: dict[str, Any], refs: dict[str, str]) -> dict[str, Any]:
    # No conclusion / presentedForm: free text stays in the raw object until a text pipeline de-identifies it.
    return {
        "patient_key": _reference_key(r.get("subject"), refs),
        "encounter_key": _reference_key(r.get("encounter"), refs),
        "status": r.get("status"),
        "category": _first_coding((r.get("category") or [{}])[0]).get("code"),
        **_coded(r.get("code")),
        "effective": r.get("effectiveDateTime") or (r.get("effectivePeriod") or {}).get("start"),
        "issued": r.get("issued"),
        "result_count": len(r.get("result") or []),
    }


def _procedure(r: dict[str, Any], refs: dict[str, str]) -> dict[str, Any]:
    period = r.get("performedPeriod") or {}
    return {
        "patient_key": _reference_key(r.get("subject"), refs),
        "encounter_key": _reference_key(r.get("encounter"), refs),
        "status": r.get("status"),
        **_coded(r.get("code")),
        "performed_start": r.get("performedDateTime") or period.get("start"),
        "performed_end": period.get("end"),
    }


def _allergy_intolerance(r: dict[str, Any], refs: dict[str, str]) -> dict[str, Any]:
    return {
        "patient_key": _reference_key(r.get("patient"), refs),
        "clinical_status": _first_coding(r.get("clinicalStatus")).get("code"),
        "verification_status": _first_coding(r.get("verificationStatus")).get("code"),
        "allergy_type": r.get("type"),
        "category": (r.get("category") or [None])[0],
        "criticality": r.get("criticality"),
        **_coded(r.get("code")),
        "onset": r.get("onsetDateTime") or (r.get("onsetPeriod") or {}).get("start"),
        "recorded_date": r.get("recordedDate"),
    }


def _immunization(r: dict[str, Any], refs: dict[str, str]) -> dict[str, Any]:
    return {
        "patient_key": _reference_key(r.get("patient"), refs),
        "encounter_key": _reference_key(r.get("encounter"), refs),
        "status": r.get("status"),
        **_coded(r.get("vaccineCode")),
        "occurrence": r.get("occurrenceDateTime"),
    }


_EXTRACTORS: dict[str, Callable[[dict[str, Any], dict[str, str]], dict[str, Any]]] = {
    "Patient": _patient,
    "Encounter": _encounter,
    "Condition": _condition,
    "Observation": _observation,
    "MedicationRequest": _medication_request,
    "DocumentReference": _document_reference,
    "Consent": _consent,
    "DiagnosticReport": _diagnostic_report,
    "Procedure": _procedure,
    "AllergyIntolerance": _allergy_intolerance,
    "Immunization": _immunization,
}
