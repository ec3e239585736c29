"""Key rotation workflows against a real OpenBao: complete only when every holder is rewrapped and counted."""

from __future__ import annotations

import uuid
from pathlib import Path

import pandas as pd
import pytest

from medllm_pipelines.lib.common.warehouse import Warehouse
from medllm_pipelines.lib.security.audit import transit_audit_log
from medllm_pipelines.lib.security.envelope import decrypt_file_bytes, encrypt_file, read_header
from medllm_pipelines.lib.security.key_rotation import (
    CiphertextColumn,
    rotate_audit_key,
    rotate_export_key,
    rotate_raw_zone_key,
)
from medllm_pipelines.lib.security.raw_zone import RawZone
from medllm_pipelines.lib.security.rbac import PrincipalRegistry
from medllm_pipelines.lib.security.vault_client import DATA_KEY_TYPE, PSEUDONYM_KEY_TYPE, TransitKeyService
from medllm_pipelines.lib.services.openbao import BaoServer

PATIENTS = pd.DataFrame({"mrn": ["HZ00412345"], "age": [61]})
PATH = "hzsf/fhir/bundles/bundle-1.json"


@pytest.fixture
def service(openbao_server: BaoServer) -> TransitKeyService:
    """A data key of its own: these tests rotate it."""
    name = f"test-key-rotation-{uuid.uuid4().hex[:8]}"
    service = TransitKeyService(openbao_server.addr, openbao_server.token, data_key_name=name)
    service.ensure_transit({name: DATA_KEY_TYPE})
    return service


def _version(path: Path) -> str:
    with path.open("rb") as handle:
        return read_header(handle).wrapped_key.split(":")[1]


def _raw_zone_world(tmp_path: Path, service: TransitKeyService) -> tuple[Path, PrincipalRegistry, CiphertextColumn]:
    zone_dir = tmp_path / "raw_zone"
    zone = RawZone(zone_dir, service)
    zone.write_table("patients", PATIENTS)
    zone.put_object("ab" * 32, b"landed bytes")
    registry = PrincipalRegistry(tmp_path / "principals.json", service)
    registry.add_principal("ada", "admin")
    registry.enrol_totp("ada")
    ledger = CiphertextColumn(f"duckdb:///{tmp_path / 'w.duckdb'}", "audit", "file_ledger", "source_path_ciphertext")
    warehouse = Warehouse(ledger.warehouse_url)
    try:
        warehouse.write_table("audit", "file_ledger", pd.DataFrame({"source_path_ciphertext": [
            service.encrypt(PATH.encode()), None]}))
    finally:
        warehouse.dispose()
    return zone_dir, registry, ledger


def test_raw_zone_rotation_rewraps_the_zone_the_registry_and_the_ledger(service: TransitKeyService,
                                                                          tmp_path: Path) -> None:
    zone_dir, registry, ledger = _raw_zone_world(tmp_path, service)

    outcome = rotate_raw_zone_key(service, raw_zone_dir=zone_dir, registry=registry, ledger=ledger)

    assert outcome.complete and outcome.new_version == 2
    assert outcome.as_metadata() == {"key": service.key_ref, "new_version": 2, "envelopes_before": 2,
                                     "envelopes_after": 2, "rewrapped": 2, "principal_envelopes": 2,
                                     "ledger_ciphertexts": 1, "complete": True}
    pd.testing.assert_frame_equal(RawZone(zone_dir, service).read_table("patients"), PATIENTS)
    assert registry.check_envelopes() == (2, 2)
    assert "HZ00412345" not in "\n".join(outcome.summary) and PATH not in "\n".join(outcome.summary)


def test_a_damaged_envelope_makes_the_rotation_incomplete(service: TransitKeyService, tmp_path: Path) -> None:
    zone_dir, registry, ledger = _raw_zone_world(tmp_path, service)
    damaged = next(zone_dir.rglob("*.enc"))
    blob = bytearray(damaged.read_bytes())
    blob[20] ^= 0xFF  # inside the JSON header
    damaged.write_bytes(bytes(blob))

    outcome = rotate_raw_zone_key(service, raw_zone_dir=zone_dir, registry=registry, ledger=ledger)

    assert not outcome.complete
    assert "failed: 0" not in outcome.summary[1]


def test_export_rotation_finds_exports_outside_the_folder_through_the_index(service: TransitKeyService,
                                                                             tmp_path: Path) -> None:
    exports, elsewhere = tmp_path / "exports", tmp_path / "elsewhere"
    for folder in (exports, elsewhere):
        folder.mkdir()
        (folder / "plain.parquet").write_bytes(b"rows")
        encrypt_file(folder / "plain.parquet", folder / "x.parquet.enc", service)

    outcome = rotate_export_key(service, exports_dir=exports, exported=[elsewhere / "x.parquet.enc"])

    assert outcome.complete and outcome.counts == {"envelopes_before": 2, "envelopes_after": 2}
    assert {_version(exports / "x.parquet.enc"), _version(elsewhere / "x.parquet.enc")} == {"v2"}
    assert decrypt_file_bytes(elsewhere / "x.parquet.enc", service) == b"rows"


def test_audit_key_rotation_leaves_the_log_verifiable(openbao_server: BaoServer, tmp_path: Path) -> None:
    name = f"test-audit-rotation-{uuid.uuid4().hex[:8]}"
    service = TransitKeyService(openbao_server.addr, openbao_server.token)
    service.ensure_transit({name: PSEUDONYM_KEY_TYPE})
    audit = transit_audit_log(tmp_path / "audit.jsonl", service, key_name=name)
    audit.append(actor="ada", role="admin", action="keys.rotate", resource="transit/*", outcome="allowed",
                 reason="test", details={})

    outcome = rotate_audit_key(service, name, audit)

    assert outcome.complete and outcome.as_metadata() == {"key": f"transit/{name}", "new_version": 2,
                                                          "complete": True}
    assert audit.verify().ok
