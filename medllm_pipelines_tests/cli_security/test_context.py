"""What every security command does the same way: the permission matrix enforced, MFA checked, each decision audited."""

from __future__ import annotations

import pytest

from medllm_pipelines_tests.cli_security.world import (
    AGREEMENT,
    DATASET,
    DENIED,
    LINKED,
    MATRIX,
    RECIPIENT,
    World,
    name_of,
)


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
