"""Rotation of each transit key with every holder rewrapped and counted (``medllm keys rotate``).

A rotation is complete only when it is proven: the envelopes under the key are
counted before and after (none lost), every one is at the new version, the
principals registry's sealed secrets all still open, and the warehouse's
ciphertext column holds as many values as before, each decrypting to its
original. Each workflow returns a :class:`KeyRotationOutcome` that says so
(``complete``) and what the operator reads; nothing in it names content.
Old key versions are never retired here (:func:`rotation.retire_old_versions`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medllm_pipelines.lib.common.warehouse import Warehouse
from medllm_pipelines.lib.security.audit import AuditLog
from medllm_pipelines.lib.security.rbac import PrincipalRegistry
from medllm_pipelines.lib.security.rotation import (
    envelope_census,
    rewrap_folder,
    rewrap_paths,
    rewrap_warehouse_column,
    rotate_and_rewrap,
)

__all__ = [
    "CiphertextColumn",
    "KeyRotationOutcome",
    "rotate_audit_key",
    "rotate_export_key",
    "rotate_raw_zone_key",
]


@dataclass(frozen=True)
class CiphertextColumn:
    """A warehouse column of transit ciphertexts under the raw-zone key (e.g. ``audit.file_ledger``)."""

    warehouse_url: str
    schema: str
    table: str
    column: str


@dataclass(frozen=True)
class KeyRotationOutcome:
    """One key's rotation: its counts (for the audit entry) and the lines shown to the operator."""

    key: str
    new_version: int
    complete: bool
    counts: dict[str, int]
    summary: tuple[str, ...]

    def as_metadata(self) -> dict[str, Any]:
        """The audit details of this key (counts only)."""
        return {"key": self.key, "new_version": self.new_version, **self.counts, "complete": self.complete}


def rotate_raw_zone_key(service: Any, *, raw_zone_dir: Path, registry: PrincipalRegistry,
                        ledger: CiphertextColumn) -> KeyRotationOutcome:
    """Rotate the raw-zone data key; rewrap the raw zone, the principals registry and the ledger column."""
    census_before = envelope_census([raw_zone_dir], service.key_ref)
    principals_before = registry.check_envelopes()
    report = rotate_and_rewrap(service, [raw_zone_dir], principals=registry)
    warehouse = Warehouse(ledger.warehouse_url)
    try:
        column = rewrap_warehouse_column(warehouse, ledger.schema, ledger.table, ledger.column, service)
    finally:
        warehouse.dispose()
    census_after = envelope_census([raw_zone_dir], service.key_ref)
    principals_after = registry.check_envelopes()
    all_current = census_after.all_at(report.new_version)
    complete = (report.complete and census_before.envelopes == census_after.envelopes and all_current
                and principals_before[0] == principals_after[0] and principals_after[0] == principals_after[1]
                and column.complete)
    summary = (
        f"{service.key_ref}: v{report.old_version} -> v{report.new_version}",
        f"  raw zone envelopes: {census_before.envelopes} before, {census_after.envelopes} after, "
        f"{report.rewrapped} rewrapped and verified, all at v{report.new_version}: {all_current}, "
        f"failed: {len(report.failed)}",
        f"  principals registry envelopes: {principals_before[0]} before, {principals_after[0]} after, "
        f"{principals_after[1]} open, {report.principals_rewrapped} rewrapped",
        f"  warehouse {column.table}.{ledger.column}: rows {column.rows_before} -> {column.rows_after}, "
        f"ciphertexts {column.ciphertexts_before} -> {column.ciphertexts_after}, {column.rewrapped} rewrapped, "
        f"{column.verified} decrypt to their original",
    )
    counts = {"envelopes_before": census_before.envelopes, "envelopes_after": census_after.envelopes,
              "rewrapped": report.rewrapped, "principal_envelopes": principals_after[0],
              "ledger_ciphertexts": column.ciphertexts_after}
    return KeyRotationOutcome(service.key_ref, report.new_version, complete, counts, summary)


def rotate_export_key(service: Any, *, exports_dir: Path, exported: Sequence[Path]) -> KeyRotationOutcome:
    """Rotate the export key; rewrap the exports folder and every export written elsewhere (the index)."""
    outside = [p for p in exported if exports_dir not in p.parents]
    holders = [exports_dir, *outside]
    before = envelope_census(holders, service.key_ref)
    old_version = service.key_info().latest_version
    new_version = service.rotate_key()
    reports = [rewrap_folder(exports_dir, service)] if exports_dir.exists() else []
    reports.append(rewrap_paths(outside, service, label="exports outside the exports folder"))
    after = envelope_census(holders, service.key_ref)
    failed = sum(len(r.failed) for r in reports)
    complete = not failed and before.envelopes == after.envelopes and after.all_at(new_version)
    summary = (
        f"{service.key_ref}: v{old_version} -> v{new_version}",
        f"  export envelopes: {before.envelopes} before, {after.envelopes} after, "
        f"{sum(r.rewrapped for r in reports)} rewrapped and verified, failed: {failed}",
    )
    counts = {"envelopes_before": before.envelopes, "envelopes_after": after.envelopes}
    return KeyRotationOutcome(service.key_ref, new_version, complete, counts, summary)


def rotate_audit_key(service: Any, key_name: str, audit: AuditLog) -> KeyRotationOutcome:
    """Rotate the audit log's HMAC key: nothing to rewrap, but the log must still verify afterwards."""
    old_version = service.key_info(key_name).latest_version
    new_version = service.rotate_key(key_name)
    result = audit.verify()  # MACs carry their key version: the old ones still verify
    key = f"{service.transit_mount}/{key_name}"
    summary = (f"{key}: v{old_version} -> v{new_version} (HMAC key: nothing to rewrap); "
               f"audit log still verifies: {result.ok}",)
    return KeyRotationOutcome(key, new_version, result.ok, {}, summary)
