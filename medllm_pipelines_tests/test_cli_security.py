"""`medllm principals|audit|reidentify|keys|export|governance agree` against a real OpenBao.

One dev server for the module (these tests rotate keys, so not the session
one), one MEDLLM_HOME ("world") holding a principal per role with confirmed
TOTP, a raw zone with a pseudonym map and identifiable patients, a DuckDB
warehouse with a de-identified table and the file ledger, and a sharing
agreement. TOTP codes come from pyotp; the registry's clock is a test clock
that moves one 30-second step per code, so each code is fresh.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import re
import shutil
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pyotp
import pytest
from click.testing import CliRunner, Result
from dagster import asset, materialize

from medllm_pipelines.cli import main
from medllm_pipelines.lib.common.warehouse import Warehouse
from medllm_pipelines.lib.deidentify.policy import load_policy
from medllm_pipelines.lib.security import rbac
from medllm_pipelines.lib.security.audit import read_entries, transit_audit_log
from medllm_pipelines.lib.security.envelope import MAGIC, decrypt_stream, read_header
from medllm_pipelines.lib.security.governance import GovernanceStore, SharingAgreement
from medllm_pipelines.lib.security.openbao import (
    BaoServer,
    start_dev_server,
    stop_dev_server,
)
from medllm_pipelines.lib.security.raw_zone import RawZone
from medllm_pipelines.lib.security.rbac import PrincipalRegistry, load_permissions
from medllm_pipelines.lib.security.vault_client import (
    DEFAULT_EXPORT_KEY_NAME,
    TransitKeyService,
)
from medllm_pipelines.resources.raw_zone import RawZoneResource
from medllm_pipelines.resources.vault import VaultResource
from medllm_pipelines_tests.conftest_lifecycle import ENV_KEYS

MATRIX = load_permissions()
DENIED, VAULT_DOWN = 3, 4
START = dt.datetime(2026, 11, 28, 10, 0, tzinfo=dt.UTC)
DATASET = "deidentify.patients"
RECIPIENT = "Partner-Lab"
AGREEMENT = "dsa-partner-2026"
PATHS = ["hzsf/fhir/bundles/bundle-1.json", "rvic/dicom/s1/img-1.dcm"]


def pseudonym(seed: str) -> str:
    policy = load_policy()
    return policy.pseudonym_prefix + hashlib.sha256(seed.encode()).hexdigest()[: policy.pseudonym_hex_chars]


LINKED = pseudonym("linked")
PSEUDONYM_MAP = pd.DataFrame({
    "institution": ["hzsf", "rvic"],
    "patient_key": ["pat-1", "pat-9"],
    "mrn": ["HZ00412345", "RV00098765"],
    "link_kind": ["resident-id", "resident-id"],
    "patient_pseudonym": [LINKED, LINKED],
})
PATIENTS = pd.DataFrame({"mrn": ["HZ00412345"], "name_en": ["Wang Xiaoming"], "email": ["wang.xm@example.cn"]})
DEID = pd.DataFrame({"patient_pseudonym": [LINKED] + [pseudonym(f"other-{n}") for n in range(9)],
                     "age_band": ["40-49"] * 5 + ["60-69"] * 5})  # 5-anonymous on its quasi-identifier
IDENTIFIERS = ["HZ00412345", "RV00098765", "Wang Xiaoming", "wang.xm@example.cn", "pat-1", "pat-9"]


class Clock:
    def __init__(self) -> None:
        self.now = START

    def step(self) -> dt.datetime:
        self.now += dt.timedelta(seconds=30)
        return self.now


CLOCK = Clock()


@pytest.fixture(autouse=True)
def test_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rbac, "_now_utc", lambda now: (now or CLOCK.now).astimezone(dt.UTC))


@dataclass
class World:
    home: Path
    server: BaoServer
    service: TransitKeyService
    authenticators: dict[str, pyotp.TOTP] = field(default_factory=dict)

    def env(self, **extra: str | None) -> dict[str, str | None]:
        env: dict[str, str | None] = dict.fromkeys(ENV_KEYS)
        env.update(MEDLLM_HOME=str(self.home), VAULT_ADDR=self.server.addr, VAULT_TOKEN=self.server.token,
                   MEDLLM_PRINCIPAL=None)
        env.update(extra)
        return env

    def cli(self, *args: str, home: Path | None = None, **env: str | None) -> Result:
        environment = self.env(**env)
        if home is not None:
            environment["MEDLLM_HOME"] = str(home)
        return CliRunner().invoke(main, list(args), env=environment, catch_exceptions=False)

    def code(self, name: str) -> str:
        """A fresh code: the clock moves one TOTP step first."""
        return self.authenticators[name].at(CLOCK.step())

    @property
    def audit_path(self) -> Path:
        return self.home / "security" / "audit.jsonl"

    def entries(self, home: Path | None = None) -> list[Any]:
        path = (home or self.home) / "security" / "audit.jsonl"
        return list(read_entries(path)) if path.exists() else []

    def last_decision(self, actor: str) -> Any:
        return next(e for e in reversed(self.entries()) if e.actor == actor and e.outcome in {"allowed", "denied"})


def name_of(role: str) -> str:
    return role.replace("_", "-")


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def bao(tmp_path_factory: pytest.TempPathFactory, bao_binary: str) -> Iterator[BaoServer]:
    state = tmp_path_factory.mktemp("cli-security-bao") / "state"
    server = start_dev_server(state, port=0, bao_binary=bao_binary)
    try:
        yield server
    finally:
        stop_dev_server(state)


@pytest.fixture(scope="module")
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


# --- RBAC matrix ----------------------------------------------------------------------
def _command(action: str, world: World, tag: str) -> list[str]:
    return {
        "manage_roles": ["principals", "add", f"new-{tag}", "--role", "clinician"],
        "read_audit": ["audit", "show", "--limit", "1"],
        "rotate_keys": ["keys", "rotate", "--key", "medllm-audit"],
        "reidentify": ["reidentify", LINKED, "--reason", "patient_safety"],
        "export_dataset": ["export", DATASET, "--recipient", RECIPIENT, "--agreement", AGREEMENT,
                           "--out", str(world.home / "exports" / f"{tag}.parquet.enc")],
        "record_sharing_agreement": ["governance", "agree", "--id", f"dsa-{tag}", "--recipient", RECIPIENT,
                                     "--purpose", "validation", "--dataset", DATASET, "--valid-until", "2030-01-01"],
    }[action]


CLI_ACTIONS = ["manage_roles", "read_audit", "rotate_keys", "reidentify", "export_dataset", "record_sharing_agreement"]
CASES = [(role, action) for action in CLI_ACTIONS for role in sorted(MATRIX.roles)]


def test_every_cli_action_is_in_the_matrix() -> None:
    assert set(CLI_ACTIONS) <= set(MATRIX.actions)


@pytest.mark.parametrize(("role", "action"), CASES, ids=[f"{r}-{a}" for r, a in CASES])
def test_rbac_matrix_is_enforced_and_every_decision_audited(world: World, role: str, action: str) -> None:
    name = name_of(role)
    args = [*_command(action, world, f"{role.replace('_', '')}-{action.replace('_', '')}"), "--as", name]
    if MATRIX.requires_mfa(action):
        args += ["--totp", world.code(name)]
    result = world.cli(*args)
    allowed = MATRIX.allows(role, action)
    assert result.exit_code == (0 if allowed else DENIED), result.output
    decision = world.last_decision(name)
    assert (decision.action, decision.outcome) == (action, "allowed" if allowed else "denied")
    assert decision.role == role
    if not allowed:
        assert "denied" in result.stderr and f"not permitted to {action}" in result.stderr


# --- MFA ----------------------------------------------------------------------------
def test_mfa_missing_wrong_and_replayed_codes_are_refused(world: World) -> None:
    admin = name_of("admin")
    args = ["keys", "rotate", "--key", "medllm-audit", "--as", admin]
    missing = world.cli(*args)
    assert missing.exit_code == DENIED and "needs MFA" in missing.stderr
    assert world.last_decision(admin).details["mfa"] == "missing"

    good = world.code(admin)
    wrong = f"{(int(good) + 1) % 1_000_000:06d}"
    assert world.cli(*args, "--totp", wrong).exit_code == DENIED
    assert world.last_decision(admin).details["mfa"] == "failed"

    assert world.cli(*args, "--totp", good).exit_code == 0
    replayed = world.cli(*args, "--totp", good)
    assert replayed.exit_code == DENIED and "replay" in replayed.stderr
    assert world.last_decision(admin).details["mfa"] == "replayed"


def test_bootstrap_then_admin_with_mfa_manages_principals(world: World, tmp_path: Path) -> None:
    home = tmp_path / "fresh"
    first = world.cli("principals", "add", "ada", "--role", "clinician", home=home)
    assert first.exit_code == DENIED and "must be an admin" in first.stderr
    assert world.cli("principals", "add", "ada", "--role", "admin", home=home).exit_code == 0

    enrol = world.cli("principals", "enrol-mfa", "ada", "--as", "ada", home=home)
    assert enrol.exit_code == 0, enrol.output
    uri = re.search(r"otpauth://\S+", enrol.stdout).group(0)
    world.authenticators["ada"] = pyotp.parse_uri(uri)
    assert world.cli("principals", "confirm-mfa", "ada", world.code("ada"), home=home).exit_code == 0

    no_mfa = world.cli("principals", "add", "bob", "--role", "auditor", "--as", "ada", home=home)
    assert no_mfa.exit_code == DENIED
    assert world.cli("principals", "add", "bob", "--role", "auditor", "--as", "ada", "--totp", world.code("ada"),
                     home=home).exit_code == 0
    # the bootstrap window is closed: bob cannot enrol himself
    assert world.cli("principals", "enrol-mfa", "bob", "--as", "bob", home=home).exit_code == DENIED
    assert world.cli("principals", "enrol-mfa", "bob", "--as", "ada", "--totp", world.code("ada"),
                     home=home).exit_code == 0
    assert world.cli("audit", "show", "--as", "bob", home=home).exit_code == 0
    assert world.cli("principals", "deactivate", "bob", "--as", "ada", "--totp", world.code("ada"),
                     home=home).exit_code == 0
    assert world.cli("audit", "show", "--as", "bob", home=home).exit_code == DENIED
    listing = world.cli("principals", "list", "--as", "ada", home=home)
    assert "DEACTIVATED" in listing.stdout and "otpauth" not in listing.stdout
    log = (home / "security" / "audit.jsonl").read_text()
    assert "otpauth" not in log and world.authenticators["ada"].secret not in log
    assert world.cli("audit", "verify", "--as", "ada", home=home).exit_code == 0


# --- audit verify ----------------------------------------------------------------------
def _home_with_log(world: World, tmp_path: Path, entries: int = 5) -> Path:
    home = tmp_path / "home"
    (home / "security").mkdir(parents=True)
    shutil.copy(world.home / "security" / "principals.json", home / "security" / "principals.json")
    for _ in range(entries):
        assert world.cli("audit", "show", "--as", "auditor", home=home).exit_code == 0
    return home


def _lines(home: Path) -> list[str]:
    return (home / "security" / "audit.jsonl").read_text().splitlines(keepends=True)


def _write(home: Path, lines: list[str]) -> None:
    (home / "security" / "audit.jsonl").write_text("".join(lines))


def test_audit_verify_passes_on_an_intact_log(world: World, tmp_path: Path) -> None:
    home = _home_with_log(world, tmp_path)
    result = world.cli("audit", "verify", "--as", "auditor", home=home)
    assert result.exit_code == 0 and "intact: 6 entries" in result.stdout  # 5 + its own decision


def test_audit_verify_names_an_edited_entry(world: World, tmp_path: Path) -> None:
    home = _home_with_log(world, tmp_path)
    lines = _lines(home)
    lines[2] = lines[2].replace('"outcome":"allowed"', '"outcome":"denied"')
    _write(home, lines)
    result = world.cli("audit", "verify", "--as", "auditor", home=home)
    assert result.exit_code == 1 and "BROKEN at seq 2" in result.stderr and "edited" in result.stderr


def test_audit_verify_names_a_deleted_entry(world: World, tmp_path: Path) -> None:
    home = _home_with_log(world, tmp_path)
    lines = _lines(home)
    del lines[1]
    _write(home, lines)
    result = world.cli("audit", "verify", "--as", "auditor", home=home)
    assert result.exit_code == 1 and "BROKEN at seq 1" in result.stderr and "deleted" in result.stderr


def test_audit_verify_detects_a_truncated_tail(world: World, tmp_path: Path) -> None:
    home = _home_with_log(world, tmp_path)
    _write(home, _lines(home)[:-2])
    result = world.cli("audit", "verify", "--as", "auditor", home=home)
    assert result.exit_code == 1 and "cut from the end" in result.stderr
    # the log refuses appends now, so other commands stop rather than act unaudited
    assert world.cli("audit", "show", "--as", "auditor", home=home).exit_code == 1


# --- re-identification -------------------------------------------------------------------
def test_reidentify_for_the_privacy_officer_with_mfa_is_audited_without_the_identity(world: World) -> None:
    officer = name_of("privacy_officer")
    result = world.cli("reidentify", LINKED, "--reason", "patient_safety", "--case", "IRB-2026/17",
                       "--as", officer, "--totp", world.code(officer))
    assert result.exit_code == 0, result.output
    assert "HZ00412345" in result.stdout and "RV00098765" in result.stdout
    entry = world.entries()[-1]
    assert (entry.actor, entry.action, entry.outcome) == (officer, "reidentify", "allowed")
    assert entry.details["lawful_basis"] == "patient_safety" and entry.details["case_reference"] == "IRB-2026/17"
    assert entry.resource == f"pseudonym:{LINKED}"


@pytest.mark.parametrize("who", ["data_engineer", "admin", "officer-wrong-code", "officer-no-reason"])
def test_reidentify_is_denied_and_audited_otherwise(world: World, who: str) -> None:
    name = name_of("privacy_officer") if who.startswith("officer") else name_of(who)
    code = world.code(name)
    if who == "officer-wrong-code":
        code = f"{(int(code) + 7) % 1_000_000:06d}"
    reason = "curiosity" if who == "officer-no-reason" else "court_order"
    result = world.cli("reidentify", LINKED, "--reason", reason, "--as", name, "--totp", code)
    assert result.exit_code == DENIED, result.output
    assert not any(identifier in result.output for identifier in IDENTIFIERS)
    entry = world.entries()[-1]
    assert (entry.actor, entry.action, entry.outcome) == (name, "reidentify", "denied")
    assert entry.details["lawful_basis"] == ("<invalid>" if who == "officer-no-reason" else "court_order")


# --- export ------------------------------------------------------------------------------
def test_export_is_refused_without_an_agreement(world: World) -> None:
    engineer = name_of("data_engineer")
    out = world.home / "exports" / "refused.parquet.enc"
    result = world.cli("export", DATASET, "--recipient", "Unknown-Org", "--agreement", "dsa-none", "--out", str(out),
                       "--as", engineer, "--totp", world.code(engineer))
    assert result.exit_code == DENIED and "no data-sharing agreement" in result.stderr
    assert not out.exists()
    entry = world.entries()[-1]
    assert (entry.action, entry.outcome) == ("export_dataset", "failed")


def test_export_of_a_table_that_is_not_k_anonymous_is_refused(world: World) -> None:
    rare = DEID.assign(age_band=["40-49"] * 9 + ["90+"])  # one person alone in the 90+ band
    warehouse = Warehouse(f"duckdb:///{world.home / 'warehouse' / 'medllm.duckdb'}")
    try:
        warehouse.write_table("deidentify", "rare_patients", rare)
    finally:
        warehouse.dispose()
    officer, engineer = name_of("privacy_officer"), name_of("data_engineer")
    assert world.cli("governance", "agree", "--id", "dsa-rare", "--recipient", RECIPIENT, "--purpose", "benchmark",
                     "--dataset", "deidentify.rare_patients", "--valid-until", "2099-12-31",
                     "--as", officer).exit_code == 0
    out = world.home / "exports" / "rare.parquet.enc"
    result = world.cli("export", "deidentify.rare_patients", "--recipient", RECIPIENT, "--agreement", "dsa-rare",
                       "--out", str(out), "--as", engineer, "--totp", world.code(engineer))
    assert result.exit_code == DENIED and "not 5-anonymous on age_band" in result.stderr
    assert "90+" not in result.stderr and not out.exists()
    entry = world.entries()[-1]
    assert (entry.action, entry.outcome) == ("export_dataset", "failed")


def _export(world: World, name: str) -> Path:
    engineer = name_of("data_engineer")
    out = world.home / "exports" / name
    result = world.cli("export", DATASET, "--recipient", RECIPIENT, "--agreement", AGREEMENT, "--out", str(out),
                       "--as", engineer, "--totp", world.code(engineer))
    assert result.exit_code == 0, result.output
    return out


def _read_export(world: World, out: Path) -> pd.DataFrame:
    agreement = GovernanceStore(world.home / "governance").agreement(AGREEMENT)
    aad = f"export:{AGREEMENT}:v{agreement.version}:{DATASET}".encode()
    with (TransitKeyService(world.server.addr, world.server.token, data_key_name=DEFAULT_EXPORT_KEY_NAME) as keys,
          out.open("rb") as handle):
        plaintext = b"".join(decrypt_stream(handle, keys, aad=aad))
    return pd.read_parquet(io.BytesIO(plaintext))


def test_export_under_an_agreement_is_written_encrypted(world: World) -> None:
    out = _export(world, "partner.parquet.enc")
    blob = out.read_bytes()
    assert blob.startswith(MAGIC) and LINKED.encode() not in blob
    assert read_header(io.BytesIO(blob)).key_ref == f"transit/{DEFAULT_EXPORT_KEY_NAME}"
    pd.testing.assert_frame_equal(_read_export(world, out), DEID)
    entry = world.entries()[-1]
    assert (entry.action, entry.outcome, entry.details["agreement_id"]) == ("export_dataset", "succeeded", AGREEMENT)
    screens = [e for e in world.entries() if e.action == "raw_zone.read" and e.resource == "ingest_patients"]
    assert screens, "the identifier screen's raw-zone read is audited"


def test_governance_agree_records_an_agreement_for_the_privacy_officer(world: World) -> None:
    officer = name_of("privacy_officer")
    result = world.cli("governance", "agree", "--id", "dsa-uni-2027", "--recipient", "Uni-Hospital", "--purpose",
                       "benchmark", "--dataset", DATASET, "--valid-until", "2027-12-31", "--as", officer)
    assert result.exit_code == 0, result.output
    assert GovernanceStore(world.home / "governance").agreement("dsa-uni-2027").recorded_by == officer


# --- key rotation --------------------------------------------------------------------------
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
    out = _export(world, "before-rotation.parquet.enc")
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
    pd.testing.assert_frame_equal(_read_export(world, out), DEID)
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


# --- pipeline reads of the raw zone ------------------------------------------------------------
def test_pipeline_raw_zone_reads_are_audited_once_per_table(world: World, tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    resource = RawZoneResource(path=str(world.home / "raw_zone"),
                               vault=VaultResource(addr=world.server.addr, token=world.server.token),
                               audit_log=str(log))
    zone = resource.get()
    for _ in range(3):
        zone.read_table("deidentify_pseudonym_map")
    zone.read_partitions("ingest_patients")
    entries = list(read_entries(log))
    assert [(e.actor, e.action, e.resource) for e in entries] == [
        ("pipeline", "raw_zone.read", "deidentify_pseudonym_map"),
        ("pipeline", "raw_zone.read", "ingest_patients"),
    ]
    assert transit_audit_log(log, world.service).verify().ok
    assert not any(identifier in log.read_text() for identifier in IDENTIFIERS)
    assert json.loads(log.with_name("audit.jsonl.head").read_text())["mac"]


def test_raw_zone_reads_in_a_dagster_run_are_audited_with_the_run_id(world: World, tmp_path: Path) -> None:
    @asset
    def reads_the_map(raw_zone: RawZoneResource) -> int:
        zone = raw_zone.get()
        return len(zone.read_table("deidentify_pseudonym_map")) + len(zone.read_table("deidentify_pseudonym_map"))

    log = tmp_path / "audit.jsonl"
    resource = RawZoneResource(path=str(world.home / "raw_zone"),
                               vault=VaultResource(addr=world.server.addr, token=world.server.token),
                               audit_log=str(log))
    result = materialize([reads_the_map], resources={"raw_zone": resource})
    assert result.success
    [entry] = list(read_entries(log))
    assert (entry.action, entry.resource, entry.details["dagster_run_id"]) == (
        "raw_zone.read", "deidentify_pseudonym_map", result.run_id)
