"""`medllm principals`: bootstrap of an empty registry, then an admin with MFA manages principals."""

from __future__ import annotations

import re
from pathlib import Path

import pyotp

from medllm_pipelines_tests.cli_security.world import DENIED, World


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
