"""The service's document store: encrypted, append-only versions of JSON documents (triage sessions, EHR notes,
imaging results, feedback).

Why this shape: clinical documents must keep every version (who changed what, when) and must not change once
signed, so rows are only ever inserted, never updated: a new version is a new row, and signing is a last version
with the signed flag. A unique ``(kind, doc_id, version)`` key makes two writers racing on one version impossible
to both win (the loser gets ``version_conflict``), on the embedded SQLite default as on PostgreSQL.

Each document is sealed with the project's envelope encryption (``lib/security/envelope.py``: a fresh data key
per version from the key service) with associated data binding kind, id and version, so a row's ciphertext copied
onto another row fails authentication. Only ids, kinds, version numbers, authors (principal names, never
patients), timestamps and the signed flag are stored in clear.
"""

from __future__ import annotations

import datetime as dt
import difflib
import json
import re
import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy import (
    Boolean,
    Column,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    UniqueConstraint,
    create_engine,
    func,
    insert,
    select,
)
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.pool import StaticPool

from medllm_pipelines.lib.scenarios.errors import ScenarioInputError
from medllm_pipelines.lib.security.envelope import DataKeyProvider, decrypt_bytes, encrypt_bytes

__all__ = ["AAD_CONTEXT", "MAX_DOCUMENT_BYTES", "DocumentStore", "DocumentVersion", "canonical_json"]

AAD_CONTEXT = b"medllm-document-store:v1"
MAX_DOCUMENT_BYTES = 4 * 1024 * 1024
_KIND = re.compile(r"^[a-z][a-z0-9_.\-]{0,63}$")
_DOC_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")  # also a valid FHIR id
_MAX_AUTHOR = 200

_metadata = MetaData()
documents_table = Table(
    "scenario_documents",
    _metadata,
    Column("kind", String(64), nullable=False),
    Column("doc_id", String(64), nullable=False),
    Column("version", Integer, nullable=False),
    Column("author", String(_MAX_AUTHOR), nullable=False),
    Column("created_at", String(32), nullable=False),  # ISO 8601 UTC with microseconds: sorts as text
    Column("signed", Boolean, nullable=False, default=False),
    Column("signed_by", String(_MAX_AUTHOR)),
    Column("signed_at", String(32)),
    Column("sealed", LargeBinary, nullable=False),  # envelope of the canonical JSON
    UniqueConstraint("kind", "doc_id", "version", name="uq_scenario_documents_version"),
)


@dataclass(frozen=True)
class DocumentVersion:
    """One stored version; ``diff`` is the unified diff of the canonical JSON against the previous version
    (None for the first, and for versions read with :meth:`DocumentStore.get`)."""

    kind: str
    doc_id: str
    version: int
    author: str
    created_at: str
    signed: bool
    signed_by: str | None
    signed_at: str | None
    document: dict[str, Any]
    diff: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def canonical_json(document: Mapping[str, Any], *, pretty: bool = False) -> str:
    """Sorted keys, UTF-8 text: what is sealed (compact) and what versions are diffed on (pretty, one value a line)."""
    if pretty:
        return json.dumps(document, sort_keys=True, ensure_ascii=False, indent=2)
    return json.dumps(document, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def _utc_now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


class DocumentStore:
    """Versioned, encrypted JSON documents in a SQL database (``sqlite:///path`` embedded, or
    ``postgresql+psycopg2://...`` in production); creates its table if missing."""

    def __init__(self, url: str, keys: DataKeyProvider) -> None:
        self._keys = keys
        self._engine = self._make_engine(url)
        _metadata.create_all(self._engine, checkfirst=True)

    @staticmethod
    def _make_engine(url: str) -> Engine:
        if url.startswith("sqlite"):
            in_memory = url in ("sqlite://", "sqlite:///:memory:")
            # one shared connection for an in-memory database (else each connection sees an empty one); a busy
            # timeout so concurrent writers queue instead of failing with "database is locked"
            return create_engine(url, connect_args={"timeout": 30, "check_same_thread": False},
                                 poolclass=StaticPool if in_memory else None)
        return create_engine(url, pool_pre_ping=True)

    @property
    def engine(self) -> Engine:
        return self._engine

    def close(self) -> None:
        self._engine.dispose()

    # --- writes -------------------------------------------------------------------------------------------------
    def create(self, kind: str, document: dict[str, Any], *, author: str, doc_id: str | None = None) -> DocumentVersion:
        """Version 1 of a new document; ``document_exists`` (409) when the id is taken."""
        _check_kind(kind)
        doc_id = uuid.uuid4().hex if doc_id is None else _check_doc_id(doc_id)
        try:
            with self._engine.begin() as conn:
                return self._insert(conn, kind, doc_id, 1, document, author=author)
        except IntegrityError:
            raise ScenarioInputError("document_exists", f"a {kind} document with this id already exists",
                                     status=409) from None

    def update(self, kind: str, doc_id: str, document: dict[str, Any], *, author: str,
               expected_version: int | None = None) -> DocumentVersion:
        """A new version; refused when the document is signed or when ``expected_version`` is not the latest."""
        return self._append(kind, doc_id, document, author=author, expected_version=expected_version, sign=False)

    def sign(self, kind: str, doc_id: str, *, author: str, document: dict[str, Any] | None = None,
             expected_version: int | None = None) -> DocumentVersion:
        """Seal the document: a last version, signed by ``author``, holding ``document`` (default: the latest
        content, e.g. a note already marked final). Nothing can be appended afterwards."""
        return self._append(kind, doc_id, document, author=author, expected_version=expected_version, sign=True)

    def _append(self, kind: str, doc_id: str, document: dict[str, Any] | None, *, author: str,
                expected_version: int | None, sign: bool) -> DocumentVersion:
        _check_kind(kind)
        _check_doc_id(doc_id)
        if expected_version is not None and (not isinstance(expected_version, int) or isinstance(expected_version, bool)
                                             or expected_version < 1):
            raise ScenarioInputError("invalid_expected_version", "expected_version must be a positive integer")
        try:
            with self._engine.begin() as conn:
                latest = self._latest_row(conn, kind, doc_id)
                self._check_writable(latest, kind, expected_version)
                content = document if document is not None else self._open(latest)
                return self._insert(conn, kind, doc_id, latest.version + 1, content, author=author, sign=sign)
        except IntegrityError:
            # another writer took this version number first: tell the caller what it lost to
            with self._engine.connect() as conn:
                latest = self._latest_row(conn, kind, doc_id)
            if latest.signed:
                raise _signed_error(kind) from None
            raise _conflict_error(kind) from None

    def _insert(self, conn: Connection, kind: str, doc_id: str, version: int, document: Mapping[str, Any], *,
                author: str, sign: bool = False) -> DocumentVersion:
        author = _check_author(author)
        plain = _serialise(document)
        created_at = _utc_now()
        sealed = encrypt_bytes(plain.encode("utf-8"), self._keys, _aad(kind, doc_id, version))
        conn.execute(insert(documents_table).values(
            kind=kind, doc_id=doc_id, version=version, author=author, created_at=created_at, signed=sign,
            signed_by=author if sign else None, signed_at=created_at if sign else None, sealed=sealed))
        return DocumentVersion(kind, doc_id, version, author, created_at, sign, author if sign else None,
                               created_at if sign else None, json.loads(plain))

    # --- reads --------------------------------------------------------------------------------------------------
    def get(self, kind: str, doc_id: str) -> DocumentVersion:
        """The latest version; ``not_found`` (404) for an unknown id."""
        _check_kind(kind)
        _check_doc_id(doc_id)
        with self._engine.connect() as conn:
            row = self._latest_row(conn, kind, doc_id)
        return self._version(row, self._open(row))

    def get_version(self, kind: str, doc_id: str, version: int) -> DocumentVersion:
        """One given version (``not_found`` when it does not exist)."""
        _check_kind(kind)
        _check_doc_id(doc_id)
        t = documents_table
        with self._engine.connect() as conn:
            row = conn.execute(select(t).where(t.c.kind == kind, t.c.doc_id == doc_id, t.c.version == version)).first()
        if row is None:
            raise _not_found(kind)
        return self._version(row, self._open(row))

    def versions(self, kind: str, doc_id: str) -> list[DocumentVersion]:
        """Every version, oldest first, each with its unified diff against the one before."""
        _check_kind(kind)
        _check_doc_id(doc_id)
        t = documents_table
        with self._engine.connect() as conn:
            rows = conn.execute(select(t).where(t.c.kind == kind, t.c.doc_id == doc_id).order_by(t.c.version)).all()
        if not rows:
            raise _not_found(kind)
        out: list[DocumentVersion] = []
        previous: list[str] | None = None
        for row in rows:
            document = self._open(row)
            lines = canonical_json(document, pretty=True).splitlines()
            diff = None if previous is None else "\n".join(difflib.unified_diff(
                previous, lines, fromfile=f"{kind}/{doc_id}@v{row.version - 1}",
                tofile=f"{kind}/{doc_id}@v{row.version}", lineterm=""))
            out.append(self._version(row, document, diff))
            previous = lines
        return out

    def latest_documents(self, kind: str) -> list[DocumentVersion]:
        """The latest version of every document of ``kind`` (what the feedback asset reads), oldest id first."""
        _check_kind(kind)
        t = documents_table
        newest = (select(t.c.doc_id, func.max(t.c.version).label("version")).where(t.c.kind == kind)
                  .group_by(t.c.doc_id).subquery())
        with self._engine.connect() as conn:
            rows = conn.execute(select(t).join(newest, (t.c.doc_id == newest.c.doc_id)
                                               & (t.c.version == newest.c.version))
                                .where(t.c.kind == kind).order_by(t.c.created_at, t.c.doc_id)).all()
        return [self._version(row, self._open(row)) for row in rows]

    def ping(self) -> None:
        """Raise if the database cannot be reached (the service's readiness check)."""
        with self._engine.connect() as conn:
            conn.execute(select(1))

    # --- helpers ------------------------------------------------------------------------------------------------
    @staticmethod
    def _latest_row(conn: Connection, kind: str, doc_id: str) -> Any:
        t = documents_table
        newest = (select(func.max(t.c.version)).where(t.c.kind == kind, t.c.doc_id == doc_id).scalar_subquery())
        row = conn.execute(select(t).where(t.c.kind == kind, t.c.doc_id == doc_id, t.c.version == newest)).first()
        if row is None:
            raise _not_found(kind)
        return row

    @staticmethod
    def _check_writable(latest: Any, kind: str, expected_version: int | None) -> None:
        if latest.signed:
            raise _signed_error(kind)
        if expected_version is not None and expected_version != latest.version:
            raise _conflict_error(kind)

    def _open(self, row: Any) -> dict[str, Any]:
        plain = decrypt_bytes(bytes(row.sealed), self._keys, _aad(row.kind, row.doc_id, row.version))
        return json.loads(plain.decode("utf-8"))

    @staticmethod
    def _version(row: Any, document: dict[str, Any], diff: str | None = None) -> DocumentVersion:
        return DocumentVersion(row.kind, row.doc_id, row.version, row.author, row.created_at, bool(row.signed),
                               row.signed_by, row.signed_at, document, diff)


def _aad(kind: str, doc_id: str, version: int) -> bytes:
    return b"\x00".join((AAD_CONTEXT, kind.encode(), doc_id.encode(), str(version).encode()))


def _serialise(document: Any) -> str:
    if not isinstance(document, Mapping):
        raise ScenarioInputError("invalid_document", "a document must be a JSON object")
    try:
        text = canonical_json(document)
    except (TypeError, ValueError):
        raise ScenarioInputError("invalid_document", "the document is not JSON-serialisable") from None
    if len(text.encode("utf-8")) > MAX_DOCUMENT_BYTES:
        raise ScenarioInputError("document_too_large", f"a document may hold at most {MAX_DOCUMENT_BYTES} bytes",
                                 status=413)
    return text


def _check_kind(kind: Any) -> str:
    if not isinstance(kind, str) or not _KIND.match(kind):
        raise ScenarioInputError("invalid_document_kind", "a document kind is 1-64 lower-case letters, digits, _.-")
    return kind


def _check_doc_id(doc_id: Any) -> str:
    if not isinstance(doc_id, str) or not _DOC_ID.match(doc_id):
        raise ScenarioInputError("invalid_document_id", "a document id is 1-64 letters, digits, _.- (no leading "
                                 "punctuation)")
    return doc_id


def _check_author(author: Any) -> str:
    if not isinstance(author, str) or not author.strip() or len(author) > _MAX_AUTHOR:
        raise ScenarioInputError("invalid_author", f"the author is a principal name of 1-{_MAX_AUTHOR} characters")
    return author


def _not_found(kind: str) -> ScenarioInputError:
    return ScenarioInputError("not_found", f"no {kind} document with this id", status=404)


def _signed_error(kind: str) -> ScenarioInputError:
    return ScenarioInputError("note_signed", f"the {kind} document is signed and can no longer change", status=409)


def _conflict_error(kind: str) -> ScenarioInputError:
    return ScenarioInputError("version_conflict", f"the {kind} document has a newer version; reload and retry",
                              status=409)
