"""Fixtures of the ``medllm`` security command tests: one OpenBao and one world for the whole package."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import pandas as pd
import pyotp
import pytest

from medllm_pipelines.lib.common.warehouse import Warehouse
from medllm_pipelines.lib.security import rbac
from medllm_pipelines.lib.security.governance import GovernanceStore, SharingAgreement
from medllm_pipelines.lib.security.raw_zone import RawZone
from medllm_pipelines.lib.security.rbac import PrincipalRegistry
from medllm_pipelines.lib.security.vault_client import TransitKeyService
from medllm_pipelines.lib.services.openbao import BaoServer, start_dev_server, stop_dev_server
from medllm_pipelines_tests.cli_security.world import (
    AGREEMENT,
    CLOCK,
    DATASET,
    DEID,
    MATRIX,
    PATHS,
    PATIENTS,
    PSEUDONYM_MAP,
    RECIPIENT,
    World,
    name_of,
)


@pytest.fixture(autouse=True)
def stepping_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """The registry reads :data:`CLOCK`, so each code a test asks for is one fresh TOTP step later."""
    monkeypatch.setattr(rbac, "_now_utc", lambda now: (now or CLOCK.now).astimezone(dt.UTC))


@pytest.fixture(scope="package")
def bao(tmp_path_factory: pytest.TempPathFactory, bao_binary: str) -> Iterator[BaoServer]:
    state = tmp_path_factory.mktemp("cli-security-bao") / "state"
    server = start_dev_server(state, port=0, bao_binary=bao_binary)
    try:
        yield server
    finally:
        stop_dev_server(state)


@pytest.fixture(scope="package")
def world(tmp_path_factory: pytest.TempPathFactory, bao: BaoServer) -> Iterator[World]:
    home = tmp_path_factory.mktemp("cli-security-home")
    service = TransitKeyService(bao.addr, bao.token)
    w = World(home, bao, service)
    registry = PrincipalRegistry(home / "security" / "principals.json", service)
    for role in MATRIX.roles:
        name = name_of(role)
        registry.add_principal(name, role, now=CLOCK.now)
        w.authenticators[name] = pyotp.parse_uri(registry.enrol_totp(name, now=CLOCK.now))
        assert registry.confirm_totp(name, w.authenticators[name].at(CLOCK.now), now=CLOCK.now).ok
    zone = RawZone(home / "raw_zone", service)
    zone.write_table("deidentify_pseudonym_map", PSEUDONYM_MAP)
    zone.write_partition("ingest_patients", "hzsf", PATIENTS)
    zone.put_object("ab" * 32, b"landed file bytes")
    warehouse = Warehouse(f"duckdb:///{home / 'warehouse' / 'medllm.duckdb'}")
    warehouse.write_table("deidentify", "patients", DEID)
    warehouse.write_table("audit", "file_ledger", pd.DataFrame({
        "content_sha256": ["ab" * 32, "cd" * 32, "ef" * 32],
        "source_path_ciphertext": [service.encrypt(PATHS[0].encode()), service.encrypt(PATHS[1].encode()), None],
    }))
    GovernanceStore(home / "governance").record_agreement(
        SharingAgreement(id=AGREEMENT, recipient=RECIPIENT, purpose="external validation", datasets=(DATASET,),
                         cross_border=False, valid_until=dt.date.today() + dt.timedelta(days=365)),
        recorded_by="privacy-officer")
    try:
        yield w
    finally:
        service.close()
