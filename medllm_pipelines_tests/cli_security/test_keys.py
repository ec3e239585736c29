"""`medllm keys rotate`: every holder rewrapped, nothing lost, and fail closed when Vault is down."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pandas as pd

from medllm_pipelines.lib.common.warehouse import Warehouse
from medllm_pipelines.lib.security.envelope import MAGIC, read_header
from medllm_pipelines.lib.security.raw_zone import RawZone
from medllm_pipelines.lib.security.vault_client import DEFAULT_EXPORT_KEY_NAME
from medllm_pipelines_tests.cli_security.world import (
    DEID,
    IDENTIFIERS,
    PATHS,
    PSEUDONYM_MAP,
    VAULT_DOWN,
    World,
    closed_port,
    export_as_engineer,
    name_of,
    read_export,
)


def _versions(root: Path, key_ref: str) -> list[int]:
    found = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        with path.open("rb") as handle:
            if handle.read(len(MAGIC)) != MAGIC:
                continue
            handle.seek(0)
            header = read_header(handle)
        if header.key_ref == key_ref:
            found.append(int(header.wrapped_key.split(":")[1][1:]))
    return found


def test_keys_rotate_rewraps_every_holder_and_loses_nothing(world: World) -> None:
    out = export_as_engineer(world, "before-rotation.parquet.enc")
    admin = name_of("admin")
    raw_before = _versions(world.home / "raw_zone", "transit/medllm-raw-zone")
    result = world.cli("keys", "rotate", "--all", "--as", admin, "--totp", world.code(admin))
    assert result.exit_code == 0, result.output
    assert "rotation complete" in result.stdout

    raw_version = world.service.key_info().latest_version
    export_version = world.service.key_info(DEFAULT_EXPORT_KEY_NAME).latest_version
    assert _versions(world.home / "raw_zone", "transit/medllm-raw-zone") == [raw_version] * len(raw_before)
    assert set(_versions(world.home / "exports", f"transit/{DEFAULT_EXPORT_KEY_NAME}")) == {export_version}
    zone = RawZone(world.home / "raw_zone", world.service)
    pd.testing.assert_frame_equal(zone.read_table("deidentify_pseudonym_map"), PSEUDONYM_MAP)
    assert zone.get_object("ab" * 32) == b"landed file bytes"
    pd.testing.assert_frame_equal(read_export(world, out), DEID)
    ledger = Warehouse(f"duckdb:///{world.home / 'warehouse' / 'medllm.duckdb'}").read_table("audit", "file_ledger")
    assert len(ledger) == 3
    ciphertexts = [v for v in ledger["source_path_ciphertext"] if isinstance(v, str)]
    assert all(v.startswith(f"vault:v{raw_version}:") for v in ciphertexts)
    assert sorted(world.service.decrypt(v).decode() for v in ciphertexts) == sorted(PATHS)
    # the principals' sealed TOTP secrets were rewrapped and still work
    assert world.cli("keys", "rotate", "--key", "medllm-audit", "--as", admin, "--totp",
                     world.code(admin)).exit_code == 0
    assert world.cli("audit", "verify", "--as", "auditor").exit_code == 0
    log = world.audit_path.read_text(encoding="utf-8")
    assert not any(identifier in log for identifier in IDENTIFIERS) and not any(p in log for p in PATHS)


def test_keys_rotate_fails_closed_when_vault_is_down(world: World) -> None:
    def snapshot() -> dict[str, str]:
        return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in world.home.rglob("*") if p.is_file()}

    before = snapshot()
    result = world.cli("keys", "rotate", "--all", "--as", name_of("admin"), "--totp", "123456",
                       VAULT_ADDR=f"http://127.0.0.1:{closed_port()}", VAULT_TOKEN="not-a-real-token")
    assert result.exit_code == VAULT_DOWN, result.output
    assert "failing closed" in result.stderr and "not-a-real-token" not in result.output
    assert snapshot() == before
