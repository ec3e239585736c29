"""Taking landed files into the encrypted raw zone, exactly once.

A file is identified by the SHA-256 of its content: the same file delivered
twice (or by two sensors) is stored once. The original path may itself be
identifying (``张三_CT.dcm``), so it is kept only encrypted (Vault transit);
ledger, metadata and logs refer to files by content hash.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from medllm_pipelines.lib.common.records import QuarantineRecord, Reconciliation
from medllm_pipelines.lib.common.warehouse import Warehouse
from medllm_pipelines.lib.ingest.landing import UNSUPPORTED, LandedFile
from medllm_pipelines.lib.ingest.sources import UNROUTED
from medllm_pipelines.lib.security.raw_zone import RawZone

STORED = "stored"
QUARANTINED = "quarantined"
LEDGER_SCHEMA = "audit"
LEDGER_TABLE = "file_ledger"

LEDGER_COLUMNS = [
    "content_sha256",
    "institution",
    "file_kind",
    "size_bytes",
    "status",
    "reason_code",
    "source_path_ciphertext",
    "landed_at",
    "dagster_run_id",
]


@dataclass
class IntakeOutcome:
    ledger_rows: list[dict[str, Any]] = field(default_factory=list)
    to_consume: list[Path] = field(default_factory=list)
    duplicates: int = 0
    files_in: int = 0
    bytes_stored: int = 0

    @property
    def stored(self) -> int:
        return sum(1 for r in self.ledger_rows if r["status"] == STORED)

    @property
    def quarantined(self) -> int:
        return sum(1 for r in self.ledger_rows if r["status"] == QUARANTINED)

    def reconciliation(self) -> Reconciliation:
        return Reconciliation(
            self.files_in, self.stored, self.quarantined, {"duplicate_delivery": self.duplicates}
        ).check()

    def ledger_frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.ledger_rows, columns=LEDGER_COLUMNS)

    def as_metadata(self) -> dict[str, Any]:
        """Files in, stored, quarantined and re-delivered (reconciled), and what was new, by kind and folder."""
        recon = self.reconciliation()
        new = self.ledger_frame()
        return {
            "files_in": recon.records_in,
            "files_stored": self.stored,
            "files_quarantined": self.quarantined,
            "duplicate_deliveries": self.duplicates,
            "reconciled": recon.balanced,
            "bytes_encrypted": self.bytes_stored,
            "new_files_by_kind": _counts(new, "file_kind"),
            "new_files_by_institution": _counts(new, "institution"),
        }


def _counts(frame: pd.DataFrame, column: str) -> dict[str, int]:
    counts = frame[column].fillna("<none>").astype(str).value_counts().sort_index()
    return {str(k): int(v) for k, v in counts.items()}


def _sha256_file(path: Path) -> tuple[str, bytes]:
    data = path.read_bytes()
    return hashlib.sha256(data).hexdigest(), data


def take_in(
    files: Iterable[LandedFile],
    raw_zone: RawZone,
    known_hashes: set[str],
    encrypt_text: Callable[[str], str],
    *,
    run_id: str,
    now: dt.datetime,
    registered: Collection[str] | None = None,
    progress: Callable[[int], None] | None = None,
) -> IntakeOutcome:
    """Encrypt new files into the raw zone; return ledger rows and files to consume."""
    outcome = IntakeOutcome()
    seen = set(known_hashes)
    for count, landed in enumerate(files, start=1):
        outcome.files_in += 1
        digest, content = _sha256_file(landed.path)
        outcome.to_consume.append(landed.path)
        if digest in seen:
            outcome.duplicates += 1
            continue
        seen.add(digest)
        raw_zone.put_object(digest, content)
        outcome.bytes_stored += len(content)
        reason = None
        if landed.institution is None:
            reason = "unknown_source"
        elif registered is not None and landed.institution not in registered:
            reason = "unregistered_source"
        elif landed.kind == UNSUPPORTED:
            reason = "unsupported_file_type"
        outcome.ledger_rows.append(
            {
                "content_sha256": digest,
                "institution": landed.institution,
                "file_kind": landed.kind,
                "size_bytes": len(content),
                "status": QUARANTINED if reason else STORED,
                "reason_code": reason,
                "source_path_ciphertext": encrypt_text(landed.relpath),
                "landed_at": now.isoformat(),
                "dagster_run_id": run_id,
            }
        )
        if progress:
            progress(count)
    return outcome


@dataclass
class Intake:
    """One run's intake over several institution partitions: an outcome each, one ledger append for all."""

    by_partition: dict[str, IntakeOutcome]

    def ledger_frame(self) -> pd.DataFrame:
        """Every new ledger row of the run (appended once, before anything is consumed)."""
        rows = [row for outcome in self.by_partition.values() for row in outcome.ledger_rows]
        return pd.DataFrame(rows, columns=LEDGER_COLUMNS)

    @property
    def files_in(self) -> int:
        return sum(outcome.files_in for outcome in self.by_partition.values())


def take_in_partitions(
    files_by_partition: Mapping[str, Sequence[LandedFile]],
    raw_zone: RawZone,
    known_hashes: set[str],
    encrypt_text: Callable[[str], str],
    *,
    run_id: str,
    now: dt.datetime,
    registered: Collection[str] | None = None,
    progress: Callable[[str, int], None] | None = None,
) -> Intake:
    """:func:`take_in` per partition, in order; content stored by an earlier partition of the run is a
    duplicate delivery in a later one (the same file sent to two folders is stored once)."""
    seen = set(known_hashes)
    by_partition: dict[str, IntakeOutcome] = {}
    for partition, files in files_by_partition.items():
        outcome = take_in(files, raw_zone, seen, encrypt_text, run_id=run_id, now=now, registered=registered,
                          progress=(lambda done, p=partition: progress(p, done)) if progress else None)
        seen.update(row["content_sha256"] for row in outcome.ledger_rows)
        by_partition[partition] = outcome
    return Intake(by_partition)


def ledger_of_partition(ledger: pd.DataFrame, partition: str, registered: Collection[str]) -> pd.DataFrame:
    """The ledger rows one institution partition answers for (``unrouted``: every folder not registered)."""
    if partition == UNROUTED:
        return ledger[~ledger["institution"].isin(list(registered))]
    return ledger[ledger["institution"].eq(partition)]


def ledger_quarantine(ledger: pd.DataFrame, asset: str) -> list[QuarantineRecord]:
    """Quarantine log rows for files refused at intake (no source folder, unknown type)."""
    reasons = {
        "unknown_source": "file is not inside a source-institution folder",
        "unregistered_source": "source folder is not a registered institution (no data agreement on record)",
        "unsupported_file_type": "file type is not an accepted feed (FHIR JSON/NDJSON, DICOM, JSONL)",
    }
    rows = ledger[ledger["status"] == QUARANTINED]
    return [
        QuarantineRecord("ingest", asset, r.institution, r.content_sha256, None, None, r.reason_code, reasons[r.reason_code])
        for r in rows.itertuples(index=False)
    ]


def consume(paths: Iterable[Path], landing_root: Path) -> int:
    """Remove taken-in files from the landing zone, and folders left empty."""
    removed = 0
    parents: set[Path] = set()
    for path in paths:
        try:
            path.unlink()
            removed += 1
            parents.add(path.parent)
        except FileNotFoundError:
            continue
    for parent in sorted(parents, key=lambda p: len(p.parts), reverse=True):
        current = parent
        while current != landing_root and landing_root in current.parents:
            try:
                current.rmdir()
            except OSError:
                break
            current = current.parent
    return removed


def read_ledger(warehouse: Warehouse) -> pd.DataFrame:
    """The file ledger (audit.file_ledger): one row per landed file, stored or quarantined."""
    if not warehouse.table_exists(LEDGER_SCHEMA, LEDGER_TABLE):
        return pd.DataFrame(columns=LEDGER_COLUMNS)
    return warehouse.read_table(LEDGER_SCHEMA, LEDGER_TABLE)


def stored_objects(warehouse: Warehouse, kinds: tuple[str, ...], institution: str | None = None) -> pd.DataFrame:
    """Ledger rows of stored (not quarantined) raw objects of the given kinds (and institution)."""
    ledger = read_ledger(warehouse)
    selected = ledger[(ledger["status"] == STORED) & ledger["file_kind"].isin(kinds)]
    if institution is not None:
        selected = selected[selected["institution"] == institution]
    return selected.sort_values("content_sha256").reset_index(drop=True)
