"""Tamper-evident audit log of data access (clause 5.4.2.1, row S6).

An append-only JSON Lines file. Each entry carries the SHA-256 of the entry
before it (``prev_hash``) and its own hash over its canonical JSON, so editing,
deleting, reordering or inserting an entry breaks the chain at a position
:func:`verify` names. A hash chain alone cannot stop someone with write access
from rewriting *every* entry after the one they changed, nor notice entries cut
from the end; two keyed anchors close those gaps:

* **checkpoints**: every ``checkpoint_every`` entries a ``audit.checkpoint``
  entry carries an HMAC of the chain head, keyed by a key the writer cannot
  read (Vault transit ``hmac``; :class:`TransitChainKey`). A rewritten chain
  has no valid checkpoints, and removing them leaves a gap that verify flags.
* **head file** (``<log>.head``): seq and hash of the last entry, rewritten
  atomically after every append and MACed with the same key. Cutting entries
  off the end leaves the log shorter than its head.

Rolling back *both* files to an older consistent state is undetectable
locally; ship the head to storage the writer cannot rewrite (asset metadata,
WORM bucket) when that matters.

Entries must not carry patient identifiers: ``details``, ``resource`` and
``reason`` are screened for identifier-like keys and values (see
:func:`check_no_identifiers`) and an entry that fails is refused, not redacted.

Writes: ``O_APPEND`` + one ``write`` per line + ``fsync``, under an exclusive
``flock`` on ``<log>.lock`` so concurrent appenders (threads or processes)
serialise; the head is replaced via temp file + rename.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import os
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medllm_pipelines.lib.common.files import exclusive_lock, write_private_atomic
from medllm_pipelines.lib.security.audit_keys import ChainKey, LocalChainKey, TransitChainKey
from medllm_pipelines.lib.security.audit_screen import AuditIdentifierError, check_no_identifiers
from medllm_pipelines.lib.security.errors import SecurityError

__all__ = [
    "AUDIT_CHECKPOINT_EVERY",
    "CHECKPOINT_ACTION",
    "GENESIS_HASH",
    "OUTCOMES",
    "AuditEntry",
    "AuditIdentifierError",
    "AuditIntegrityError",
    "AuditLog",
    "ChainKey",
    "LocalChainKey",
    "TransitChainKey",
    "VerifyResult",
    "append",
    "check_no_identifiers",
    "entry_hash",
    "read_entries",
    "transit_audit_log",
    "verify",
]

FORMAT_TAG = b"medllm-audit-v1\n"
GENESIS_HASH = "0" * 64
CHECKPOINT_ACTION = "audit.checkpoint"
OUTCOMES = frozenset({"allowed", "denied", "succeeded", "failed", "recorded"})
ENTRY_FIELDS = (
    "seq", "time", "actor", "role", "action", "resource", "outcome", "reason", "details", "prev_hash", "hash",
)
MAX_ENTRY_BYTES = 16 * 1024
_NAME = re.compile(r"^[A-Za-z0-9_.:@/-]{1,128}$")

class AuditIntegrityError(SecurityError):
    """The log or its head is damaged or was tampered with; appending stops."""


# One checkpoint per this many entries in the platform's log; writers and
# `medllm audit verify` must agree on it (a longer gap reads as tampering).
AUDIT_CHECKPOINT_EVERY = 64


def transit_audit_log(path: str | os.PathLike[str], service: Any, *, key_name: str | None = None) -> AuditLog:
    """The platform's audit log: checkpoints and head MAC'd by the transit audit key.

    ``service`` is a ``TransitKeyService``; ``key_name`` defaults to
    ``vault_client.DEFAULT_AUDIT_KEY_NAME``. Every append needs Vault (the head
    MAC), so with Vault down nothing is audited and callers must fail closed.
    """
    from medllm_pipelines.lib.security.vault_client import DEFAULT_AUDIT_KEY_NAME

    return AuditLog(path, chain_key=TransitChainKey(service, key_name=key_name or DEFAULT_AUDIT_KEY_NAME),
                    checkpoint_every=AUDIT_CHECKPOINT_EVERY)


@dataclass(frozen=True)
class AuditEntry:
    seq: int
    time: str
    actor: str
    role: str
    action: str
    resource: str
    outcome: str
    reason: str
    details: dict[str, Any]
    prev_hash: str
    hash: str

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in ENTRY_FIELDS}


@dataclass
class VerifyResult:
    """Outcome of :func:`verify`; ``first_bad_seq`` is the first seq that fails."""

    ok: bool
    entries: int
    last_seq: int | None
    last_hash: str
    first_bad_seq: int | None = None
    problem: str | None = None
    checkpoints_verified: int = 0
    checkpoints_unverified: int = 0
    head_verified: bool = False

    def __bool__(self) -> bool:
        return self.ok

    def as_metadata(self) -> dict[str, Any]:
        """Plain values for asset metadata (no entry content)."""
        return {
            "audit_ok": self.ok,
            "audit_entries": self.entries,
            "audit_last_seq": self.last_seq if self.last_seq is not None else -1,
            "audit_last_hash": self.last_hash,
            "audit_first_bad_seq": self.first_bad_seq if self.first_bad_seq is not None else -1,
            "audit_problem": self.problem or "",
            "audit_checkpoints_verified": self.checkpoints_verified,
        }


# --- canonical form ---------------------------------------------------------------
def _canonical(fields: Mapping[str, Any]) -> bytes:
    return json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode(
        "utf-8"
    )


def entry_hash(fields: Mapping[str, Any]) -> str:
    """SHA-256 over the canonical JSON of every field but ``hash`` (``prev_hash`` included)."""
    body = {k: v for k, v in fields.items() if k != "hash"}
    return hashlib.sha256(FORMAT_TAG + _canonical(body)).hexdigest()


def _checkpoint_message(seq: int, chain_hash: str) -> bytes:
    return f"medllm-audit-checkpoint-v1:{seq}:{chain_hash}".encode("ascii")


def _head_message(seq: int, chain_hash: str) -> bytes:
    return f"medllm-audit-head-v1:{seq}:{chain_hash}".encode("ascii")


def _utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


# --- the log ----------------------------------------------------------------------
class AuditLog:
    """One hash-chained JSONL audit log with optional keyed checkpoints.

    Args:
        path: the ``.jsonl`` file; ``<path>.head`` and ``<path>.lock`` live beside it.
        chain_key: MAC key for checkpoints and the head (:class:`TransitChainKey`
            in production). Without it the chain detects edits but not a full rewrite.
        checkpoint_every: add a checkpoint after this many entries (needs ``chain_key``).
        clock: returns the current UTC time (tests pin it).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        chain_key: ChainKey | None = None,
        checkpoint_every: int | None = None,
        clock: Callable[[], dt.datetime] = _utc_now,
    ) -> None:
        if checkpoint_every is not None:
            if checkpoint_every < 1:
                raise ValueError("checkpoint_every must be at least 1")
            if chain_key is None:
                raise ValueError("checkpoints need a chain_key (e.g. TransitChainKey)")
        self.path = Path(path)
        self.head_path = self.path.with_name(self.path.name + ".head")
        self.lock_path = self.path.with_name(self.path.name + ".lock")
        self.chain_key = chain_key
        self.checkpoint_every = checkpoint_every
        self._clock = clock

    def __repr__(self) -> str:
        return f"AuditLog({str(self.path)!r}, checkpoint_every={self.checkpoint_every})"

    def append(
        self,
        *,
        actor: str,
        role: str,
        action: str,
        resource: str,
        outcome: str,
        reason: str = "",
        details: Mapping[str, Any] | None = None,
    ) -> AuditEntry:
        """Append one entry (durably, before returning) and return it.

        Raises AuditIdentifierError for identifier-like content and
        AuditIntegrityError if the log no longer matches its head (it was
        edited or truncated): the log is then frozen until an operator looks.
        """
        for name, value in (("actor", actor), ("role", role), ("action", action)):
            if not isinstance(value, str) or not _NAME.fullmatch(value):
                raise ValueError(f"audit {name} must match {_NAME.pattern}, got {value!r}")
        if action == CHECKPOINT_ACTION:
            raise ValueError(f"{CHECKPOINT_ACTION!r} entries are written by the log itself")
        if outcome not in OUTCOMES:
            raise ValueError(f"audit outcome must be one of {sorted(OUTCOMES)}, got {outcome!r}")
        if not isinstance(resource, str) or not isinstance(reason, str):
            raise ValueError("audit resource and reason must be strings")
        payload = dict(details or {})
        check_no_identifiers("resource", resource)
        check_no_identifiers("reason", reason)
        check_no_identifiers("details", payload)
        with exclusive_lock(self.lock_path):
            last_seq, last_hash, since_checkpoint = self._tail_state()
            # Everything that needs the chain key (Vault) is computed before a byte is written: a Vault
            # outage then leaves the log and its head as they were, never an entry without its head.
            entry, line = self._build_entry(last_seq + 1, last_hash, actor, role, action, resource, outcome,
                                            reason, payload)
            lines, last, since_checkpoint = [line], entry, since_checkpoint + 1
            if self.checkpoint_every and since_checkpoint >= self.checkpoint_every:
                last, checkpoint_line = self._build_checkpoint(entry)
                lines.append(checkpoint_line)
                since_checkpoint = 0
            head = self._head_bytes(last.seq, last.hash, since_checkpoint)
            self._append_lines(lines)
            write_private_atomic(self.head_path, head)
        return entry

    def append_many(self, entries: Sequence[Mapping[str, Any]]) -> list[AuditEntry]:
        """Append several entries (each the keyword arguments of :meth:`append`) under one lock, one head MAC and
        one fsync: what a busy service needs (one Vault round trip per batch, not per request).

        Every entry is checked before anything is written; a bad one refuses the whole batch.
        """
        if not entries:
            return []
        for entry in entries:
            for name in ("actor", "role", "action"):
                if not isinstance(entry.get(name), str) or not _NAME.fullmatch(entry[name]):
                    raise ValueError(f"audit {name} must match {_NAME.pattern}, got {entry.get(name)!r}")
            if entry["action"] == CHECKPOINT_ACTION or entry.get("outcome") not in OUTCOMES:
                raise ValueError("audit batch holds a checkpoint action or an unknown outcome")
            check_no_identifiers("resource", str(entry.get("resource", "-")))
            check_no_identifiers("reason", str(entry.get("reason", "")))
            check_no_identifiers("details", dict(entry.get("details") or {}))
        with exclusive_lock(self.lock_path):
            last_seq, last_hash, since_checkpoint = self._tail_state()
            lines: list[bytes] = []
            written: list[AuditEntry] = []
            last: AuditEntry | None = None
            for item in entries:
                seq = (last.seq if last else last_seq) + 1
                prev = last.hash if last else last_hash
                entry, line = self._build_entry(seq, prev, item["actor"], item["role"], item["action"],
                                                str(item.get("resource", "-")), item["outcome"],
                                                str(item.get("reason", "")), dict(item.get("details") or {}))
                lines.append(line)
                written.append(entry)
                last, since_checkpoint = entry, since_checkpoint + 1
                if self.checkpoint_every and since_checkpoint >= self.checkpoint_every:
                    last, checkpoint_line = self._build_checkpoint(entry)
                    lines.append(checkpoint_line)
                    since_checkpoint = 0
            assert last is not None
            head = self._head_bytes(last.seq, last.hash, since_checkpoint)
            self._append_lines(lines)
            write_private_atomic(self.head_path, head)
        return written

    def verify(self) -> VerifyResult:
        return verify(self.path, chain_key=self.chain_key, checkpoint_every=self.checkpoint_every)

    def entries(self) -> Iterator[AuditEntry]:
        return read_entries(self.path)

    # --- internals ------------------------------------------------------------------
    def _build_entry(
        self, seq: int, prev_hash: str, actor: str, role: str, action: str, resource: str, outcome: str,
        reason: str, details: dict[str, Any],
    ) -> tuple[AuditEntry, bytes]:
        fields: dict[str, Any] = {
            "seq": seq,
            "time": self._clock().astimezone(dt.UTC).isoformat(timespec="microseconds").replace("+00:00", "Z"),
            "actor": actor,
            "role": role,
            "action": action,
            "resource": resource,
            "outcome": outcome,
            "reason": reason,
            "details": details,
            "prev_hash": prev_hash,
        }
        fields["hash"] = entry_hash(fields)
        line = _canonical(fields) + b"\n"
        if len(line) > MAX_ENTRY_BYTES:
            raise ValueError(f"audit entry of {len(line)} bytes exceeds {MAX_ENTRY_BYTES}; keep details small")
        return AuditEntry(**fields), line

    def _append_lines(self, lines: list[bytes]) -> None:
        """One write and one fsync for the entry and its checkpoint: both land or the log needs repair."""
        data = b"".join(lines)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            written = os.write(fd, data)
            if written != len(data):
                raise AuditIntegrityError("short write to the audit log (disk full?); the log needs repair")
            os.fsync(fd)
        finally:
            os.close(fd)

    def _build_checkpoint(self, covered: AuditEntry) -> tuple[AuditEntry, bytes]:
        assert self.chain_key is not None
        mac, version = self.chain_key.mac(_checkpoint_message(covered.seq, covered.hash))
        details = {"covers_seq": covered.seq, "covers_hash": covered.hash, "mac": mac,
                   "key_ref": self.chain_key.key_ref, "key_version": version}
        return self._build_entry(covered.seq + 1, covered.hash, "system", "system", CHECKPOINT_ACTION,
                                 self.path.name, "recorded", "periodic keyed checkpoint", details)

    def _head_bytes(self, seq: int, chain_hash: str, since_checkpoint: int) -> bytes:
        # since_checkpoint only paces checkpoints; verify re-derives it from the log.
        head: dict[str, Any] = {"seq": seq, "hash": chain_hash, "since_checkpoint": since_checkpoint}
        if self.chain_key is not None:
            mac, version = self.chain_key.mac(_head_message(seq, chain_hash))
            head.update(mac=mac, key_ref=self.chain_key.key_ref, key_version=version)
        return _canonical(head) + b"\n"

    def _tail_state(self) -> tuple[int, str, int]:
        """(seq, hash) of the last entry, checked against the head file, and entries since a checkpoint."""
        head = _read_head(self.head_path)
        if not self.path.exists() or self.path.stat().st_size == 0:
            if head is not None:
                raise AuditIntegrityError(
                    f"audit log {self.path.name} is missing or empty but its head records seq {head.get('seq')}: "
                    "entries were removed; appending is refused until an operator investigates"
                )
            return -1, GENESIS_HASH, 0
        last_line = _last_line(self.path)
        try:
            last = json.loads(last_line)
            seq, chain_hash = int(last["seq"]), str(last["hash"])
        except (ValueError, KeyError, TypeError):
            raise AuditIntegrityError(
                f"audit log {self.path.name} ends with a damaged entry; run `verify` before appending"
            ) from None
        if entry_hash(last) != chain_hash:
            raise AuditIntegrityError(f"audit log {self.path.name}: last entry (seq {seq}) fails its hash")
        if head is None or head.get("seq") != seq or head.get("hash") != chain_hash:
            raise AuditIntegrityError(
                f"audit log {self.path.name} does not match its head (log ends at seq {seq}, head says "
                f"{None if head is None else head.get('seq')}); appending is refused until an operator investigates"
            )
        since = head.get("since_checkpoint", 0)
        return seq, chain_hash, since if isinstance(since, int) and since >= 0 else 0


def append(path: str | os.PathLike[str], *, chain_key: ChainKey | None = None,
           checkpoint_every: int | None = None, **entry: Any) -> AuditEntry:
    """One-shot :meth:`AuditLog.append` (see there for the entry fields)."""
    return AuditLog(path, chain_key=chain_key, checkpoint_every=checkpoint_every).append(**entry)


def read_entries(path: str | os.PathLike[str]) -> Iterator[AuditEntry]:
    """Entries as written, without verifying them (use :func:`verify` for that)."""
    with open(path, "rb") as handle:
        for line in handle:
            if line.strip():
                fields = json.loads(line)
                yield AuditEntry(**{name: fields[name] for name in ENTRY_FIELDS})


# --- verification -----------------------------------------------------------------
def verify(
    path: str | os.PathLike[str],
    *,
    chain_key: ChainKey | None = None,
    checkpoint_every: int | None = None,
    require_head: bool = True,
) -> VerifyResult:
    """Check the whole chain, the checkpoints and the head; stop at the first fault.

    Detects an edited, deleted, reordered, inserted or appended-by-hand entry
    (the chain breaks there), a truncated tail (the head is ahead of the log),
    and, with ``chain_key``, a chain rewritten from some point on (its
    checkpoint MACs and the head MAC fail) or stripped of checkpoints (a gap
    longer than ``checkpoint_every``).
    """
    path = Path(path)
    head_path = path.with_name(path.name + ".head")
    result = VerifyResult(ok=True, entries=0, last_seq=None, last_hash=GENESIS_HASH)

    def fail(seq: int | None, problem: str) -> VerifyResult:
        result.ok, result.first_bad_seq, result.problem = False, seq, problem
        return result

    expected_seq, prev_hash = 0, GENESIS_HASH
    since_checkpoint = 0
    if path.exists():
        with open(path, "rb") as handle:
            for raw in handle:
                if not raw.endswith(b"\n"):
                    return fail(expected_seq, f"entry {expected_seq} is cut short (truncated mid-write or by hand)")
                try:
                    fields = json.loads(raw)
                except ValueError:
                    return fail(expected_seq, f"entry {expected_seq} is not valid JSON")
                if not isinstance(fields, dict) or set(fields) != set(ENTRY_FIELDS):
                    return fail(expected_seq, f"entry {expected_seq} has missing or unexpected fields")
                seq = fields["seq"]
                if seq != expected_seq:
                    return fail(
                        expected_seq,
                        f"expected seq {expected_seq} but found {seq!r}: an entry was deleted, inserted or reordered",
                    )
                if entry_hash(fields) != fields["hash"]:
                    return fail(seq, f"entry {seq} does not match its hash: it was edited")
                if fields["prev_hash"] != prev_hash:
                    return fail(
                        seq, f"entry {seq} does not chain to entry {seq - 1}: an entry before it was edited, "
                        "deleted or replaced"
                    )
                if fields["action"] == CHECKPOINT_ACTION and fields["actor"] == "system":
                    problem = _check_checkpoint(fields, prev_hash, chain_key)
                    if problem:
                        return fail(seq, problem)
                    if chain_key is None:
                        result.checkpoints_unverified += 1
                    else:
                        result.checkpoints_verified += 1
                    since_checkpoint = 0
                else:
                    since_checkpoint += 1
                    if checkpoint_every and since_checkpoint > checkpoint_every:
                        return fail(seq, f"no keyed checkpoint within {checkpoint_every} entries before entry {seq}: "
                                    "checkpoints were removed or the chain was rewritten")
                prev_hash, expected_seq = fields["hash"], expected_seq + 1
                result.entries += 1
    result.last_seq = expected_seq - 1 if expected_seq else None
    result.last_hash = prev_hash

    head = _read_head(head_path) if head_path.exists() else None
    if head_path.exists() and head is None:
        return fail(None, "the head file is damaged")
    if head is None:
        if result.entries and require_head:
            return fail(None, f"the head file {head_path.name} is missing, so truncation cannot be ruled out")
        return result
    head_seq = head.get("seq")
    if not isinstance(head_seq, int):
        return fail(None, "the head file is damaged")
    if head_seq > expected_seq - 1:
        return fail(expected_seq, f"the log ends at seq {expected_seq - 1} but its head records seq {head_seq}: "
                    "entries were cut from the end")
    if head_seq < expected_seq - 1:
        return fail(head_seq + 1, f"entries after seq {head_seq} were added without updating the head")
    if head.get("hash") != prev_hash:
        return fail(head_seq, f"entry {head_seq} differs from the one the head recorded: the chain was rewritten")
    if chain_key is not None:
        if "mac" not in head:
            return fail(None, "the head carries no MAC although a chain key is configured")
        expected, _ = chain_key.mac(_head_message(head_seq, prev_hash), key_version=head.get("key_version"))
        if not hmac.compare_digest(str(head["mac"]), expected):
            return fail(head_seq, "the head MAC does not verify: the log and its head were rewritten")
        result.head_verified = True
    return result


def _check_checkpoint(fields: Mapping[str, Any], prev_hash: str, chain_key: ChainKey | None) -> str | None:
    details = fields["details"]
    seq = fields["seq"]
    if not isinstance(details, dict) or details.get("covers_seq") != seq - 1 or details.get("covers_hash") != prev_hash:
        return f"checkpoint {seq} does not cover the entry before it"
    if chain_key is None:
        return None
    if details.get("key_ref") != chain_key.key_ref:
        return f"checkpoint {seq} was made with key {details.get('key_ref')!r}, not {chain_key.key_ref!r}"
    expected, _ = chain_key.mac(_checkpoint_message(seq - 1, prev_hash), key_version=details.get("key_version"))
    if not hmac.compare_digest(str(details.get("mac")), expected):
        return f"checkpoint {seq} MAC does not verify: the chain up to it was rewritten"
    return None


# --- file helpers -----------------------------------------------------------------
def _read_head(path: Path) -> dict[str, Any] | None:
    try:
        head = json.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except ValueError:
        raise AuditIntegrityError(f"audit head {path.name} is damaged") from None
    return head if isinstance(head, dict) else None


def _last_line(path: Path, block: int = 8192) -> bytes:
    """The last complete line (refusing a file whose last line is cut short)."""
    with open(path, "rb") as handle:
        handle.seek(0, os.SEEK_END)
        end = handle.tell()
        handle.seek(end - 1)
        if handle.read(1) != b"\n":
            raise AuditIntegrityError(f"audit log {path.name} ends with a partial entry; run `verify`")
        data = b""
        position = end
        while position > 0:
            step = min(block, position)
            position -= step
            handle.seek(position)
            data = handle.read(step) + data
            if data.count(b"\n") >= 2 or position == 0:
                break
        return data.rstrip(b"\n").rsplit(b"\n", 1)[-1]
