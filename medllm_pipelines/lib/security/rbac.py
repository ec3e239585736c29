"""Role-based access control with TOTP for privileged actions (clause 5.4.1.2, row S2).

The permission matrix is data (``permissions.yaml``, versioned); this module
interprets it. Principals (people or service accounts) live in a JSON registry
file with one role each: someone who needs two roles gets two principals, so
every decision and audit entry names exactly one role and separation of
duties stays visible.

MFA is TOTP (RFC 6238, 30-second steps, one step of drift either way). Secrets
are envelope-encrypted (:mod:`~medllm_pipelines.lib.security.envelope`, data key
wrapped by Vault transit) with the principal's name *and role* as associated
data: a role edited into the file by hand makes that principal's MFA fail, so
the edit cannot unlock a privileged action. A code is accepted once (replay
refused), and :data:`max_failures` wrong codes in a row lock the principal's
MFA until an admin resets it.

Registry file (JSON, 0600, replaced atomically under a lock)::

    {"format": "medllm-principals", "format_version": 1,
     "principals": {"alice": {"role": "privacy_officer", "active": true,
        "created_at": "...Z", "updated_at": "...Z",
        "seal": "<base64 envelope of nothing, AAD = name, role, status>",
        "totp": {"state": "pending|active", "secret": "<base64 envelope>",
                 "key_ref": "transit/medllm-raw-zone", "enrolled_at": "...Z",
                 "last_used_step": 58012345, "failures": 0}}}}
"""

from __future__ import annotations

import base64
import datetime as dt
import hmac
import json
import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyotp

from medllm_pipelines.lib.common.files import exclusive_lock, write_private_atomic
from medllm_pipelines.lib.security.audit import AuditLog
from medllm_pipelines.lib.security.envelope import (
    DataKeyProvider,
    decrypt_bytes,
    encrypt_bytes,
    rewrap_envelope_bytes,
)
from medllm_pipelines.lib.security.errors import SecurityError, VaultError
from medllm_pipelines.lib.security.permissions import PERMISSIONS_PATH, PermissionMatrix, load_permissions

__all__ = [
    "PERMISSIONS_PATH",
    "AccessControl",
    "AccessDenied",
    "Decision",
    "PermissionMatrix",
    "Principal",
    "PrincipalError",
    "PrincipalRegistry",
    "TotpCheck",
    "authorize",
    "load_permissions",
]

REGISTRY_FORMAT = "medllm-principals"
REGISTRY_FORMAT_VERSION = 1
_PRINCIPAL_NAME = re.compile(r"^[a-z][a-z0-9._-]{1,63}$")
_SECRET_BYTES = 20  # 160 bits, RFC 4226's recommendation for HMAC-SHA-1


class PrincipalError(SecurityError, ValueError):
    """A registry operation was invalid (unknown principal, duplicate, bad role)."""


class AccessDenied(SecurityError):
    """Raised by :meth:`AccessControl.require`; ``decision`` says why."""

    def __init__(self, decision: Decision) -> None:
        super().__init__(
            f"{decision.principal or 'unknown principal'} may not {decision.action}: {decision.reason}"
        )
        self.decision = decision


# --- principals ------------------------------------------------------------------
@dataclass(frozen=True)
class Principal:
    name: str
    role: str
    active: bool
    totp_state: str  # none | pending | active
    mfa_locked: bool


@dataclass(frozen=True)
class TotpCheck:
    ok: bool
    reason: str
    status: str  # verified | missing | not_enrolled | locked | failed | replayed | malformed


def _now_utc(now: dt.datetime | None) -> dt.datetime:
    return (now or dt.datetime.now(dt.UTC)).astimezone(dt.UTC)


def _stamp(now: dt.datetime) -> str:
    return now.isoformat(timespec="seconds").replace("+00:00", "Z")


class PrincipalRegistry:
    """The principals store: roles in clear, TOTP secrets envelope-encrypted.

    ``keys`` wraps the TOTP secrets (normally the Vault transit data key); every
    MFA check needs it, so with Vault down privileged actions fail closed.
    """

    def __init__(
        self, path: str | os.PathLike[str], keys: DataKeyProvider, *, matrix: PermissionMatrix | None = None
    ) -> None:
        self.path = Path(path)
        self.lock_path = self.path.with_name(self.path.name + ".lock")
        self.keys = keys
        self.matrix = matrix or load_permissions()

    def __repr__(self) -> str:
        return f"PrincipalRegistry({str(self.path)!r})"

    # --- reads ------------------------------------------------------------------
    def get(self, name: str) -> Principal:
        record = self._load()["principals"].get(name)
        if record is None:
            raise PrincipalError(f"no principal named {name!r} in the registry")
        return self._principal(name, record)

    def find(self, name: str) -> Principal | None:
        record = self._load()["principals"].get(name)
        return None if record is None else self._principal(name, record)

    def list(self) -> list[Principal]:
        return [self._principal(n, r) for n, r in sorted(self._load()["principals"].items())]

    def is_empty(self) -> bool:
        return not self._load()["principals"]

    # --- writes -----------------------------------------------------------------
    def add_principal(self, name: str, role: str, *, now: dt.datetime | None = None) -> Principal:
        """Register a principal (no MFA yet: call :meth:`enrol_totp`)."""
        if not _PRINCIPAL_NAME.fullmatch(name):
            raise PrincipalError(f"principal names must match {_PRINCIPAL_NAME.pattern}")
        self._check_role(role)
        stamp = _stamp(_now_utc(now))
        with self._transaction() as data:
            if name in data["principals"]:
                raise PrincipalError(f"principal {name!r} already exists")
            data["principals"][name] = {"role": role, "active": True, "created_at": stamp, "updated_at": stamp,
                                        "totp": None}
            self._seal_record(name, data["principals"][name])
            return self._principal(name, data["principals"][name])

    def set_role(self, name: str, role: str, *, now: dt.datetime | None = None) -> Principal:
        """Change a role; the TOTP secret is re-sealed to the new role."""
        self._check_role(role)
        with self._transaction() as data:
            record = self._record(data, name)
            totp = record.get("totp")
            if totp:
                secret = self._open_secret(name, record["role"], totp)
                totp["secret"] = self._seal_secret(name, role, secret)
            record["role"] = role
            record["updated_at"] = _stamp(_now_utc(now))
            self._seal_record(name, record)
            return self._principal(name, record)

    def deactivate(self, name: str, *, now: dt.datetime | None = None) -> Principal:
        with self._transaction() as data:
            record = self._record(data, name)
            record["active"] = False
            record["updated_at"] = _stamp(_now_utc(now))
            self._seal_record(name, record)
            return self._principal(name, record)

    def enrol_totp(self, name: str, *, issuer: str = "medllm-pipelines", replace: bool = False,
                   now: dt.datetime | None = None) -> str:
        """Create a TOTP secret and return its ``otpauth://`` provisioning URI.

        The URI holds the secret: show it once (QR code) and never log or store
        it. The enrolment is *pending* until :meth:`confirm_totp` sees a valid
        code, proving the authenticator holds it. Re-enrolling needs ``replace``.
        """
        secret = base64.b32encode(os.urandom(_SECRET_BYTES)).decode("ascii")
        with self._transaction() as data:
            record = self._record(data, name)
            if record.get("totp") and not replace:
                raise PrincipalError(f"principal {name!r} already has TOTP enrolled; pass replace=True to re-enrol")
            record["totp"] = {
                "state": "pending",
                "secret": self._seal_secret(name, record["role"], secret),
                "key_ref": self.keys.key_ref,
                "enrolled_at": _stamp(_now_utc(now)),
                "last_used_step": None,
                "failures": 0,
            }
            record["updated_at"] = record["totp"]["enrolled_at"]
        return self._totp(secret).provisioning_uri(name=name, issuer_name=issuer)

    def confirm_totp(self, name: str, code: str, *, now: dt.datetime | None = None) -> TotpCheck:
        """Activate a pending enrolment with a first valid code."""
        return self._check_code(name, code, now, confirming=True)

    def verify_totp(self, name: str, code: str | None, *, now: dt.datetime | None = None) -> TotpCheck:
        """Check a code for an active enrolment; each code is accepted once."""
        if code is None or code == "":
            return TotpCheck(False, "this action needs a TOTP code (MFA) and none was given", "missing")
        return self._check_code(name, code, now, confirming=False)

    def reset_mfa(self, name: str, *, now: dt.datetime | None = None) -> Principal:
        """Clear a lockout (after an admin has verified the person out of band)."""
        with self._transaction() as data:
            record = self._record(data, name)
            if record.get("totp"):
                record["totp"]["failures"] = 0
            record["updated_at"] = _stamp(_now_utc(now))
            return self._principal(name, record)

    def verify_record(self, name: str) -> bool:
        """Whether the principal's role and status are as the registry API wrote them.

        Each record carries a seal (an envelope over nothing, with name, role
        and status as associated data); a record edited by hand fails it. Needs
        the key service: a VaultError propagates (callers deny).
        """
        record = self._load()["principals"].get(name)
        if record is None or "seal" not in record:
            return False
        try:
            decrypt_bytes(base64.b64decode(record["seal"]), self.keys, aad=_record_aad(name, record))
        except VaultError:
            raise
        except (SecurityError, ValueError):
            return False
        return True

    def rewrap_secrets(self, rewrap: Callable[[str], str]) -> int:
        """Rewrap every envelope (record seals, TOTP secrets) after a transit rotation.

        Returns how many envelopes changed; the data they protect is untouched.
        """
        changed = 0
        with self._transaction() as data:
            for record in data["principals"].values():
                holders = [(record, "seal")]
                if record.get("totp"):
                    holders.append((record["totp"], "secret"))
                for holder, field_name in holders:
                    if field_name not in holder:
                        continue
                    new_blob = rewrap_envelope_bytes(base64.b64decode(holder[field_name]), rewrap)
                    if new_blob is not None:
                        holder[field_name] = base64.b64encode(new_blob).decode("ascii")
                        changed += 1
        return changed

    def check_envelopes(self) -> tuple[int, int]:
        """(envelopes held, envelopes that open): record seals and TOTP secrets.

        The count a key rotation compares before and after; a VaultError propagates.
        """
        held = opened = 0
        for name, record in sorted(self._load()["principals"].items()):
            if "seal" in record:
                held += 1
                opened += int(self.verify_record(name))
            totp = record.get("totp")
            if totp and "secret" in totp:
                held += 1
                try:
                    self._open_secret(name, record["role"], totp)
                    opened += 1
                except VaultError:
                    raise
                except (SecurityError, ValueError):
                    pass
        return held, opened

    # --- TOTP internals -----------------------------------------------------------
    def _totp(self, secret: str) -> pyotp.TOTP:
        return pyotp.TOTP(secret, digits=self.matrix.mfa_digits, interval=self.matrix.mfa_period_s)

    def _check_code(self, name: str, code: str, now: dt.datetime | None, *, confirming: bool) -> TotpCheck:
        matrix = self.matrix
        if not isinstance(code, str) or not re.fullmatch(rf"\d{{{matrix.mfa_digits}}}", code):
            malformed = TotpCheck(False, f"a TOTP code is {matrix.mfa_digits} digits", "malformed")
        else:
            malformed = None
        moment = _now_utc(now)
        with self._transaction() as data:
            record = self._record(data, name)
            totp = record.get("totp")
            wanted = "pending" if confirming else "active"
            if not record.get("active"):
                return TotpCheck(False, f"principal {name!r} is deactivated", "failed")
            if not totp or totp["state"] != wanted:
                state = totp["state"] if totp else "none"
                reason = ("no pending TOTP enrolment to confirm" if confirming
                          else f"principal {name!r} has no confirmed TOTP enrolment (state: {state})")
                return TotpCheck(False, reason, "not_enrolled")
            if totp["failures"] >= matrix.mfa_max_failures:
                return TotpCheck(False, f"MFA is locked after {totp['failures']} wrong codes; an admin must reset it",
                                 "locked")
            if malformed is not None:
                totp["failures"] += 1
                return malformed
            generator = self._totp(self._open_secret(name, record["role"], totp))
            current = generator.timecode(moment)
            matched = None
            for offset in range(-matrix.mfa_drift_steps, matrix.mfa_drift_steps + 1):
                if hmac.compare_digest(generator.generate_otp(current + offset), code):
                    matched = current + offset
            last = totp.get("last_used_step")
            if matched is None:
                totp["failures"] += 1
                return TotpCheck(False, "TOTP code is wrong or expired", "failed")
            if last is not None and matched <= last:
                totp["failures"] += 1
                return TotpCheck(False, "TOTP code was already used (replay refused)", "replayed")
            totp["last_used_step"] = matched
            totp["failures"] = 0
            if confirming:
                totp["state"] = "active"
            return TotpCheck(True, "TOTP code verified", "verified")

    def _seal_record(self, name: str, record: dict[str, Any]) -> None:
        record["seal"] = base64.b64encode(encrypt_bytes(b"", self.keys, aad=_record_aad(name, record))).decode("ascii")

    def _seal_secret(self, name: str, role: str, secret: str) -> str:
        blob = encrypt_bytes(secret.encode("ascii"), self.keys, aad=_secret_aad(name, role))
        return base64.b64encode(blob).decode("ascii")

    def _open_secret(self, name: str, role: str, totp: dict[str, Any]) -> str:
        return decrypt_bytes(base64.b64decode(totp["secret"]), self.keys, aad=_secret_aad(name, role)).decode("ascii")

    # --- storage ------------------------------------------------------------------
    def _check_role(self, role: str) -> None:
        if role not in self.matrix.roles:
            raise PrincipalError(f"unknown role {role!r}; roles are {sorted(self.matrix.roles)}")

    @staticmethod
    def _record(data: dict[str, Any], name: str) -> dict[str, Any]:
        record = data["principals"].get(name)
        if record is None:
            raise PrincipalError(f"no principal named {name!r} in the registry")
        return record

    def _principal(self, name: str, record: dict[str, Any]) -> Principal:
        totp = record.get("totp")
        return Principal(
            name=name,
            role=record["role"],
            active=bool(record["active"]),
            totp_state=totp["state"] if totp else "none",
            mfa_locked=bool(totp and totp["failures"] >= self.matrix.mfa_max_failures),
        )

    def _load(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {"format": REGISTRY_FORMAT, "format_version": REGISTRY_FORMAT_VERSION, "principals": {}}
        if data.get("format") != REGISTRY_FORMAT or data.get("format_version") != REGISTRY_FORMAT_VERSION:
            raise PrincipalError(f"{self.path.name} is not a version-{REGISTRY_FORMAT_VERSION} principals registry")
        return data

    @contextmanager
    def _transaction(self) -> Iterator[dict[str, Any]]:
        """Load under an exclusive lock, let the caller edit, write back atomically.

        Written back even when the body returns early (failure counters must
        persist), but not when it raises.
        """
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        with exclusive_lock(self.lock_path):
            data = self._load()
            before = json.dumps(data, sort_keys=True)
            yield data
            if json.dumps(data, sort_keys=True) != before:
                write_private_atomic(self.path, json.dumps(data, sort_keys=True, indent=1, ensure_ascii=False) + "\n")


def _record_aad(name: str, record: dict[str, Any]) -> bytes:
    return f"medllm-principal:v1:{name}:{record['role']}:{'active' if record['active'] else 'inactive'}".encode()


def _secret_aad(name: str, role: str) -> bytes:
    return f"medllm-totp:v1:{name}:{role}".encode()


# --- decisions -----------------------------------------------------------------
@dataclass(frozen=True)
class Decision:
    allowed: bool
    principal: str | None
    role: str | None
    action: str
    reason: str
    mfa: str  # not_required | verified | missing | not_enrolled | locked | failed | replayed | malformed | unavailable
    policy_version: str

    def as_metadata(self) -> dict[str, Any]:
        return {
            "access_principal": self.principal or "",
            "access_role": self.role or "",
            "access_action": self.action,
            "access_allowed": self.allowed,
            "access_mfa": self.mfa,
            "access_policy_version": self.policy_version,
        }


class AccessControl:
    """Decides (and optionally audits) whether a principal may take an action.

    With ``audit`` every decision, allowed or denied, becomes one audit entry.
    """

    def __init__(self, registry: PrincipalRegistry, *, audit: AuditLog | None = None) -> None:
        self.registry = registry
        self.matrix = registry.matrix
        self.audit = audit

    def authorize(self, principal: str, action: str, *, mfa: str | None = None, resource: str = "-",
                  now: dt.datetime | None = None) -> Decision:
        """Return the decision; never raises for a denial (see :meth:`require`)."""
        decision = self._decide(principal, action, mfa, now)
        if self.audit is not None:
            self.audit.append(
                actor=decision.principal or "unknown-principal",
                role=decision.role or "none",
                action=action if action in self.matrix.actions else "unknown-action",
                resource=resource,
                outcome="allowed" if decision.allowed else "denied",
                reason=decision.reason,
                details={"mfa": decision.mfa, "policy_version": decision.policy_version},
            )
        return decision

    def require(self, principal: str, action: str, *, mfa: str | None = None, resource: str = "-",
                now: dt.datetime | None = None) -> Decision:
        """Like :meth:`authorize`, but raise :class:`AccessDenied` on a denial."""
        decision = self.authorize(principal, action, mfa=mfa, resource=resource, now=now)
        if not decision.allowed:
            raise AccessDenied(decision)
        return decision

    def _decide(self, name: str, action: str, mfa: str | None, now: dt.datetime | None) -> Decision:
        matrix = self.matrix

        def deny(reason: str, principal: Principal | None, mfa_status: str = "not_required") -> Decision:
            return Decision(False, principal.name if principal else None, principal.role if principal else None,
                            action, reason, mfa_status, matrix.version)

        principal = self.registry.find(name) if isinstance(name, str) and _PRINCIPAL_NAME.fullmatch(name) else None
        if action not in matrix.actions:
            return deny(f"unknown action (not in permissions v{matrix.version})", principal)
        if principal is None:
            return deny("unknown principal", None)
        if not principal.active:
            return deny("principal is deactivated", principal)
        try:
            intact = self.registry.verify_record(principal.name)
        except VaultError:
            return deny("the registry record could not be checked: the key service is unavailable", principal)
        if not intact:
            return deny("the principal's registry record was modified outside the registry API", principal)
        if not matrix.allows(principal.role, action):
            allowed = ", ".join(matrix.roles_allowed(action)) or "no role"
            return deny(f"role {principal.role!r} is not permitted to {action} (permissions v{matrix.version}; "
                        f"allowed: {allowed})", principal)
        if not matrix.requires_mfa(action):
            return Decision(True, principal.name, principal.role, action,
                            f"role {principal.role!r} is permitted to {action}", "not_required", matrix.version)
        try:
            check = self.registry.verify_totp(principal.name, mfa, now=now)
        except VaultError:
            return deny("MFA could not be checked: the key service is unavailable", principal, "unavailable")
        except SecurityError:
            return deny("MFA could not be checked: the stored TOTP secret does not open for this principal and "
                        "role (was the registry edited?)", principal, "failed")
        if not check.ok:
            return deny(f"{action} is privileged and needs MFA: {check.reason}", principal, check.status)
        return Decision(True, principal.name, principal.role, action,
                        f"role {principal.role!r} is permitted to {action}; MFA verified", "verified", matrix.version)


def authorize(principal: str, action: str, *, mfa: str | None = None, registry: PrincipalRegistry,
              audit: AuditLog | None = None, resource: str = "-", now: dt.datetime | None = None) -> Decision:
    """Module-level shortcut for ``AccessControl(registry, audit=audit).authorize(...)``."""
    return AccessControl(registry, audit=audit).authorize(principal, action, mfa=mfa, resource=resource, now=now)
