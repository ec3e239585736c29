"""`medllm reidentify`: only the privacy officer with MFA and a lawful basis; every attempt audited."""

from __future__ import annotations

import pytest

from medllm_pipelines_tests.cli_security.world import DENIED, IDENTIFIERS, LINKED, World, name_of


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
