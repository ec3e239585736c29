"""Lawful re-identification through the protected pseudonym map (clause 5.4.1.4, row S4).

The pseudonym map (``institution, patient_key, mrn, patient_pseudonym``) lives
only in the encrypted raw zone. Resolving a pseudonym back to a person is
allowed for one role, ``privacy_officer``, with a fresh TOTP code, for a
declared lawful basis; every attempt - allowed, denied or not found - becomes
exactly one audit entry *before* anything is returned, so an answer without an
audit trail cannot exist (if the audit write fails, nothing is returned).

The answer is the minimum a treating institution needs to act: institution +
MRN (the institution's own record key only where no MRN exists). It is
never logged, never put into the audit entry, and masked in ``repr``.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from medllm_pipelines.lib.security.audit import AuditLog
from medllm_pipelines.lib.security.errors import SecurityError
from medllm_pipelines.lib.security.rbac import AccessControl, AccessDenied, Decision, PrincipalRegistry

__all__ = [
    "ACTION",
    "LAWFUL_BASES",
    "MAP_COLUMNS",
    "PseudonymNotFound",
    "ReidentificationDenied",
    "ReidentificationRequest",
    "ReidentificationResult",
    "ResolvedIdentity",
    "reidentify",
]

ACTION = "reidentify"
MAP_COLUMNS = ("institution", "patient_key", "mrn", "patient_pseudonym")
# A closed list: free text would invite identifiers into the audit log.
LAWFUL_BASES: dict[str, str] = {
    "patient_safety": "a research finding endangers the patient and must reach the treating clinician",
    "clinical_follow_up": "an incidental finding needs clinical follow-up agreed by the ethics committee",
    "data_subject_request": "the patient exercises a right (access, correction, withdrawal) that needs the record",
    "court_order": "a court or prosecutor orders disclosure",
    "regulator_request": "a health or data-protection authority requests it under its statutory powers",
}
_CASE_REFERENCE = re.compile(r"^(?=.*[A-Za-z])[A-Za-z0-9][A-Za-z0-9._/-]{2,63}$")


class ReidentificationDenied(AccessDenied):
    """The requester may not re-identify (role, MFA, or an invalid request)."""


class PseudonymNotFound(SecurityError, LookupError):
    """The pseudonym is well-formed but not in the map (the attempt is still audited)."""


@dataclass(frozen=True)
class ReidentificationRequest:
    pseudonym: str
    reason: str  # a key of LAWFUL_BASES
    case_reference: str | None = None  # ticket, court order or committee decision number


@dataclass(frozen=True)
class ResolvedIdentity:
    """Where the person's record is. Treat as identifiable: never log or persist."""

    institution: str
    mrn: str | None = field(repr=False)
    patient_key: str | None = field(default=None, repr=False)

    def __repr__(self) -> str:
        return f"ResolvedIdentity(institution={self.institution!r}, mrn=<redacted>)"


@dataclass(frozen=True)
class ReidentificationResult:
    pseudonym: str
    identities: tuple[ResolvedIdentity, ...]
    decision: Decision
    audit_seq: int


def _is_principal_name(name: object) -> bool:
    return isinstance(name, str) and bool(re.fullmatch(r"[a-z][a-z0-9._-]{1,63}", name))


def _default_pseudonym_pattern() -> re.Pattern[str]:
    from medllm_pipelines.lib.deidentify.policy import load_policy

    policy = load_policy()
    return re.compile(rf"^{re.escape(policy.pseudonym_prefix)}[0-9a-f]{{{policy.pseudonym_hex_chars}}}$")


def reidentify(
    request: ReidentificationRequest,
    *,
    requester: str,
    mfa: str | None,
    pseudonym_map: pd.DataFrame | Callable[[], pd.DataFrame],
    registry: PrincipalRegistry,
    audit: AuditLog,
    pseudonym_pattern: re.Pattern[str] | None = None,
    now: dt.datetime | None = None,
) -> ReidentificationResult:
    """Resolve one pseudonym for an authorised privacy officer, auditing the attempt.

    Raises ReidentificationDenied (not allowed, bad MFA, malformed request) or
    PseudonymNotFound; in every case the audit entry is already written.
    ``pseudonym_map`` may be a loader (e.g. a raw-zone read), called only once
    the request is allowed, so the identifiable map is never decrypted for a
    requester who may not see it.
    """
    if isinstance(pseudonym_map, pd.DataFrame):
        _check_map(pseudonym_map)
    pattern = pseudonym_pattern or _default_pseudonym_pattern()
    well_formed = isinstance(request.pseudonym, str) and bool(pattern.fullmatch(request.pseudonym))
    # A malformed "pseudonym" may be an MRN or a name typed by mistake: keep it out of the log.
    resource = f"pseudonym:{request.pseudonym}" if well_formed else "pseudonym:<malformed>"
    details: dict[str, Any] = {"lawful_basis": request.reason if request.reason in LAWFUL_BASES else "<invalid>"}
    case_ok = request.case_reference is None or bool(_CASE_REFERENCE.fullmatch(request.case_reference))
    if request.case_reference is not None:
        details["case_reference"] = request.case_reference if case_ok else "<invalid>"

    # The request is checked before the MFA code, so a malformed request does not burn a code.
    problem = None
    if not well_formed:
        problem = "the pseudonym is malformed"
    elif request.reason not in LAWFUL_BASES:
        problem = f"the reason must be one of the lawful bases {sorted(LAWFUL_BASES)}"
    elif not case_ok:
        problem = "the case reference must be 3-64 characters of letters, digits, . _ / - with a letter"
    if problem is None:
        decision = AccessControl(registry).authorize(requester, ACTION, mfa=mfa, now=now)
    else:
        known = registry.find(requester) if _is_principal_name(requester) else None
        decision = Decision(False, known.name if known else None, known.role if known else None, ACTION, problem,
                            "not_checked", registry.matrix.version)
    details.update(mfa=decision.mfa, policy_version=decision.policy_version)
    actor = decision.principal or "unknown-principal"
    role = decision.role or "none"
    if not decision.allowed:
        audit.append(actor=actor, role=role, action=ACTION, resource=resource, outcome="denied",
                     reason=decision.reason, details=details)
        raise ReidentificationDenied(decision)

    try:
        frame = pseudonym_map if isinstance(pseudonym_map, pd.DataFrame) else pseudonym_map()
        _check_map(frame)
    except Exception as exc:  # the attempt was allowed: it is audited as failed, whatever went wrong
        audit.append(actor=actor, role=role, action=ACTION, resource=resource, outcome="failed",
                     reason=f"the pseudonym map could not be read ({type(exc).__name__})", details=details)
        raise
    rows = frame.loc[frame["patient_pseudonym"] == request.pseudonym, list(MAP_COLUMNS)]
    if rows.empty:
        audit.append(actor=actor, role=role, action=ACTION, resource=resource, outcome="failed",
                     reason="the pseudonym is not in the pseudonym map", details=details)
        raise PseudonymNotFound("the pseudonym is not in the pseudonym map")

    identities = sorted(
        {
            ResolvedIdentity(
                institution=str(row.institution),
                mrn=None if pd.isna(row.mrn) else str(row.mrn),
                patient_key=str(row.patient_key) if pd.isna(row.mrn) else None,
            )
            for row in rows.itertuples(index=False)
        },
        key=lambda identity: (identity.institution, identity.mrn or "", identity.patient_key or ""),
    )
    details.update(matches=len(identities), institutions=sorted({i.institution for i in identities}))
    entry = audit.append(actor=actor, role=role, action=ACTION, resource=resource, outcome="allowed",
                         reason=f"resolved for lawful basis {request.reason}", details=details)
    return ReidentificationResult(request.pseudonym, tuple(identities), decision, entry.seq)


def _check_map(frame: pd.DataFrame) -> None:
    missing = [c for c in MAP_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"the pseudonym map lacks columns {missing}")
