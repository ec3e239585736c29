"""Holders outside envelope folders: the warehouse ciphertext column, the registry, file lists, the census."""

from __future__ import annotations

import uuid
from pathlib import Path

import pandas as pd
import pytest

from medllm_pipelines.lib.common.warehouse import Warehouse
from medllm_pipelines.lib.security.envelope import encrypt_bytes
from medllm_pipelines.lib.security.rbac import PrincipalRegistry
from medllm_pipelines.lib.security.rotation import (
    envelope_census,
    rewrap_paths,
    rewrap_warehouse_column,
)
from medllm_pipelines.lib.security.vault_client import DATA_KEY_TYPE, TransitKeyService
from medllm_pipelines.lib.services.openbao import BaoServer

PATHS = ["hzsf/fhir/bundles/bundle-1.json", "rvic/dicom/s1/img-1.dcm", "jhsq/fhir/bulk/p.ndjson"]


@pytest.fixture
def service(openbao_server: BaoServer) -> TransitKeyService:
    name = f"test-holders-{uuid.uuid4().hex[:8]}"
    service = TransitKeyService(openbao_server.addr, openbao_server.token, data_key_name=name)
    service.ensure_transit({name: DATA_KEY_TYPE})
    return service


def test_warehouse_column_is_rewrapped_in_place_and_still_decrypts(service: TransitKeyService,
                                                                    tmp_path: Path) -> None:
    warehouse = Warehouse(f"duckdb:///{tmp_path / 'w.duckdb'}")
    ledger = pd.DataFrame({"content_sha256": ["a", "b", "c", "d"],
                           "source_path_ciphertext": [*(service.encrypt(p.encode()) for p in PATHS), None]})
    warehouse.write_table("audit", "file_ledger", ledger)
    service.rotate_key()

    report = rewrap_warehouse_column(warehouse, "audit", "file_ledger", "source_path_ciphertext", service)

    assert report.complete and (report.rows_before, report.rows_after) == (4, 4)
    assert (report.ciphertexts_before, report.rewrapped, report.verified) == (3, 3, 3)
    after = warehouse.read_table("audit", "file_ledger").sort_values("content_sha256")
    assert after["content_sha256"].tolist() == ["a", "b", "c", "d"]  # the other columns are untouched
    values = after["source_path_ciphertext"].tolist()
    assert all(v.startswith("vault:v2:") for v in values[:3]) and pd.isna(values[3])
    assert [service.decrypt(v).decode() for v in values[:3]] == PATHS
    again = rewrap_warehouse_column(warehouse, "audit", "file_ledger", "source_path_ciphertext", service)
    assert again.complete and again.rewrapped == 0  # idempotent


def test_missing_warehouse_table_is_an_empty_complete_report(service: TransitKeyService, tmp_path: Path) -> None:
    report = rewrap_warehouse_column(Warehouse(f"duckdb:///{tmp_path / 'w.duckdb'}"), "audit", "file_ledger",
                                     "source_path_ciphertext", service)
    assert report.complete and report.ciphertexts_before == 0


def test_census_and_file_list_rewrap_count_every_envelope(service: TransitKeyService, tmp_path: Path) -> None:
    files = []
    for index in range(3):
        path = tmp_path / f"export-{index}.enc"
        path.write_bytes(encrypt_bytes(f"payload {index}".encode(), service))
        files.append(path)
    (tmp_path / "notes.txt").write_text("not an envelope")
    before = envelope_census([tmp_path], service.key_ref)
    assert (before.envelopes, before.versions) == (3, {1: 3})
    service.rotate_key()

    report = rewrap_paths([*files, tmp_path / "gone.enc"], service, label="exports")

    assert report.complete and report.rewrapped == report.verified == 3
    after = envelope_census(files, service.key_ref)
    assert after.envelopes == 3 and after.all_at(2)


def test_registry_envelopes_are_counted_and_open(service: TransitKeyService, tmp_path: Path) -> None:
    registry = PrincipalRegistry(tmp_path / "principals.json", service)
    registry.add_principal("ada", "admin")
    registry.add_principal("bob", "auditor")
    registry.enrol_totp("ada")
    assert registry.check_envelopes() == (3, 3)
    service.rotate_key()
    assert registry.rewrap_secrets(service.rewrap) == 3
    assert registry.check_envelopes() == (3, 3)
