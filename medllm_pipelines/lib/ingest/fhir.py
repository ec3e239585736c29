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

Framing (Bundle entries, NDJSON lines, manifests) is ``fhir_framing.py``'s,
the mapping of a resource to its row ``fhir_mapping.py``'s, the tables
``tables.py``'s; this module validates each entry and accounts for it in a
:class:`~medllm_pipelines.lib.ingest.feed.ParsedFeed`.
"""

from __future__ import annotations

import hashlib
import re
import urllib.parse
from collections.abc import Iterable, Iterator, Sequence
from typing import IO, Any

import orjson

from medllm_pipelines.lib.common.records import QuarantineRecord, sha256_bytes
from medllm_pipelines.lib.ingest.feed import (
    EVENT_ERASURE,
    EVENT_R4_NORMALISED,
    RULE_BULK_MANIFEST,
    RULE_DELETE,
    RULE_OPERATION_OUTCOME,
    RULE_OUT_OF_SCOPE,
    RULE_PATCH,
    RULE_REQUEST_ONLY,
    RULE_RESPONSE_ONLY,
    ParsedFeed,
)
from medllm_pipelines.lib.ingest.fhir_framing import (
    DEFAULT_CHUNK_BYTES,
    NO_REFS,
    BundleContext,
    MalformedEntry,
    bundle_entries,
    is_bulk_manifest,
    is_npm_manifest,
    iter_chunks,
    iter_lines,
    key_from_url,
    manifest_of,
    request_target,
)
from medllm_pipelines.lib.ingest.fhir_mapping import EXTRACTORS, observation_components
from medllm_pipelines.lib.ingest.fhir_r4 import normalise_r4_to_r4b, not_validated_as_r4b
from medllm_pipelines.lib.ingest.fhir_validation import ResourceValidator, model_class
from medllm_pipelines.lib.ingest.landing import FHIR_NDJSON
from medllm_pipelines.lib.ingest.tables import TABLE_OF_TYPE, table_columns

STAGE = "ingest"
DEFAULT_BATCH_SIZE = 10_000


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


# An outcome of one entry: ("row", table, row, component_rows) | ("quarantine", rtype, code, reason) |
# ("rule", rule)
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

    def quarantine(self, result: ParsedFeed, position: int | None, rtype: str | None, code: str, reason: str) -> None:
        result.quarantine.append(
            QuarantineRecord(STAGE, self.asset, self.institution, self.source_object, position, rtype, code, reason)
        )

    def entry(
        self, result: ParsedFeed, position: int, resource: Any, full_url: str | None, refs: dict[str, str],
        *, request: Any = None, response: Any = None, context: BundleContext | None = None,
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
            _, table, row, components = outcome
            if row is None:  # a re-sent copy
                result.resent += 1
                return
            result.rows.setdefault(table, []).append(row)
            if components:  # a panel's readings: records of their own, in and out
                result.rows[table].extend(components)
                result.resources_seen += len(components)
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
        request: Any, response: Any, context: BundleContext | None,
    ) -> tuple[_Outcome, int]:
        method = request.get("method") if isinstance(request, dict) else None
        method = method.upper() if isinstance(method, str) else None
        if method in ("GET", "HEAD"):
            return ("rule", RULE_REQUEST_ONLY), 0
        if method == "DELETE":
            return self._delete(position, request, context), 0
        if method == "PATCH":
            return ("rule", RULE_PATCH), 0
        if isinstance(resource, MalformedEntry):
            return ("quarantine", None, "malformed_json", resource.reason), 0
        if resource is None and isinstance(response, dict):
            return ("rule", RULE_RESPONSE_ONLY), 0
        if is_bulk_manifest(resource):
            return ("manifest", manifest_of(resource, self.source_object)), 0
        if is_npm_manifest(resource):
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
        row = EXTRACTORS[rtype](resource, refs)
        resource_id = resource.get("id")
        row.update(
            institution=self.institution,
            resource_type=rtype,
            resource_key=resource_id if isinstance(resource_id, str) and resource_id else key_from_url(full_url or ""),
            version_id=(resource.get("meta") or {}).get("versionId"),
            content_hash=sha256_bytes(orjson.dumps(resource, option=orjson.OPT_SORT_KEYS)),
            source_object=self.source_object,
        )
        parts = observation_components(resource) if rtype == "Observation" else []
        return self._keep(table, row, position, parts), normalised

    def _keep(self, table: str, row: dict[str, Any], position: int,
              parts: Sequence[tuple[int, dict[str, Any]]] = ()) -> _Outcome:
        """The row with its panel's component rows (``parts``: index, columns), or None in its place when it is
        a re-sent copy (the last step: nothing after it raises)."""
        row["source_position"] = position
        if self.resent is not None and self.resent.is_resent(row):
            return ("row", table, None, None)
        components = [{**row, **columns, "resource_key": f"{row['resource_key']}/component/{index}"}
                      for index, columns in parts]
        return ("row", table, row, components or None)

    def _delete(self, position: int, request: dict[str, Any], context: BundleContext | None) -> _Outcome:
        """A DELETE: of a Patient, an erasure request (a consents row); of anything else, a counted rule."""
        url = request.get("url")
        rtype, resource_id, params = request_target(url)
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
) -> ParsedFeed:
    """Parse one landed FHIR file (Bundle JSON, a single resource, a Bulk manifest, or NDJSON) held in memory.

    NDJSON goes through the same code as :func:`iter_ndjson_batches` (one
    batch); a Bundle is read whole, each entry validated on its own, so one bad
    entry among thousands is the only one quarantined.
    """
    if kind == FHIR_NDJSON:
        result = ParsedFeed()
        for batch in iter_ndjson_batches(
            [content], institution=institution, source_object=source_object, asset=asset,
            batch_size=max(1, content.count(b"\\n") + 1), validator=validator, resent=resent,
        ):
            result.extend(batch)
        return result
    parser = _EntryParser(
        institution=institution, source_object=source_object, asset=asset, validator=validator, resent=resent
    )
    result = ParsedFeed()
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
        entries, context = bundle_entries(content)
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
) -> Iterator[ParsedFeed]:
    """Stream a Bulk Data NDJSON file as :class:`ParsedFeed` batches of at most ``batch_size`` entries.

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
    batch = ParsedFeed()
    in_batch = 0
    any_entry = False
    for line_no, offset, line in iter_lines(iter_chunks(source, chunk_bytes)):
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
                    batch, in_batch = ParsedFeed(), 0
                continue
            resource = MalformedEntry()
        parser.entry(batch, line_no, resource, None, NO_REFS)
        in_batch += 1
        if in_batch >= batch_size:
            yield batch
            batch, in_batch = ParsedFeed(), 0
    if not any_entry:
        batch.resources_seen += 1
        parser.quarantine(batch, None, None, "empty_file", "file is empty")
    if batch.resources_seen or not any_entry:
        yield batch
