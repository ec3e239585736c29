"""Key rotation against a real OpenBao: every envelope rewrapped, no record lost, fail closed."""

from __future__ import annotations

import datetime as dt
import shutil
import socket
import uuid
from pathlib import Path
from typing import Any

import pandas as pd
import pyotp
import pytest

from medllm_pipelines.lib.security.envelope import decrypt_file_bytes, encrypt_bytes, encrypt_file, read_header
from medllm_pipelines.lib.security.errors import EnvelopeIntegrityError, VaultUnavailableError
from medllm_pipelines.lib.security.exports import export_dataset
from medllm_pipelines.lib.security.governance import SharingAgreement
from medllm_pipelines.lib.security.raw_zone import RawZone
from medllm_pipelines.lib.security.rbac import AccessControl, PrincipalRegistry
from medllm_pipelines.lib.security.rotation import (
    RotationError,
    retire_old_versions,
    rewrap_ciphertexts,
    rewrap_folder,
    rotate_and_rewrap,
)
from medllm_pipelines.lib.security.vault_client import DATA_KEY_TYPE, TransitKeyService
from medllm_pipelines.lib.services.openbao import BaoServer
from medllm_pipelines_tests.lib.security.fakes import LocalTestKeyProvider

NOW = dt.datetime(2026, 11, 28, 10, 0, tzinfo=dt.UTC)
PATIENTS = pd.DataFrame({"mrn": ["00412345", "RV0098765"], "name_zh": ["张三", "李四"], "age": [61, 47]})
SHA = [f"{i:02x}" * 32 for i in range(5)]


def own_service(server: BaoServer) -> TransitKeyService:
    """A fresh data key per test: these tests rotate and retire versions."""
    name = f"test-rotation-{uuid.uuid4().hex[:8]}"
    service = TransitKeyService(server.addr, server.token, data_key_name=name)
    service.ensure_transit({name: DATA_KEY_TYPE})
    return service


def dead_service() -> TransitKeyService:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return TransitKeyService(f"http://127.0.0.1:{port}", "s.dead-token", data_key_name="medllm-raw-zone", timeout=2)


def fill_raw_zone(root: Path, service: TransitKeyService) -> RawZone:
    zone = RawZone(root, service)
    for index, sha in enumerate(SHA):
        zone.put_object(sha, f"file {index} of patient 00412345".encode())
    zone.write_table("patients", PATIENTS)
    zone.write_partition("observations", "whsy", PATIENTS.assign(value=[5.1, 6.2]))
    return zone


def snapshot(zone: RawZone) -> dict[str, Any]:
    return {
        "objects": [zone.get_object(sha) for sha in SHA],
        "patients": zone.read_table("patients"),
        "observations": zone.read_partition("observations", "whsy"),
    }


def assert_same(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert a["objects"] == b["objects"]
    pd.testing.assert_frame_equal(a["patients"], b["patients"])
    pd.testing.assert_frame_equal(a["observations"], b["observations"])


def versions(root: Path) -> set[str]:
    found = set()
    for path in root.rglob("*.enc"):
        with path.open("rb") as handle:
            found.add(read_header(handle).wrapped_key.split(":")[1])
    return found


def test_rotate_rewrap_retire_loses_no_record(openbao_server: BaoServer, tmp_path: Path) -> None:
    service = own_service(openbao_server)
    root = tmp_path / "raw_zone"
    zone = fill_raw_zone(root, service)
    (root / "README.txt").write_text("not an envelope")
    (root / "foreign.enc").write_bytes(encrypt_bytes(b"other key", LocalTestKeyProvider()))
    registry = PrincipalRegistry(tmp_path / "principals.json", service)
    registry.add_principal("adm", "admin")
    authenticator = pyotp.parse_uri(registry.enrol_totp("adm"))
    registry.confirm_totp("adm", authenticator.at(NOW), now=NOW)
    stale = tmp_path / "stale.enc"
    shutil.copy(zone.table_path("patients"), stale)
    before = snapshot(zone)

    report = rotate_and_rewrap(service, [root, tmp_path / "missing"], principals=registry)

    assert (report.old_version, report.new_version) == (1, 2)
    [folder] = report.folders
    assert (folder.envelopes, folder.rewrapped, folder.verified, folder.already_current) == (7, 7, 7, 0)
    assert (folder.other_key, folder.not_envelopes, folder.failed) == (1, 1, [])
    assert report.principals_rewrapped == 2  # the record seal and the TOTP secret
    assert report.complete and report.as_metadata()["rewrapped"] == 7
    assert versions(root) == {"v2", "v1"}  # v1 only in the foreign (local) envelope
    assert_same(before, snapshot(zone))

    again = rewrap_folder(root, service)
    assert (again.rewrapped, again.already_current) == (0, 7)

    assert retire_old_versions(service, report, other_holders_rewrapped=True) == 2
    assert_same(before, snapshot(zone))
    assert AccessControl(registry).authorize("adm", "rotate_keys", mfa=authenticator.at(NOW + dt.timedelta(minutes=1)),
                                             now=NOW + dt.timedelta(minutes=1)).allowed
    with pytest.raises(EnvelopeIntegrityError, match="retired"):
        decrypt_file_bytes(stale, service, b"table:patients")


def test_damaged_envelope_is_reported_and_blocks_retirement(openbao_server: BaoServer, tmp_path: Path) -> None:
    service = own_service(openbao_server)
    root = tmp_path / "raw_zone"
    fill_raw_zone(root, service)
    damaged = root / "objects" / "zz.enc"
    damaged.parent.mkdir(parents=True, exist_ok=True)
    damaged.write_bytes(b"\x89MLENV\x01\x00\x00\x00\x05{bad}")
    report = rotate_and_rewrap(service, [root])
    assert report.failed == [(f"{root}/objects/zz.enc", "EnvelopeIntegrityError")]
    assert not report.complete
    with pytest.raises(RotationError, match="1 envelope"):
        retire_old_versions(service, report, other_holders_rewrapped=True)
    assert service.key_info().min_decryption_version == 1


def test_retirement_needs_the_warehouse_ciphertexts_rewrapped(openbao_server: BaoServer) -> None:
    service = own_service(openbao_server)
    ledger_column = [service.encrypt(f"landing/whsy/batch-{i}.json".encode()) for i in range(3)] + [None]
    report = rotate_and_rewrap(service, [])
    with pytest.raises(RotationError, match="warehouse"):
        retire_old_versions(service, report, other_holders_rewrapped=False)
    rewrapped, changed = rewrap_ciphertexts(ledger_column, service.rewrap)
    assert changed == 3 and rewrapped[-1] is None and all(v.startswith("vault:v2:") for v in rewrapped[:3])
    retire_old_versions(service, report, other_holders_rewrapped=True)
    assert [service.decrypt(v) for v in rewrapped[:3]] == [f"landing/whsy/batch-{i}.json".encode() for i in range(3)]


class FlakyService:
    """Delegates to a real service; Vault 'goes away' after ``fail_after`` rewraps."""

    def __init__(self, service: TransitKeyService, fail_after: int) -> None:
        self._service = service
        self.calls = 0
        self.fail_after = fail_after

    def __getattr__(self, name: str) -> Any:
        return getattr(self._service, name)

    def rewrap(self, wrapped: str) -> str:
        self.calls += 1
        if self.calls > self.fail_after:
            raise VaultUnavailableError("cannot connect to Vault at http://127.0.0.1:1 to rewrap")
        return self._service.rewrap(wrapped)


def test_vault_lost_mid_rotation_stops_cleanly_and_a_rerun_completes(openbao_server: BaoServer,
                                                                     tmp_path: Path) -> None:
    service = own_service(openbao_server)
    root = tmp_path / "raw_zone"
    zone = fill_raw_zone(root, service)
    before = snapshot(zone)
    flaky = FlakyService(service, fail_after=3)
    with pytest.raises(VaultUnavailableError, match="stopped at .* after 3 of 4 envelopes"):
        rotate_and_rewrap(flaky, [root])
    assert versions(root) == {"v1", "v2"}
    assert not [p for p in root.rglob("*") if p.name.endswith(".tmp")]
    assert_same(before, snapshot(zone))  # a mix of versions, every record readable

    resumed = rotate_and_rewrap(service, [root], rotate=False)
    [rerun] = resumed.folders
    assert resumed.new_version == 2 and service.key_info().latest_version == 2  # not rotated twice
    assert (rerun.rewrapped, rerun.already_current) == (4, 3) and versions(root) == {"v2"}
    assert_same(before, snapshot(zone))


# --- fail closed: no Vault, no plaintext ---------------------------------------------
def test_raw_zone_write_with_a_dead_vault_raises_and_leaves_no_file(tmp_path: Path) -> None:
    zone = RawZone(tmp_path / "raw_zone", dead_service())
    with pytest.raises(VaultUnavailableError, match="cannot connect"):
        zone.write_table("patients", PATIENTS)
    with pytest.raises(VaultUnavailableError):
        zone.put_object(SHA[0], b"patient 00412345")
    assert [p for p in (tmp_path / "raw_zone").rglob("*") if p.is_file()] == []


def test_encrypt_file_and_export_with_a_dead_vault_leave_nothing(tmp_path: Path) -> None:
    source = tmp_path / "in" / "notes.txt"
    source.parent.mkdir()
    source.write_text("Zhang San, MRN 00412345")
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(VaultUnavailableError):
        encrypt_file(source, out / "notes.enc", dead_service())
    agreement = SharingAgreement(id="DSA-1", recipient="lab", purpose="validation", datasets=("curate/x",),
                                 cross_border=False, valid_until=dt.date(2030, 1, 1))
    with pytest.raises(VaultUnavailableError):
        export_dataset(pd.DataFrame({"age_band": ["50-54"]}), out / "x.enc", keys=dead_service(),
                       agreement=agreement, dataset="curate/x", today=dt.date(2026, 11, 28))
    assert list(out.iterdir()) == []


def test_rotation_with_a_dead_vault_changes_nothing(openbao_server: BaoServer, tmp_path: Path) -> None:
    root = tmp_path / "raw_zone"
    fill_raw_zone(root, own_service(openbao_server))
    before = {p: p.read_bytes() for p in root.rglob("*.enc")}
    with pytest.raises(VaultUnavailableError):
        rotate_and_rewrap(dead_service(), [root])
    assert {p: p.read_bytes() for p in root.rglob("*.enc")} == before

