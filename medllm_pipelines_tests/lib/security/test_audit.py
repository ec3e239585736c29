"""Hash-chained audit log: every kind of tampering is found and located."""

from __future__ import annotations

import datetime as dt
import itertools
import json
import multiprocessing
import os
import uuid
from pathlib import Path

import pytest

from medllm_pipelines.lib.security.audit import (
    GENESIS_HASH,
    AuditIdentifierError,
    AuditIntegrityError,
    AuditLog,
    LocalChainKey,
    TransitChainKey,
    entry_hash,
    read_entries,
    verify,
)
from medllm_pipelines.lib.security.vault_client import TransitKeyService
from medllm_pipelines.lib.services.openbao import BaoServer

KEY = LocalChainKey(b"k" * 32, key_ref="local/audit-test")
FIXED = dt.datetime(2026, 11, 28, 9, 30, tzinfo=dt.UTC)


def write_entries(log: AuditLog, n: int) -> None:
    for i in range(n):
        log.append(actor="alice", role="data_engineer", action="read_raw", resource=f"table:patients/{i}",
                   outcome="allowed", reason="role permitted", details={"rows": i})


def lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def rewrite(path: Path, new_lines: list[bytes]) -> None:
    path.write_bytes(b"".join(new_lines))


def rehash(raw: bytes, **changes: object) -> bytes:
    """An entry edited *and* its own hash recomputed (a careful attacker)."""
    fields = json.loads(raw)
    fields.update(changes)
    fields["hash"] = entry_hash(fields)
    return json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"


@pytest.fixture
def log(tmp_path: Path) -> AuditLog:
    audit = AuditLog(tmp_path / "audit.jsonl", clock=lambda: FIXED)
    write_entries(audit, 6)
    return audit


def test_entries_have_the_declared_fields_and_chain(log: AuditLog) -> None:
    entries = list(log.entries())
    assert [e.seq for e in entries] == list(range(6))
    assert entries[0].prev_hash == GENESIS_HASH
    assert all(b.prev_hash == a.hash for a, b in itertools.pairwise(entries))
    assert entries[0].time == "2026-11-28T09:30:00.000000Z"
    assert set(json.loads(lines(log.path)[0])) == {
        "seq", "time", "actor", "role", "action", "resource", "outcome", "reason", "details", "prev_hash", "hash",
    }
    result = log.verify()
    assert result.ok and result.entries == 6 and result.last_seq == 5 and result.first_bad_seq is None
    assert oct(log.path.stat().st_mode & 0o777) == "0o600"


def test_edited_entry_is_named(log: AuditLog) -> None:
    content = lines(log.path)
    content[3] = content[3].replace(b'"outcome":"allowed"', b'"outcome":"denied"')
    rewrite(log.path, content)
    result = verify(log.path)
    assert not result.ok and result.first_bad_seq == 3 and "edited" in result.problem


def test_edited_entry_with_recomputed_hash_breaks_the_next_link(log: AuditLog) -> None:
    content = lines(log.path)
    content[2] = rehash(content[2], actor="mallory")
    rewrite(log.path, content)
    result = verify(log.path)
    assert not result.ok and result.first_bad_seq == 3 and "does not chain" in result.problem


def test_deleted_entry_is_found(log: AuditLog) -> None:
    content = lines(log.path)
    del content[2]
    rewrite(log.path, content)
    result = verify(log.path)
    assert not result.ok and result.first_bad_seq == 2 and "deleted" in result.problem


def test_reordered_entries_are_found(log: AuditLog) -> None:
    content = lines(log.path)
    content[1], content[2] = content[2], content[1]
    rewrite(log.path, content)
    result = verify(log.path)
    assert not result.ok and result.first_bad_seq == 1


def test_inserted_entry_is_found(log: AuditLog) -> None:
    content = lines(log.path)
    forged = rehash(content[2], seq=3, prev_hash=json.loads(content[2])["hash"], actor="mallory")
    content.insert(3, forged)
    rewrite(log.path, content)
    result = verify(log.path)
    assert not result.ok and result.first_bad_seq == 4


def test_truncated_tail_is_found_through_the_head(log: AuditLog) -> None:
    rewrite(log.path, lines(log.path)[:4])
    result = verify(log.path)
    assert not result.ok and result.first_bad_seq == 4 and "cut from the end" in result.problem
    with pytest.raises(AuditIntegrityError, match="does not match its head"):
        write_entries(log, 1)


def test_entry_cut_mid_write_is_found(log: AuditLog) -> None:
    data = log.path.read_bytes()
    log.path.write_bytes(data[:-20])
    result = verify(log.path)
    assert not result.ok and result.first_bad_seq == 5 and "cut short" in result.problem
    with pytest.raises(AuditIntegrityError, match="partial entry"):
        write_entries(log, 1)


def test_missing_head_is_reported(log: AuditLog) -> None:
    log.head_path.unlink()
    result = verify(log.path)
    assert not result.ok and "head file" in result.problem


def test_whole_chain_rewrite_is_caught_only_with_the_key(tmp_path: Path) -> None:
    keyed = AuditLog(tmp_path / "keyed.jsonl", chain_key=KEY, checkpoint_every=3)
    write_entries(keyed, 7)
    assert keyed.verify().ok and keyed.verify().checkpoints_verified == 2

    # The attacker edits entry 1 and re-chains everything after it, head included.
    content = lines(keyed.path)
    previous = json.loads(content[0])["hash"]
    forged = []
    for index, raw in enumerate(content):
        if index == 0:
            forged.append(raw)
            continue
        changes: dict[str, object] = {"prev_hash": previous}
        fields = json.loads(raw)
        if fields["action"] == "audit.checkpoint":  # re-point it; the MAC cannot be redone without the key
            changes["details"] = {**fields["details"], "covers_hash": previous}
        if index == 1:
            changes["actor"] = "mallory"
        new = rehash(raw, **changes)
        previous = json.loads(new)["hash"]
        forged.append(new)
    rewrite(keyed.path, forged)
    keyed.head_path.write_text(json.dumps({"seq": len(forged) - 1, "hash": previous, "mac": "0" * 64,
                                           "key_ref": KEY.key_ref, "key_version": None}))

    assert verify(keyed.path).ok  # without the key the rewrite is self-consistent
    result = verify(keyed.path, chain_key=KEY, checkpoint_every=3)
    assert not result.ok and result.first_bad_seq == 3 and "MAC" in result.problem


def test_stripping_checkpoints_is_a_gap(tmp_path: Path) -> None:
    keyed = AuditLog(tmp_path / "keyed.jsonl", chain_key=KEY, checkpoint_every=2)
    write_entries(keyed, 5)
    content = [json.loads(raw) for raw in lines(keyed.path)]
    kept = [e for e in content if e["action"] != "audit.checkpoint"]
    previous, forged = "0" * 64, []
    for seq, fields in enumerate(kept):
        fields.update(seq=seq, prev_hash=previous)
        fields["hash"] = entry_hash(fields)
        previous = fields["hash"]
        forged.append(json.dumps(fields, sort_keys=True, separators=(",", ":")).encode() + b"\n")
    rewrite(keyed.path, forged)
    result = verify(keyed.path, chain_key=KEY, checkpoint_every=2)
    assert not result.ok and result.first_bad_seq == 2 and "checkpoint" in result.problem


def test_head_mac_protects_the_tail(tmp_path: Path) -> None:
    keyed = AuditLog(tmp_path / "keyed.jsonl", chain_key=KEY)
    write_entries(keyed, 3)
    assert keyed.verify().head_verified
    # Cut the last entry and write a plausible head for the shorter log without the key.
    content = lines(keyed.path)[:2]
    rewrite(keyed.path, content)
    keyed.head_path.write_text(json.dumps({"seq": 1, "hash": json.loads(content[-1])["hash"], "mac": "f" * 64}))
    result = keyed.verify()
    assert not result.ok and "head MAC" in result.problem


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("details", {"mrn": "RV00012345"}),
        ("details", {"note": "zhang.san@example.com"}),
        ("details", {"who": "42010219900101123X"}),
        ("details", {"contact": "13912345678"}),
        ("details", {"nested": ["00412345"]}),
        ("resource", "patient:42010219900101123X"),
        ("reason", "called 13912345678"),
    ],
    ids=["mrn-key", "email", "resident-id", "phone", "digits", "resource", "reason"],
)
def test_identifiers_are_refused_not_written(tmp_path: Path, field: str, value: object) -> None:
    audit = AuditLog(tmp_path / "audit.jsonl")
    entry = {"actor": "alice", "role": "auditor", "action": "read_audit", "resource": "log", "outcome": "allowed",
             "reason": "", "details": {}}
    entry[field] = value
    with pytest.raises(AuditIdentifierError):
        audit.append(**entry)
    assert not audit.path.exists()


def test_digests_and_pseudonyms_are_not_mistaken_for_identifiers(tmp_path: Path) -> None:
    audit = AuditLog(tmp_path / "audit.jsonl")
    digest = "1391234567842010219900101123" + "a" * 36  # digit runs inside a hex digest
    audit.append(actor="alice", role="auditor", action="read_audit", resource="pseudonym:p_139123456784201021990aaa",
                 outcome="allowed", details={"sha256": digest, "rows": 12345678})
    assert audit.verify().ok


def test_transit_checkpoints_survive_a_key_rotation(openbao_server: BaoServer, tmp_path: Path) -> None:
    name = f"test-audit-{uuid.uuid4().hex[:8]}"
    service = TransitKeyService(openbao_server.addr, openbao_server.token, pseudonym_key_name=name)
    service.ensure_transit({name: "hmac"})
    keyed = AuditLog(tmp_path / "audit.jsonl", chain_key=TransitChainKey(service), checkpoint_every=2)
    write_entries(keyed, 4)
    service.rotate_key(name)
    write_entries(keyed, 2)
    result = keyed.verify()
    assert result.ok and result.checkpoints_verified == 3 and result.head_verified
    versions = [e.details["key_version"] for e in keyed.entries() if e.action == "audit.checkpoint"]
    assert versions == [1, 1, 2]
    assert not verify(keyed.path, chain_key=KEY).ok  # another key does not verify


def test_checkpoints_cannot_be_appended_by_callers(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="written by the log itself"):
        AuditLog(tmp_path / "a.jsonl").append(actor="system", role="system", action="audit.checkpoint",
                                              resource="a.jsonl", outcome="recorded")


def _append_many(path: str, worker: int, count: int) -> None:
    audit = AuditLog(path)
    for i in range(count):
        audit.append(actor=f"worker{worker}", role="data_engineer", action="run_pipeline", resource=f"run/{i}",
                     outcome="succeeded")


def test_concurrent_appenders_keep_one_valid_chain(tmp_path: Path) -> None:
    path = str(tmp_path / "audit.jsonl")
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_append_many, args=(path, w, 25)) for w in range(4)]
    for process in workers:
        process.start()
    for process in workers:
        process.join(timeout=60)
        assert process.exitcode == 0
    result = verify(path)
    assert result.ok and result.entries == 100
    per_worker = [e.actor for e in read_entries(path)]
    assert {per_worker.count(f"worker{w}") for w in range(4)} == {25}


def test_append_is_durable_and_uses_o_append(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    flags: list[int] = []
    real_open = os.open

    def spying_open(path, flag, *args, **kwargs):  # type: ignore[no-untyped-def]
        if str(path).endswith("audit.jsonl"):
            flags.append(flag)
        return real_open(path, flag, *args, **kwargs)

    synced: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "open", spying_open)
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd))[1])
    AuditLog(tmp_path / "audit.jsonl").append(actor="alice", role="auditor", action="read_audit", resource="log",
                                              outcome="allowed")
    assert flags and all(f & os.O_APPEND for f in flags)
    assert synced


def test_the_platform_log_uses_the_audit_key_the_openbao_setup_creates(openbao_server: BaoServer,
                                                                       tmp_path: Path) -> None:
    from medllm_pipelines.lib.security.audit import (
        AUDIT_CHECKPOINT_EVERY,
        transit_audit_log,
    )

    service = TransitKeyService(openbao_server.addr, openbao_server.token)
    assert service.key_info("medllm-audit").key_type == "hmac"  # created by start_dev_server with the others
    log = transit_audit_log(tmp_path / "audit.jsonl", service)
    assert log.chain_key is not None and log.chain_key.key_ref == "transit/medllm-audit"
    write_entries(log, AUDIT_CHECKPOINT_EVERY + 1)
    result = log.verify()
    assert result.ok and result.checkpoints_verified == 1 and result.head_verified
    assert not verify(log.path, chain_key=TransitChainKey(service)).ok  # the pseudonym key is not the audit key


class FlakyChainKey:
    """The audit chain key with Vault going away and coming back."""

    key_ref = KEY.key_ref

    def __init__(self) -> None:
        self.down = False

    def mac(self, data: bytes, *, key_version: int | None = None) -> tuple[str, int | None]:
        if self.down:
            from medllm_pipelines.lib.security.errors import VaultUnavailableError

            raise VaultUnavailableError("cannot connect to Vault to compute HMAC")
        return KEY.mac(data, key_version=key_version)


@pytest.mark.parametrize("entries_before", [1, 2])  # the failing append writes a checkpoint, or only the head
def test_a_vault_outage_leaves_log_and_head_as_they_were(tmp_path: Path, entries_before: int) -> None:
    key = FlakyChainKey()
    audit = AuditLog(tmp_path / "audit.jsonl", chain_key=key, checkpoint_every=3, clock=lambda: FIXED)
    write_entries(audit, entries_before)
    log_before, head_before = audit.path.read_bytes(), audit.head_path.read_bytes()
    key.down = True
    with pytest.raises(Exception, match="Vault"):
        write_entries(audit, 1)
    assert audit.path.read_bytes() == log_before and audit.head_path.read_bytes() == head_before
    key.down = False  # Vault is back: the log was never left half-written, so appending simply continues
    write_entries(audit, 4)
    assert audit.verify().ok
