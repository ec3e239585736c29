"""The world the security commands act on, shared by the tests of every command group.

One MEDLLM_HOME holding a principal per role with confirmed TOTP, a raw zone
with a pseudonym map and identifiable patients, a DuckDB warehouse with a
de-identified table and the file ledger, and a sharing agreement, on a real
OpenBao dev server of its own (these tests rotate keys, so not the session
one). TOTP codes come from pyotp; the registry's clock is :data:`CLOCK`, which
moves one 30-second step per code, so each code is fresh.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pyotp
from click.testing import CliRunner, Result

from medllm_pipelines.cli import main
from medllm_pipelines.lib.deidentify.policy import load_policy
from medllm_pipelines.lib.security.audit import read_entries
from medllm_pipelines.lib.security.envelope import decrypt_stream
from medllm_pipelines.lib.security.governance import GovernanceStore
from medllm_pipelines.lib.security.rbac import load_permissions
from medllm_pipelines.lib.security.vault_client import (
    DEFAULT_EXPORT_KEY_NAME,
    TransitKeyService,
)
from medllm_pipelines.lib.services.openbao import BaoServer
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
    """The registry's notion of now: moved by hand, one TOTP step per code."""

    def __init__(self) -> None:
        self.now = START

    def step(self) -> dt.datetime:
        self.now += dt.timedelta(seconds=30)
        return self.now


CLOCK = Clock()


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


def export_as_engineer(world: World, name: str) -> Path:
    """``medllm export`` of :data:`DATASET` by the data engineer, which must succeed."""
    engineer = name_of("data_engineer")
    out = world.home / "exports" / name
    result = world.cli("export", DATASET, "--recipient", RECIPIENT, "--agreement", AGREEMENT, "--out", str(out),
                       "--as", engineer, "--totp", world.code(engineer))
    assert result.exit_code == 0, result.output
    return out


def read_export(world: World, out: Path) -> pd.DataFrame:
    """Decrypt an export as its recipient would (export key, AAD bound to the agreement)."""
    agreement = GovernanceStore(world.home / "governance").agreement(AGREEMENT)
    aad = f"export:{AGREEMENT}:v{agreement.version}:{DATASET}".encode()
    with (TransitKeyService(world.server.addr, world.server.token, data_key_name=DEFAULT_EXPORT_KEY_NAME) as keys,
          out.open("rb") as handle):
        plaintext = b"".join(decrypt_stream(handle, keys, aad=aad))
    return pd.read_parquet(io.BytesIO(plaintext))
