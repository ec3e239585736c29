"""Framing FHIR as senders deliver it: Bundle entries, NDJSON lines, Bulk Data manifests.

This module only finds the entries of a landed file and what they are
(a resource, a transaction request, a Bulk ``$export`` manifest, something that
is not JSON); :mod:`~medllm_pipelines.lib.ingest.fhir` validates them and
:mod:`~medllm_pipelines.lib.ingest.fhir_mapping` maps them to table rows.
NDJSON is framed from a stream of byte chunks whose boundaries may fall
anywhere (:func:`iter_lines`), so memory stays flat in the file size.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import IO, Any

import orjson

from medllm_pipelines.lib.ingest.feed import BulkManifest

DEFAULT_CHUNK_BYTES = 1 << 20
NO_REFS: dict[str, str] = {}  # NDJSON lines resolve no Bundle-local references


@dataclass
class Entry:
    """One Bundle entry (or the whole document when it is not a Bundle)."""

    position: int
    resource: Any
    full_url: str | None = None
    request: Any = None
    response: Any = None


@dataclass
class BundleContext:
    refs: dict[str, str] = field(default_factory=dict)  # fullUrl -> resource key, so urn:uuid: references resolve
    timestamp: str | None = None  # Bundle.timestamp: when the sender assembled the requests


def bundle_entries(content: bytes) -> tuple[list[Entry], BundleContext]:
    """The entries of a Bundle, or the document itself as one entry.

    Raises ``orjson.JSONDecodeError`` when the file is not JSON at all.
    """
    context = BundleContext()
    document = orjson.loads(content)
    if not (isinstance(document, dict) and document.get("resourceType") == "Bundle"):
        return [Entry(0, document)], context
    timestamp = document.get("timestamp")
    context.timestamp = timestamp if isinstance(timestamp, str) else None
    raw_entries = document.get("entry")
    if raw_entries is None:
        return [], context
    if not isinstance(raw_entries, list):
        return [Entry(0, MalformedEntry("Bundle.entry is not an array"))], context
    entries: list[Entry] = []
    for index, entry in enumerate(raw_entries):
        if not isinstance(entry, dict):
            entries.append(Entry(index, MalformedEntry("Bundle entry is not a JSON object")))
            continue
        resource, full_url = entry.get("resource"), entry.get("fullUrl")
        if not isinstance(full_url, str):
            full_url = None
        if full_url and isinstance(resource, dict):
            resource_id = resource.get("id")
            context.refs[full_url] = resource_id if isinstance(resource_id, str) and resource_id else key_from_url(full_url)
        entries.append(Entry(index, resource, full_url, entry.get("request"), entry.get("response")))
    return entries, context


def key_from_url(url: str) -> str:
    return url.rsplit(":", 1)[-1].rsplit("/", 1)[-1]


class MalformedEntry:
    """Marker for an NDJSON line or Bundle entry that is not JSON (or not an object where one must be)."""

    def __init__(self, reason: str = "line is not valid JSON") -> None:
        self.reason = reason


def request_target(url: Any) -> tuple[str | None, str | None, dict[str, list[str]]]:
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


def is_bulk_manifest(document: Any) -> bool:
    """A Bulk Data ``$export`` completion manifest (``transactionTime``, ``request``, ``output[]``)."""
    return (
        isinstance(document, dict)
        and "resourceType" not in document
        and isinstance(document.get("output"), list)
        and ("transactionTime" in document or "request" in document or "requiresAccessToken" in document)
    )


def is_npm_manifest(document: Any) -> bool:
    return (
        isinstance(document, dict)
        and "resourceType" not in document
        and isinstance(document.get("name"), str)
        and "version" in document
        and any(k in document for k in ("fhirVersions", "dependencies", "devDependencies", "canonical", "author"))
    )


def manifest_of(document: dict[str, Any], source_object: str) -> BulkManifest:
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


def iter_chunks(source: IO[bytes] | Iterable[bytes], chunk_bytes: int) -> Iterator[bytes]:
    read = getattr(source, "read", None)
    if callable(read):
        while chunk := read(chunk_bytes):
            yield chunk
    else:
        for chunk in source:  # type: ignore[union-attr]
            if chunk:
                yield bytes(chunk)


def iter_lines(chunks: Iterator[bytes]) -> Iterator[tuple[int, int, bytes]]:
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
