"""Ethics approvals and data-sharing agreements as versioned records (clauses 4.1.2, 4.2.2; rows E1, E3).

Records are YAML files under a governance folder, one folder per record id
and one file per version::

    <root>/approvals/<id>/v0001.yaml
    <root>/agreements/<id>/v0001.yaml

A version is never rewritten (files are created exclusively); an amendment,
a change of scope or a revocation is a new version, so the folder is its own
history and ``git``/backups show who changed what. The latest version of a
record is the one in force.

Pipelines call :meth:`GovernanceStore.require_valid_approval` before building
training data and :meth:`GovernanceStore.require_sharing_agreement` before an
export; :func:`~medllm_pipelines.lib.security.exports.export_dataset` then
refuses identifiable columns and writes the export envelope-encrypted, never
in plaintext.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from medllm_pipelines.lib.security.errors import SecurityError

__all__ = [
    "ApprovalError",
    "EthicsApproval",
    "ExportRefused",
    "GovernanceError",
    "GovernanceStore",
    "RecordedVersion",
    "SharingAgreement",
    "SharingAgreementError",
]

_RECORD_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{2,63}$")
_SPEC_ID = re.compile(r"^[a-z][a-z0-9_]*(@[0-9][0-9A-Za-z.+-]*)?$")
_COUNTRY = re.compile(r"^[A-Z]{2}$")


class GovernanceError(SecurityError):
    """Base of approval and agreement errors; ``kind`` is a stable code for checks."""

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


class ApprovalError(GovernanceError):
    """No ethics approval in force covers the project and model spec (kind: missing,
    out_of_scope, scope_changed, expired, not_yet_valid, revoked)."""


class SharingAgreementError(GovernanceError):
    """No sharing agreement in force covers the export (kind: missing, not_covered,
    expired, not_yet_valid, revoked, cross_border)."""


class ExportRefused(SecurityError):
    """The frame holds identifiable columns or values; nothing was written."""


def _date(value: Any, what: str) -> dt.date:
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    try:
        return dt.date.fromisoformat(str(value))
    except ValueError:
        raise ValueError(f"{what} must be an ISO date (YYYY-MM-DD), got {value!r}") from None


def _optional_date(value: Any, what: str) -> dt.date | None:
    return None if value in (None, "") else _date(value, what)


@dataclass(frozen=True)
class EthicsApproval:
    """An ethics committee's approval of a project for named model specs.

    ``scope`` entries are model spec ids (``lib/curate/specs/<id>.yaml``),
    optionally pinned to a spec version (``t2d_risk@1.1.0``): a pinned entry
    stops covering the spec once the spec's version changes, which is how a
    change of scope is forced back to the committee.
    """

    id: str
    project: str
    purpose: str
    scope: tuple[str, ...]
    approved_on: dt.date
    expires_on: dt.date
    committee: str
    revoked_on: dt.date | None = None
    version: int = 0
    recorded_at: str = ""
    recorded_by: str = ""

    def __post_init__(self) -> None:
        if not _RECORD_ID.fullmatch(self.id):
            raise ValueError(f"approval id must match {_RECORD_ID.pattern}")
        if not self.project or not self.purpose or not self.committee:
            raise ValueError("an approval needs a project, a purpose and the approving committee")
        if not self.scope:
            raise ValueError("an approval needs a scope (model spec ids)")
        for item in self.scope:
            if not _SPEC_ID.fullmatch(item):
                raise ValueError(f"scope entry {item!r} is not a model spec id (optionally @version)")
        if self.expires_on <= self.approved_on:
            raise ValueError("an approval must expire after it was granted")

    def covers(self, spec_id: str, spec_version: str | None = None) -> str | None:
        """None if the spec is in scope, else why not ('out_of_scope' | 'scope_changed')."""
        pinned = [item.partition("@")[2] for item in self.scope if item.partition("@")[0] == spec_id]
        if not pinned:
            return "out_of_scope"
        if "" in pinned or spec_version is None or spec_version in pinned:
            return None
        return "scope_changed"

    def validity(self, today: dt.date) -> str | None:
        """None if in force on ``today``, else 'not_yet_valid' | 'expired' | 'revoked'."""
        if self.revoked_on is not None and today >= self.revoked_on:
            return "revoked"
        if today < self.approved_on:
            return "not_yet_valid"
        if today > self.expires_on:
            return "expired"
        return None

    def as_metadata(self) -> dict[str, Any]:
        return {"ethics_approval_id": self.id, "ethics_approval_version": self.version,
                "ethics_approval_expires_on": self.expires_on.isoformat(), "ethics_committee": self.committee}


@dataclass(frozen=True)
class SharingAgreement:
    """A data-sharing agreement with one recipient for named datasets.

    A cross-border agreement must name the destination country and the
    reference of the cross-border transfer assessment / standard contract
    filing that allows it (PIPL art. 38-39).
    """

    id: str
    recipient: str
    purpose: str
    datasets: tuple[str, ...]
    cross_border: bool
    valid_until: dt.date
    valid_from: dt.date | None = None
    destination_country: str | None = None
    cross_border_assessment: str | None = None
    approval_id: str | None = None
    revoked_on: dt.date | None = None
    version: int = 0
    recorded_at: str = ""
    recorded_by: str = ""

    def __post_init__(self) -> None:
        if not _RECORD_ID.fullmatch(self.id):
            raise ValueError(f"agreement id must match {_RECORD_ID.pattern}")
        if not self.recipient or not self.purpose or not self.datasets:
            raise ValueError("an agreement needs a recipient, a purpose and at least one dataset")
        if self.cross_border:
            if not self.destination_country or not _COUNTRY.fullmatch(self.destination_country):
                raise ValueError("a cross-border agreement needs destination_country (ISO 3166 alpha-2)")
            if not self.cross_border_assessment:
                raise ValueError("a cross-border agreement needs the cross_border_assessment reference")
        if self.valid_from is not None and self.valid_until < self.valid_from:
            raise ValueError("an agreement must end after it starts")

    def validity(self, today: dt.date) -> str | None:
        if self.revoked_on is not None and today >= self.revoked_on:
            return "revoked"
        if self.valid_from is not None and today < self.valid_from:
            return "not_yet_valid"
        if today > self.valid_until:
            return "expired"
        return None

    def as_metadata(self) -> dict[str, Any]:
        return {"sharing_agreement_id": self.id, "sharing_agreement_version": self.version,
                "sharing_recipient": self.recipient, "sharing_cross_border": self.cross_border,
                "sharing_valid_until": self.valid_until.isoformat()}


@dataclass(frozen=True)
class RecordedVersion:
    path: Path
    version: int
    sha256: str


_KINDS: dict[str, tuple[str, type]] = {"approvals": ("approval", EthicsApproval),
                                       "agreements": ("agreement", SharingAgreement)}


class GovernanceStore:
    """Approvals and agreements under ``root`` (e.g. ``$MEDLLM_HOME/governance``)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    # --- writing -----------------------------------------------------------------
    def record_approval(self, approval: EthicsApproval, *, recorded_by: str,
                        now: dt.datetime | None = None) -> RecordedVersion:
        """Store a new approval or a new version of one (amendment, scope change)."""
        return self._record("approvals", approval, recorded_by, now)

    def revoke_approval(self, approval_id: str, revoked_on: dt.date, *, recorded_by: str,
                        now: dt.datetime | None = None) -> RecordedVersion:
        current = self.approval(approval_id)
        return self._record("approvals", dataclasses.replace(current, revoked_on=revoked_on), recorded_by, now)

    def record_agreement(self, agreement: SharingAgreement, *, recorded_by: str,
                         now: dt.datetime | None = None) -> RecordedVersion:
        return self._record("agreements", agreement, recorded_by, now)

    def revoke_agreement(self, agreement_id: str, revoked_on: dt.date, *, recorded_by: str,
                         now: dt.datetime | None = None) -> RecordedVersion:
        current = self.agreement(agreement_id)
        return self._record("agreements", dataclasses.replace(current, revoked_on=revoked_on), recorded_by, now)

    # --- reading -----------------------------------------------------------------
    def approvals(self) -> list[EthicsApproval]:
        """The version in force (latest) of every approval."""
        return [self._latest("approvals", record_id) for record_id in self._ids("approvals")]

    def agreements(self) -> list[SharingAgreement]:
        return [self._latest("agreements", record_id) for record_id in self._ids("agreements")]

    def approval(self, approval_id: str) -> EthicsApproval:
        return self._latest("approvals", approval_id)

    def agreement(self, agreement_id: str) -> SharingAgreement:
        return self._latest("agreements", agreement_id)

    def history(self, kind: str, record_id: str) -> list[EthicsApproval | SharingAgreement]:
        """Every version of a record, oldest first (kind: 'approvals' | 'agreements')."""
        return [self._read(kind, path) for path in self._versions(kind, record_id)]

    # --- the gates ---------------------------------------------------------------
    def require_valid_approval(self, project: str, spec_id: str, today: dt.date, *,
                               spec_version: str | None = None) -> EthicsApproval:
        """The approval in force for ``project`` covering ``spec_id``, else ApprovalError.

        With ``spec_version``, approvals that pin another version of the spec
        do not count (the spec changed since the committee saw it).
        """
        candidates = [a for a in self.approvals() if a.project == project]
        if not candidates:
            raise ApprovalError(f"project {project!r} has no ethics approval on record; record the committee's "
                                "approval before building training data", "missing")
        problems: list[tuple[str, EthicsApproval]] = []
        valid: list[EthicsApproval] = []
        for approval in candidates:
            problem = approval.covers(spec_id, spec_version) or approval.validity(today)
            if problem is None:
                valid.append(approval)
            else:
                problems.append((problem, approval))
        if valid:
            return max(valid, key=lambda a: (a.expires_on, a.id))
        order = ["revoked", "expired", "not_yet_valid", "scope_changed", "out_of_scope"]
        kind, approval = min(problems, key=lambda p: order.index(p[0]))
        message = {
            "out_of_scope": f"no ethics approval of project {project!r} covers model spec {spec_id!r} "
                            f"(approvals on file: {sorted(a.id for a in candidates)}); a new scope needs re-approval",
            "scope_changed": f"approval {approval.id!r} covers {spec_id!r} only at version(s) "
                             f"{[s for s in approval.scope if s.startswith(spec_id + '@')]}, not {spec_version}; "
                             "the changed spec needs re-approval",
            "expired": f"ethics approval {approval.id!r} of project {project!r} expired on "
                       f"{approval.expires_on.isoformat()}",
            "not_yet_valid": f"ethics approval {approval.id!r} only starts on {approval.approved_on.isoformat()}",
            "revoked": f"ethics approval {approval.id!r} was revoked on "
                       f"{approval.revoked_on.isoformat() if approval.revoked_on else '?'}",
        }[kind]
        raise ApprovalError(message, kind)

    def require_sharing_agreement(self, recipient: str, dataset: str, today: dt.date, *,
                                  cross_border: bool, agreement_id: str | None = None) -> SharingAgreement:
        """The agreement in force that lets ``recipient`` receive ``dataset``.

        ``cross_border`` says whether this export leaves the country; only an
        agreement recorded as cross-border (with its assessment) allows that.
        """
        candidates = [a for a in self.agreements() if a.recipient == recipient
                      and (agreement_id is None or a.id == agreement_id)]
        if not candidates:
            which = f"agreement {agreement_id!r} with " if agreement_id else "agreement with "
            raise SharingAgreementError(f"no data-sharing {which}recipient {recipient!r} is on record; exports "
                                        "need a recorded agreement", "missing")
        problems: list[tuple[str, SharingAgreement]] = []
        for agreement in candidates:
            if dataset not in agreement.datasets:
                problems.append(("not_covered", agreement))
            elif (why := agreement.validity(today)) is not None:
                problems.append((why, agreement))
            elif cross_border and not agreement.cross_border:
                problems.append(("cross_border", agreement))
            else:
                return agreement
        order = ["revoked", "expired", "not_yet_valid", "cross_border", "not_covered"]
        kind, agreement = min(problems, key=lambda p: order.index(p[0]))
        message = {
            "not_covered": f"no agreement with {recipient!r} covers dataset {dataset!r}",
            "expired": f"sharing agreement {agreement.id!r} expired on {agreement.valid_until.isoformat()}",
            "not_yet_valid": f"sharing agreement {agreement.id!r} is not in force yet",
            "revoked": f"sharing agreement {agreement.id!r} was revoked",
            "cross_border": f"sharing agreement {agreement.id!r} does not allow a cross-border transfer",
        }[kind]
        raise SharingAgreementError(message, kind)

    # --- storage -----------------------------------------------------------------
    def _folder(self, kind: str, record_id: str) -> Path:
        if not _RECORD_ID.fullmatch(record_id):
            raise ValueError(f"invalid record id {record_id!r}")
        return self.root / kind / record_id

    def _ids(self, kind: str) -> list[str]:
        folder = self.root / kind
        if not folder.is_dir():
            return []
        return sorted(p.name for p in folder.iterdir() if p.is_dir() and _RECORD_ID.fullmatch(p.name)
                      and any(p.glob("v*.yaml")))

    def _versions(self, kind: str, record_id: str) -> list[Path]:
        folder = self._folder(kind, record_id)
        return sorted(folder.glob("v[0-9][0-9][0-9][0-9].yaml"))

    def _latest(self, kind: str, record_id: str) -> Any:
        versions = self._versions(kind, record_id)
        if not versions:
            raise GovernanceError(f"no {_KINDS[kind][0]} {record_id!r} on record", "missing")
        return self._read(kind, versions[-1])

    def _read(self, kind: str, path: Path) -> Any:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        cls = _KINDS[kind][1]
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(raw) - names)
        if unknown:
            raise GovernanceError(f"{path}: unknown fields {unknown}", "malformed")
        return _from_dict(cls, raw)

    def _record(self, kind: str, record: Any, recorded_by: str, now: dt.datetime | None) -> RecordedVersion:
        if not recorded_by:
            raise ValueError("recorded_by (the principal recording it) is required")
        folder = self._folder(kind, record.id)
        folder.mkdir(parents=True, exist_ok=True)
        version = len(self._versions(kind, record.id)) + 1
        stamp = (now or dt.datetime.now(dt.UTC)).astimezone(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
        stored = dataclasses.replace(record, version=version, recorded_at=stamp, recorded_by=recorded_by)
        text = yaml.safe_dump(_to_dict(stored), sort_keys=False, allow_unicode=True)
        path = folder / f"v{version:04d}.yaml"
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
        except FileExistsError:
            raise GovernanceError(f"{path.name} of {record.id!r} was recorded concurrently; retry", "conflict") from None
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        return RecordedVersion(path, version, hashlib.sha256(text.encode("utf-8")).hexdigest())


def _to_dict(record: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in dataclasses.fields(record):
        value = getattr(record, f.name)
        if isinstance(value, dt.date):
            value = value.isoformat()
        elif isinstance(value, tuple):
            value = list(value)
        out[f.name] = value
    return out


def _from_dict(cls: type, raw: Mapping[str, Any]) -> Any:
    values = dict(raw)
    for f in dataclasses.fields(cls):
        if f.name not in values:
            continue
        value = values[f.name]
        if f.name in {"approved_on", "expires_on", "valid_until"}:
            values[f.name] = _date(value, f.name)
        elif f.name in {"revoked_on", "valid_from"}:
            values[f.name] = _optional_date(value, f.name)
        elif f.name in {"scope", "datasets"}:
            values[f.name] = tuple(str(v) for v in value or ())
        elif f.name == "cross_border" and not isinstance(value, bool):
            raise ValueError("cross_border must be true or false")
    return cls(**values)
