"""RBAC: every cell of the role x action matrix, and TOTP for privileged actions."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pyotp
import pytest

from medllm_pipelines.lib.security.audit import AuditLog
from medllm_pipelines.lib.security.errors import VaultUnavailableError
from medllm_pipelines.lib.security.rbac import (
    AccessControl,
    AccessDenied,
    PrincipalError,
    PrincipalRegistry,
    load_permissions,
)
from medllm_pipelines_tests.lib.security.fakes import LocalTestKeyProvider

NOW = dt.datetime(2026, 11, 28, 10, 0, 0, tzinfo=dt.UTC)
STEP = dt.timedelta(seconds=30)

# The expected matrix, written out independently of permissions.yaml: a change
# to the policy file must be made here too, on purpose.
ROLES = ["clinician", "data_engineer", "ml_engineer", "auditor", "privacy_officer", "admin"]
ACTIONS = [
    "read_deidentified", "read_raw", "run_pipeline", "train_model", "export_dataset", "reidentify",
    "rotate_keys", "read_audit", "manage_roles", "approve_ethics", "record_sharing_agreement",
    # the REST service's scenarios
    "triage_consult", "draft_notes", "sign_notes", "analyse_images", "assess_risk", "record_feedback",
]
ALLOWED = {
    "clinician": {"read_deidentified", "triage_consult", "draft_notes", "sign_notes", "analyse_images", "assess_risk",
                  "record_feedback"},
    "data_engineer": {"read_deidentified", "read_raw", "run_pipeline", "export_dataset"},
    "ml_engineer": {"read_deidentified", "run_pipeline", "train_model", "record_feedback"},
    "auditor": {"read_audit"},
    "privacy_officer": {"read_deidentified", "reidentify", "read_audit", "approve_ethics", "record_sharing_agreement"},
    "admin": {"run_pipeline", "rotate_keys", "read_audit", "manage_roles"},
}
PRIVILEGED = {"reidentify", "rotate_keys", "export_dataset", "manage_roles", "sign_notes"}


class DeadVaultProvider(LocalTestKeyProvider):
    """Works until ``down`` is set, then behaves like an unreachable Vault."""

    down = False

    def unwrap_data_key(self, wrapped: str) -> bytes:
        if self.down:
            raise VaultUnavailableError("cannot connect to Vault at http://127.0.0.1:1")
        return super().unwrap_data_key(wrapped)


@pytest.fixture
def keys() -> DeadVaultProvider:
    return DeadVaultProvider()


@pytest.fixture
def registry(tmp_path: Path, keys: DeadVaultProvider) -> PrincipalRegistry:
    return PrincipalRegistry(tmp_path / "principals.json", keys)


def enrol(registry: PrincipalRegistry, name: str, role: str) -> pyotp.TOTP:
    """Add, enrol and confirm a principal; return its authenticator."""
    registry.add_principal(name, role, now=NOW)
    uri = registry.enrol_totp(name, now=NOW)
    authenticator = pyotp.parse_uri(uri)
    assert registry.confirm_totp(name, authenticator.at(NOW - STEP), now=NOW).ok
    return authenticator


def wrong_code(authenticator: pyotp.TOTP, at: dt.datetime) -> str:
    """A well-formed code that is valid at no step of the drift window."""
    window = {authenticator.at(at + k * STEP) for k in (-1, 0, 1)}
    return next(c for c in ("000000", "111111", "222222", "333333") if c not in window)


def test_matrix_file_declares_exactly_these_roles_and_actions() -> None:
    matrix = load_permissions()
    assert sorted(matrix.roles) == sorted(ROLES)
    assert sorted(matrix.actions) == sorted(ACTIONS)
    assert matrix.mfa_actions == PRIVILEGED
    assert (matrix.mfa_period_s, matrix.mfa_drift_steps) == (30, 1)


@pytest.mark.parametrize("action", ACTIONS)
@pytest.mark.parametrize("role", ROLES)
def test_every_cell_of_the_matrix(registry: PrincipalRegistry, role: str, action: str) -> None:
    authenticator = enrol(registry, "user1", role)
    decision = AccessControl(registry).authorize("user1", action, mfa=authenticator.at(NOW), now=NOW)
    assert decision.allowed is (action in ALLOWED[role]), decision.reason
    assert decision.role == role and decision.policy_version == load_permissions().version
    if not decision.allowed:
        assert f"role {role!r} is not permitted to {action}" in decision.reason
        assert decision.mfa == "not_required"  # a role that may not act never gets to the MFA step
    else:
        assert decision.mfa == ("verified" if action in PRIVILEGED else "not_required")


@pytest.mark.parametrize("action", sorted(PRIVILEGED))
def test_privileged_actions_need_a_code(registry: PrincipalRegistry, action: str) -> None:
    role = next(r for r in ROLES if action in ALLOWED[r])
    enrol(registry, "user1", role)
    decision = AccessControl(registry).authorize("user1", action, now=NOW)
    assert not decision.allowed and decision.mfa == "missing" and "needs MFA" in decision.reason
    with pytest.raises(AccessDenied, match="needs MFA"):
        AccessControl(registry).require("user1", action, now=NOW)


def test_wrong_expired_and_replayed_codes_are_refused(registry: PrincipalRegistry) -> None:
    authenticator = enrol(registry, "po", "privacy_officer")
    control = AccessControl(registry)
    good = authenticator.at(NOW)
    assert control.authorize("po", "reidentify", mfa=wrong_code(authenticator, NOW), now=NOW).mfa == "failed"
    expired = authenticator.at(NOW - 3 * STEP)
    decision = control.authorize("po", "reidentify", mfa=expired, now=NOW)
    assert not decision.allowed and "wrong or expired" in decision.reason
    assert control.authorize("po", "reidentify", mfa="12ab56", now=NOW).mfa == "malformed"

    assert control.authorize("po", "reidentify", mfa=good, now=NOW).allowed
    replay = control.authorize("po", "reidentify", mfa=good, now=NOW + dt.timedelta(seconds=5))
    assert not replay.allowed and replay.mfa == "replayed"


def test_one_step_of_drift_is_accepted_either_way(registry: PrincipalRegistry) -> None:
    authenticator = enrol(registry, "po", "privacy_officer")
    control = AccessControl(registry)
    later = NOW + 10 * STEP
    assert control.authorize("po", "reidentify", mfa=authenticator.at(later - STEP), now=later).allowed
    assert control.authorize("po", "reidentify", mfa=authenticator.at(later + 2 * STEP), now=later + STEP).allowed
    assert not control.authorize("po", "reidentify", mfa=authenticator.at(later + 4 * STEP), now=later + STEP).allowed


def test_repeated_failures_lock_mfa_until_reset(registry: PrincipalRegistry) -> None:
    authenticator = enrol(registry, "po", "privacy_officer")
    control = AccessControl(registry)
    for _ in range(load_permissions().mfa_max_failures):
        assert control.authorize("po", "reidentify", mfa=wrong_code(authenticator, NOW), now=NOW).mfa == "failed"
    locked = control.authorize("po", "reidentify", mfa=authenticator.at(NOW), now=NOW)
    assert not locked.allowed and locked.mfa == "locked" and registry.get("po").mfa_locked
    registry.reset_mfa("po")
    assert control.authorize("po", "reidentify", mfa=authenticator.at(NOW), now=NOW).allowed


def test_enrolment_is_pending_until_confirmed_and_returned_once(registry: PrincipalRegistry) -> None:
    registry.add_principal("admin1", "admin")
    uri = registry.enrol_totp("admin1", issuer="medllm-test")
    authenticator = pyotp.parse_uri(uri)
    assert uri.startswith("otpauth://totp/") and "issuer=medllm-test" in uri and authenticator.interval == 30
    pending = AccessControl(registry).authorize("admin1", "rotate_keys", mfa=authenticator.at(NOW), now=NOW)
    assert not pending.allowed and pending.mfa == "not_enrolled"
    with pytest.raises(PrincipalError, match="already has TOTP"):
        registry.enrol_totp("admin1")
    assert registry.confirm_totp("admin1", authenticator.at(NOW), now=NOW).ok
    assert registry.get("admin1").totp_state == "active"


def test_totp_secret_is_never_stored_in_plaintext(registry: PrincipalRegistry, tmp_path: Path) -> None:
    authenticator = enrol(registry, "po", "privacy_officer")
    stored = (tmp_path / "principals.json").read_bytes()
    assert authenticator.secret.encode() not in stored
    assert authenticator.secret.lower().encode() not in stored
    assert oct((tmp_path / "principals.json").stat().st_mode & 0o777) == "0o600"
    record = json.loads(stored)["principals"]["po"]
    assert record["role"] == "privacy_officer" and record["totp"]["key_ref"] == "test/local-kek"


def test_a_role_edited_into_the_file_grants_nothing(registry: PrincipalRegistry, tmp_path: Path) -> None:
    authenticator = enrol(registry, "eve", "clinician")
    path = tmp_path / "principals.json"
    data = json.loads(path.read_text())
    data["principals"]["eve"]["role"] = "data_engineer"
    path.write_text(json.dumps(data))
    control = AccessControl(registry)
    raw = control.authorize("eve", "read_raw", now=NOW)
    assert not raw.allowed and "modified outside the registry API" in raw.reason
    assert not control.authorize("eve", "export_dataset", mfa=authenticator.at(NOW), now=NOW).allowed


def test_role_change_through_the_api_keeps_mfa_working(registry: PrincipalRegistry) -> None:
    authenticator = enrol(registry, "bob", "clinician")
    registry.set_role("bob", "privacy_officer")
    assert AccessControl(registry).authorize("bob", "reidentify", mfa=authenticator.at(NOW), now=NOW).allowed


def test_unknown_principal_action_and_deactivated(registry: PrincipalRegistry) -> None:
    enrol(registry, "carol", "clinician")
    control = AccessControl(registry)
    assert control.authorize("nobody", "read_deidentified").reason == "unknown principal"
    assert "unknown action" in control.authorize("carol", "drop_tables").reason
    registry.deactivate("carol")
    assert control.authorize("carol", "read_deidentified").reason == "principal is deactivated"


def test_vault_down_fails_closed(registry: PrincipalRegistry, keys: DeadVaultProvider) -> None:
    authenticator = enrol(registry, "po", "privacy_officer")
    keys.down = True
    decision = AccessControl(registry).authorize("po", "reidentify", mfa=authenticator.at(NOW), now=NOW)
    assert not decision.allowed and "unavailable" in decision.reason


def test_every_decision_is_audited(registry: PrincipalRegistry, tmp_path: Path) -> None:
    authenticator = enrol(registry, "po", "privacy_officer")
    audit = AuditLog(tmp_path / "audit.jsonl")
    control = AccessControl(registry, audit=audit)
    control.authorize("po", "read_audit", resource="audit.jsonl")
    control.authorize("po", "read_raw", resource="table:patients")
    control.authorize("po", "reidentify", mfa=authenticator.at(NOW), now=NOW)
    control.authorize("who-knows 42", "read_raw")
    entries = list(audit.entries())
    assert [(e.actor, e.action, e.outcome) for e in entries] == [
        ("po", "read_audit", "allowed"),
        ("po", "read_raw", "denied"),
        ("po", "reidentify", "allowed"),
        ("unknown-principal", "read_raw", "denied"),
    ]
    assert entries[2].details == {"mfa": "verified", "policy_version": load_permissions().version}
    assert audit.verify().ok
