"""Security commands of ``medllm``: principals, audit, re-identification, key rotation, export.

Every command names its acting principal (``--as NAME`` or ``MEDLLM_PRINCIPAL``)
and, for actions the permission matrix marks as privileged, takes a fresh TOTP
code (``--totp``). Every decision, allowed or denied, is one audit entry
(:class:`~medllm_pipelines.lib.security.rbac.AccessControl`); effects are
further entries. Nothing identifiable is printed or audited, except the answer
of an allowed re-identification, which is printed (never audited) for the
privacy officer who asked.

Fail closed: the principal registry and the audit log both need Vault (sealed
secrets, keyed audit MACs), so with Vault sealed or unreachable every command
stops before changing anything (exit 4). Exit codes: 0 done, 1 error or
integrity problem, 2 usage, 3 denied or refused, 4 Vault unavailable.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import click

from medllm_pipelines.lib.security.audit import (
    AuditIntegrityError,
    AuditLog,
    transit_audit_log,
)
from medllm_pipelines.lib.security.errors import (
    SecurityError,
    VaultError,
    VaultUnavailableError,
)
from medllm_pipelines.lib.security.rbac import (
    AccessControl,
    AccessDenied,
    Decision,
    PrincipalError,
    PrincipalRegistry,
)
from medllm_pipelines.settings import Settings, load_settings, prepare_home

__all__ = ["register"]

EXIT_ERROR = 1
EXIT_VAULT = 4  # 2 is click's usage error
EXIT_DENIED = 3
BOOTSTRAP_ACTOR = "bootstrap"
F = TypeVar("F", bound=Callable[..., Any])


# --- context --------------------------------------------------------------------
@dataclass
class SecurityContext:
    settings: Settings
    service: Any  # TransitKeyService on the raw-zone data key
    registry: PrincipalRegistry
    audit: AuditLog
    access: AccessControl

    def key_service(self, data_key_name: str) -> Any:
        """A TransitKeyService on the same Vault for another data key (exports)."""
        return _vault_resource(self.settings, data_key_name).key_service()


def _vault_resource(settings: Settings, data_key_name: str | None = None) -> Any:
    from medllm_pipelines.defs.resources import vault_resource

    extra: dict[str, Any] = {"data_key_name": data_key_name} if data_key_name else {}
    if not settings.uses_local_openbao:
        extra["timeout"] = 5.0  # a person is waiting at the terminal
    return vault_resource(settings, **extra)


def _context() -> SecurityContext:
    """Settings, Vault (checked unsealed), principals and the audit log; fails closed."""
    settings = load_settings()
    prepare_home(settings)
    settings.security_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        service = _vault_resource(settings).key_service()
    except SecurityError as exc:  # no token / no state file: the key service cannot be used
        raise VaultUnavailableError(str(exc)) from None
    health = service.health()
    if health.get("sealed"):
        raise VaultUnavailableError(f"Vault at {service.addr} is sealed")
    registry = PrincipalRegistry(settings.principals_file, service)
    audit = transit_audit_log(settings.audit_log_file, service)
    return SecurityContext(settings, service, registry, audit, AccessControl(registry, audit=audit))


def _guarded(command: F) -> F:
    """Turn security exceptions into one clear line and an exit code (never a traceback)."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except VaultError as exc:
            click.echo(f"error: the key service is unavailable, failing closed (nothing was changed or written in "
                       f"plaintext): {exc}", err=True)
            sys.exit(EXIT_VAULT)
        except AccessDenied as exc:
            click.echo(f"denied: {exc}", err=True)
            sys.exit(EXIT_DENIED)
        except AuditIntegrityError as exc:
            click.echo(f"error: the audit log cannot be appended to ({exc}); run `medllm audit verify`", err=True)
            sys.exit(EXIT_ERROR)
        except (PrincipalError, SecurityError) as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(EXIT_ERROR)

    return wrapper  # type: ignore[return-value]


def acting(mfa: bool) -> Callable[[F], F]:
    """``--as`` (and ``--totp`` for commands that may need MFA)."""

    def decorate(command: F) -> F:
        command = click.option("--as", "principal", envvar="MEDLLM_PRINCIPAL", default=None, metavar="NAME",
                               help="acting principal (or MEDLLM_PRINCIPAL)")(command)
        if mfa:
            command = click.option("--totp", "totp", default=None, metavar="CODE",
                                   help="current code of the principal's authenticator (MFA)")(command)
        return command

    return decorate


def _require(ctx: SecurityContext, principal: str | None, action: str, totp: str | None = None,
             resource: str = "-") -> Decision:
    if not principal:
        raise click.UsageError("say who is acting: --as NAME or MEDLLM_PRINCIPAL")
    return ctx.access.require(principal, action, mfa=totp, resource=resource)


def _record(ctx: SecurityContext, decision: Decision, action: str, resource: str, outcome: str, reason: str,
            **details: Any) -> None:
    ctx.audit.append(actor=decision.principal or "unknown-principal", role=decision.role or "none", action=action,
                     resource=resource, outcome=outcome, reason=reason, details=details)


def _show_enrolment(name: str, uri: str) -> None:
    import pyotp

    secret = pyotp.parse_uri(uri).secret
    click.echo(f"TOTP enrolment for {name} (shown once; stored only sealed by Vault, never logged):")
    click.echo(f"  otpauth URI: {uri}")
    click.echo(f"  secret:      {secret}")
    click.echo(f"activate it with: medllm principals confirm-mfa {name} CODE")


# --- principals -------------------------------------------------------------------
@click.group()
def principals() -> None:
    """People and service accounts, one role each (permissions.yaml); TOTP MFA."""


@principals.command("add")
@click.argument("name")
@click.option("--role", required=True)
@acting(mfa=True)
@_guarded
def principals_add(name: str, role: str, principal: str | None, totp: str | None) -> None:
    """Add a principal. The first one, in an empty registry, must be an admin."""
    ctx = _context()
    resource = f"principal:{name}"
    if ctx.registry.is_empty():
        if role != "admin":
            ctx.audit.append(actor=BOOTSTRAP_ACTOR, role="none", action="manage_roles", resource=resource,
                             outcome="denied", reason="the first principal of an empty registry must be an admin",
                             details={"role": role})
            raise AccessDenied(Decision(False, None, None, "manage_roles",
                                        "the first principal of an empty registry must be an admin", "not_required",
                                        ctx.registry.matrix.version))
        ctx.registry.add_principal(name, role)
        ctx.audit.append(actor=BOOTSTRAP_ACTOR, role="none", action="manage_roles", resource=resource,
                         outcome="succeeded", reason="bootstrap: first principal (admin) of an empty registry",
                         details={"role": role})
        click.echo(f"added {name} as admin (bootstrap); next: medllm principals enrol-mfa {name} --as {name}")
        return
    decision = _require(ctx, principal, "manage_roles", totp, resource)
    ctx.registry.add_principal(name, role)
    _record(ctx, decision, "manage_roles", resource, "succeeded", f"added principal with role {role}", role=role)
    click.echo(f"added {name} as {role}; next: medllm principals enrol-mfa {name} --as {principal} --totp CODE")


@principals.command("set-role")
@click.argument("name")
@click.option("--role", required=True)
@acting(mfa=True)
@_guarded
def principals_set_role(name: str, role: str, principal: str | None, totp: str | None) -> None:
    """Change a principal's role (its TOTP secret is re-sealed to the new role)."""
    ctx = _context()
    decision = _require(ctx, principal, "manage_roles", totp, f"principal:{name}")
    before = ctx.registry.get(name).role
    ctx.registry.set_role(name, role)
    _record(ctx, decision, "manage_roles", f"principal:{name}", "succeeded", f"role changed from {before} to {role}",
            old_role=before, new_role=role)
    click.echo(f"{name}: role {before} -> {role}")


@principals.command("deactivate")
@click.argument("name")
@acting(mfa=True)
@_guarded
def principals_deactivate(name: str, principal: str | None, totp: str | None) -> None:
    """Deactivate a principal (kept for the audit trail; every later decision denies it)."""
    ctx = _context()
    decision = _require(ctx, principal, "manage_roles", totp, f"principal:{name}")
    ctx.registry.deactivate(name)
    _record(ctx, decision, "manage_roles", f"principal:{name}", "succeeded", "principal deactivated")
    click.echo(f"{name} deactivated")


@principals.command("list")
@acting(mfa=True)
@_guarded
def principals_list(principal: str | None, totp: str | None) -> None:
    """Principals, roles and MFA state (needs read_audit: auditors review who may do what)."""
    ctx = _context()
    _require(ctx, principal, "read_audit", totp, "principals")
    for p in ctx.registry.list():
        state = "active" if p.active else "DEACTIVATED"
        mfa = p.totp_state + (" LOCKED" if p.mfa_locked else "")
        click.echo(f"{p.name:24s} {p.role:16s} {state:12s} mfa={mfa}")


@principals.command("enrol-mfa")
@click.argument("name")
@click.option("--replace", is_flag=True, help="replace an existing enrolment")
@acting(mfa=True)
@_guarded
def principals_enrol_mfa(name: str, replace: bool, principal: str | None, totp: str | None) -> None:
    """Create a TOTP secret for NAME and print its otpauth URI once.

    An admin (with MFA) enrols anyone. Before any principal has MFA (bootstrap),
    a principal may enrol itself once.
    """
    ctx = _context()
    target = ctx.registry.get(name)
    resource = f"principal:{name}"
    bootstrap = (principal == name and target.totp_state == "none" and not replace
                 and not any(p.totp_state == "active" for p in ctx.registry.list()))
    if bootstrap:
        ctx.audit.append(actor=name, role=target.role, action="mfa.enrol", resource=resource, outcome="allowed",
                         reason="bootstrap self-enrolment: no principal has MFA yet", details={})
    else:
        decision = _require(ctx, principal, "manage_roles", totp, resource)
        _record(ctx, decision, "mfa.enrol", resource, "succeeded", "TOTP enrolment created (pending confirmation)",
                replaced=replace)
    _show_enrolment(name, ctx.registry.enrol_totp(name, replace=replace))


@principals.command("confirm-mfa")
@click.argument("name")
@click.argument("code")
@_guarded
def principals_confirm_mfa(name: str, code: str) -> None:
    """Activate NAME's pending enrolment with a first code from the authenticator."""
    ctx = _context()
    target = ctx.registry.get(name)
    check = ctx.registry.confirm_totp(name, code)
    ctx.audit.append(actor=name, role=target.role, action="mfa.confirm", resource=f"principal:{name}",
                     outcome="succeeded" if check.ok else "failed", reason=check.reason, details={"mfa": check.status})
    if not check.ok:
        click.echo(f"refused: {check.reason}", err=True)
        sys.exit(EXIT_DENIED)
    click.echo(f"MFA active for {name}")


@principals.command("reset-mfa")
@click.argument("name")
@click.option("--re-enrol", is_flag=True, help="also issue a new secret (lost authenticator)")
@acting(mfa=True)
@_guarded
def principals_reset_mfa(name: str, re_enrol: bool, principal: str | None, totp: str | None) -> None:
    """Clear NAME's MFA lockout after verifying the person out of band."""
    ctx = _context()
    resource = f"principal:{name}"
    decision = _require(ctx, principal, "manage_roles", totp, resource)
    ctx.registry.reset_mfa(name)
    _record(ctx, decision, "mfa.reset", resource, "succeeded", "MFA lockout cleared", re_enrol=re_enrol)
    click.echo(f"MFA lockout of {name} cleared")
    if re_enrol:
        _show_enrolment(name, ctx.registry.enrol_totp(name, replace=True))


# --- audit ------------------------------------------------------------------------
@click.group()
def audit() -> None:
    """The hash-chained, Vault-keyed audit log."""


@audit.command("verify")
@acting(mfa=True)
@_guarded
def audit_verify(principal: str | None, totp: str | None) -> None:
    """Check the whole chain, checkpoints and head; exit 1 at the first fault."""
    ctx = _context()
    if not principal:
        raise click.UsageError("say who is acting: --as NAME or MEDLLM_PRINCIPAL")
    frozen = False
    try:
        decision = ctx.access.authorize(principal, "read_audit", mfa=totp, resource="audit-log")
    except AuditIntegrityError:
        # The log refuses appends (its tail no longer matches its head): decide without
        # auditing, because verifying a damaged log is exactly what is needed now.
        frozen = True
        decision = AccessControl(ctx.registry).authorize(principal, "read_audit", mfa=totp, resource="audit-log")
    if not decision.allowed:
        raise AccessDenied(decision)
    result = ctx.audit.verify()
    if result.ok:
        click.echo(f"audit log intact: {result.entries} entries (last seq {result.last_seq}), "
                   f"{result.checkpoints_verified} keyed checkpoints verified, head "
                   f"{'verified' if result.head_verified else 'not keyed'}")
        return
    click.echo(f"audit log BROKEN at seq {result.first_bad_seq}: {result.problem}", err=True)
    click.echo(f"{result.entries} entries verified before the fault"
               + ("; the log refuses appends, so this check could not be audited" if frozen else ""), err=True)
    sys.exit(EXIT_ERROR)


def _since(value: str | None) -> dt.datetime | None:
    if value is None:
        return None
    try:
        moment = dt.datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter("use an ISO date or time, e.g. 2026-11-28 or 2026-11-28T10:00:00Z") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


@audit.command("show")
@click.option("--since", default=None, help="ISO date/time (UTC unless given)")
@click.option("--limit", type=int, default=None, help="only the last N matching entries")
@click.option("--json", "as_json", is_flag=True)
@acting(mfa=True)
@_guarded
def audit_show(since: str | None, limit: int | None, as_json: bool, principal: str | None, totp: str | None) -> None:
    """Print entries (no entry holds a patient identifier)."""
    ctx = _context()
    start = _since(since)
    _require(ctx, principal, "read_audit", totp, "audit-log")
    entries = [e for e in ctx.audit.entries()
               if start is None or dt.datetime.fromisoformat(e.time) >= start]
    for entry in entries[-limit:] if limit else entries:
        if as_json:
            click.echo(json.dumps(entry.to_dict(), ensure_ascii=False, sort_keys=True))
        else:
            click.echo(f"{entry.seq:6d} {entry.time} {entry.actor}/{entry.role} {entry.action} {entry.resource} "
                       f"{entry.outcome}: {entry.reason}")


# --- re-identification --------------------------------------------------------------
@click.command("reidentify")
@click.argument("pseudonym")
@click.option("--reason", required=True, help="lawful basis: patient_safety, clinical_follow_up, "
              "data_subject_request, court_order or regulator_request")
@click.option("--case", "case_reference", default=None, help="ticket, court order or committee decision number")
@acting(mfa=True)
@_guarded
def reidentify_command(pseudonym: str, reason: str, case_reference: str | None, principal: str | None,
                       totp: str | None) -> None:
    """Resolve a pseudonym to institution + MRN: privacy_officer with MFA, audited."""
    from medllm_pipelines.defs import keys
    from medllm_pipelines.defs.keys import raw_table_name
    from medllm_pipelines.lib.security.raw_zone import RawZone
    from medllm_pipelines.lib.security.reidentify import (
        PseudonymNotFound,
        ReidentificationDenied,
        ReidentificationRequest,
        reidentify,
    )

    ctx = _context()
    if not principal:
        raise click.UsageError("say who is acting: --as NAME or MEDLLM_PRINCIPAL")
    zone = RawZone(ctx.settings.raw_zone_dir, ctx.service)
    table = raw_table_name(keys.PSEUDONYM_MAP)
    try:
        result = reidentify(ReidentificationRequest(pseudonym, reason, case_reference), requester=principal,
                            mfa=totp, pseudonym_map=lambda: zone.read_table(table), registry=ctx.registry,
                            audit=ctx.audit)
    except ReidentificationDenied as exc:
        raise AccessDenied(exc.decision) from None
    except PseudonymNotFound as exc:
        click.echo(f"not found: {exc} (the attempt is audited)", err=True)
        sys.exit(EXIT_ERROR)
    except FileNotFoundError:
        click.echo("error: the pseudonym map is not in the raw zone (materialise deidentify first)", err=True)
        sys.exit(EXIT_ERROR)
    click.echo(f"{pseudonym} resolves to {len(result.identities)} record(s) (audit seq {result.audit_seq}); "
               "identifiable, do not copy into tickets or logs:")
    for identity in result.identities:
        where = f"MRN {identity.mrn}" if identity.mrn else f"record key {identity.patient_key}"
        click.echo(f"  institution {identity.institution}: {where}")


# --- keys -------------------------------------------------------------------------
@click.group()
def keys() -> None:
    """Vault transit keys: rotation with every holder rewrapped and counted."""


def _export_index(settings: Settings) -> Path:
    return settings.exports_dir / "index.json"


def _exported_files(settings: Settings) -> list[Path]:
    index = _export_index(settings)
    if not index.exists():
        return []
    return [Path(p) for p in json.loads(index.read_text(encoding="utf-8"))]


def _rotate_raw_zone_key(ctx: SecurityContext) -> dict[str, Any]:
    from medllm_pipelines.defs import keys as asset_keys
    from medllm_pipelines.lib.common.warehouse import Warehouse
    from medllm_pipelines.lib.security.rotation import (
        envelope_census,
        rewrap_warehouse_column,
        rotate_and_rewrap,
    )

    service, settings = ctx.service, ctx.settings
    census_before = envelope_census([settings.raw_zone_dir], service.key_ref)
    principals_before = ctx.registry.check_envelopes()
    report = rotate_and_rewrap(service, [settings.raw_zone_dir], principals=ctx.registry)
    warehouse = Warehouse(settings.warehouse_url)
    try:
        ledger = rewrap_warehouse_column(warehouse, asset_keys.AUDIT_SCHEMA, asset_keys.FILE_LEDGER_TABLE,
                                         "source_path_ciphertext", service)
    finally:
        warehouse.dispose()
    census_after = envelope_census([settings.raw_zone_dir], service.key_ref)
    principals_after = ctx.registry.check_envelopes()
    complete = (report.complete and census_before.envelopes == census_after.envelopes
                and census_after.all_at(report.new_version) and principals_before[0] == principals_after[0]
                and principals_after[0] == principals_after[1] and ledger.complete)
    click.echo(f"{service.key_ref}: v{report.old_version} -> v{report.new_version}")
    click.echo(f"  raw zone envelopes: {census_before.envelopes} before, {census_after.envelopes} after, "
               f"{report.rewrapped} rewrapped and verified, all at v{report.new_version}: "
               f"{census_after.all_at(report.new_version)}, failed: {len(report.failed)}")
    click.echo(f"  principals registry envelopes: {principals_before[0]} before, {principals_after[0]} after, "
               f"{principals_after[1]} open, {report.principals_rewrapped} rewrapped")
    click.echo(f"  warehouse {ledger.table}.source_path_ciphertext: rows {ledger.rows_before} -> {ledger.rows_after}, "
               f"ciphertexts {ledger.ciphertexts_before} -> {ledger.ciphertexts_after}, {ledger.rewrapped} rewrapped, "
               f"{ledger.verified} decrypt to their original")
    return {"key": service.key_ref, "new_version": report.new_version, "envelopes_before": census_before.envelopes,
            "envelopes_after": census_after.envelopes, "rewrapped": report.rewrapped,
            "principal_envelopes": principals_after[0], "ledger_ciphertexts": ledger.ciphertexts_after,
            "complete": complete}


def _rotate_export_key(ctx: SecurityContext, key_name: str) -> dict[str, Any]:
    from medllm_pipelines.lib.security.rotation import (
        envelope_census,
        rewrap_folder,
        rewrap_paths,
    )

    service, settings = ctx.key_service(key_name), ctx.settings
    outside = [p for p in _exported_files(settings) if settings.exports_dir not in p.parents]
    holders = [settings.exports_dir, *outside]
    before = envelope_census(holders, service.key_ref)
    old_version = service.key_info().latest_version
    new_version = service.rotate_key()
    reports = [rewrap_folder(settings.exports_dir, service)] if settings.exports_dir.exists() else []
    reports.append(rewrap_paths(outside, service, label="exports outside the exports folder"))
    after = envelope_census(holders, service.key_ref)
    failed = sum(len(r.failed) for r in reports)
    complete = not failed and before.envelopes == after.envelopes and after.all_at(new_version)
    click.echo(f"{service.key_ref}: v{old_version} -> v{new_version}")
    click.echo(f"  export envelopes: {before.envelopes} before, {after.envelopes} after, "
               f"{sum(r.rewrapped for r in reports)} rewrapped and verified, failed: {failed}")
    return {"key": service.key_ref, "new_version": new_version, "envelopes_before": before.envelopes,
            "envelopes_after": after.envelopes, "complete": complete}


def _rotate_audit_key(ctx: SecurityContext, key_name: str) -> dict[str, Any]:
    old_version = ctx.service.key_info(key_name).latest_version
    new_version = ctx.service.rotate_key(key_name)
    result = ctx.audit.verify()  # MACs carry their key version: the old ones still verify
    click.echo(f"{ctx.service.transit_mount}/{key_name}: v{old_version} -> v{new_version} (HMAC key: nothing to "
               f"rewrap); audit log still verifies: {result.ok}")
    return {"key": f"{ctx.service.transit_mount}/{key_name}", "new_version": new_version, "complete": result.ok}


@keys.command("rotate")
@click.option("--key", "key_names", multiple=True, help="key to rotate (medllm-raw-zone, medllm-export, medllm-audit)")
@click.option("--all", "rotate_all", is_flag=True, help="every rotatable key")
@acting(mfa=True)
@_guarded
def keys_rotate(key_names: tuple[str, ...], rotate_all: bool, principal: str | None, totp: str | None) -> None:
    """Rotate transit key(s), rewrap every holder, and prove that no record was lost."""
    from medllm_pipelines.lib.security.vault_client import (
        DEFAULT_AUDIT_KEY_NAME,
        DEFAULT_EXPORT_KEY_NAME,
    )

    if bool(key_names) == rotate_all:
        raise click.UsageError("name --key NAME (repeatable) or --all")
    ctx = _context()
    rotators: dict[str, Callable[[], dict[str, Any]]] = {
        ctx.service.data_key_name: lambda: _rotate_raw_zone_key(ctx),
        DEFAULT_EXPORT_KEY_NAME: lambda: _rotate_export_key(ctx, DEFAULT_EXPORT_KEY_NAME),
        DEFAULT_AUDIT_KEY_NAME: lambda: _rotate_audit_key(ctx, DEFAULT_AUDIT_KEY_NAME),
    }
    chosen = list(rotators) if rotate_all else list(dict.fromkeys(key_names))
    resource = "transit/*" if rotate_all else ",".join(f"transit/{name}" for name in chosen)
    decision = _require(ctx, principal, "rotate_keys", totp, resource)
    unknown = [name for name in chosen if name not in rotators]
    if unknown:
        why = ("the pseudonym key is never rotated here: it would change every pseudonym computed afterwards"
               if ctx.service.pseudonym_key_name in unknown else f"rotatable keys are {sorted(rotators)}")
        _record(ctx, decision, "keys.rotate", resource, "failed", f"unknown or non-rotatable key: {why}")
        raise click.UsageError(why)
    results = []
    try:
        for name in chosen:
            results.append(rotators[name]())
    except (VaultError, SecurityError) as exc:
        try:
            _record(ctx, decision, "keys.rotate", resource, "failed", f"rotation stopped ({type(exc).__name__})",
                    completed_keys=len(results))
        except (VaultError, SecurityError):
            pass  # the audit needs Vault too; the error below says what happened
        raise
    complete = all(r["complete"] for r in results)
    _record(ctx, decision, "keys.rotate", resource, "succeeded" if complete else "failed",
            "every holder rewrapped, counts equal, all decrypt" if complete else "rotation incomplete: see counts",
            keys=[{k: v for k, v in r.items()} for r in results])
    if not complete:
        click.echo("INCOMPLETE: some holders were not rewrapped or counts differ; rerun after fixing (old key "
                   "versions are still valid, nothing was retired)", err=True)
        sys.exit(EXIT_ERROR)
    click.echo("rotation complete: no record lost, every object still decrypts (old versions not retired)")


# --- export -------------------------------------------------------------------------
_DATASET = re.compile(r"^[a-z_][a-z0-9_]*\.[a-z_][a-z0-9_]*$")


@click.command("export")
@click.argument("dataset")
@click.option("--recipient", required=True)
@click.option("--agreement", "agreement_id", required=True)
@click.option("--out", "out_file", type=click.Path(path_type=Path), required=True)
@click.option("--cross-border", is_flag=True, help="the recipient is outside the country")
@acting(mfa=True)
@_guarded
def export_command(dataset: str, recipient: str, agreement_id: str, out_file: Path, cross_border: bool,
                   principal: str | None, totp: str | None) -> None:
    """Export a de-identified warehouse table (schema.table) under a sharing agreement, encrypted."""
    from medllm_pipelines.defs import keys as asset_keys
    from medllm_pipelines.defs.keys import raw_table_name
    from medllm_pipelines.lib.common.warehouse import Warehouse
    from medllm_pipelines.lib.security.governance import (
        ExportRefused,
        GovernanceError,
        GovernanceStore,
        export_dataset,
    )
    from medllm_pipelines.lib.security.leak_scan import identifier_needles
    from medllm_pipelines.lib.security.raw_zone import RawZone
    from medllm_pipelines.lib.security.vault_client import DEFAULT_EXPORT_KEY_NAME

    if not _DATASET.fullmatch(dataset):
        raise click.BadParameter("DATASET is a warehouse table, schema.table", param_hint="DATASET")
    ctx = _context()
    resource = f"dataset:{dataset}"
    decision = _require(ctx, principal, "export_dataset", totp, resource)
    today = dt.date.today()
    try:
        agreement = GovernanceStore(ctx.settings.governance_dir).require_sharing_agreement(
            recipient, dataset, today, cross_border=cross_border, agreement_id=agreement_id)
        schema, table = dataset.split(".")
        warehouse = Warehouse(ctx.settings.warehouse_url)
        try:
            if not warehouse.table_exists(schema, table):
                raise GovernanceError(f"no warehouse table {dataset}", "missing_dataset")
            frame = warehouse.read_table(schema, table)
        finally:
            warehouse.dispose()
        _require_k_anonymous(frame, dataset, ctx.settings.k_anonymity_k)
        needles: dict[str, set[str]] = {}

        def audit_read(name: str) -> None:
            _record(ctx, decision, "raw_zone.read", name, "succeeded", "identifier screen of an export")

        zone = RawZone(ctx.settings.raw_zone_dir, ctx.service, on_read=audit_read)
        patients = raw_table_name(asset_keys.RAW_PATIENTS)
        if zone.partitions(patients):
            needles = identifier_needles(zone.read_partitions(patients))
        receipt = export_dataset(frame, out_file, keys=ctx.key_service(DEFAULT_EXPORT_KEY_NAME), agreement=agreement,
                                 dataset=dataset, today=today, needles=needles)
    except (GovernanceError, ExportRefused) as exc:
        _record(ctx, decision, "export_dataset", resource, "failed", f"export refused: {exc}",
                agreement_id=agreement_id)
        click.echo(f"refused: {exc}", err=True)
        sys.exit(EXIT_DENIED)
    index = _export_index(ctx.settings)
    index.parent.mkdir(parents=True, exist_ok=True)
    listed = [str(p) for p in _exported_files(ctx.settings)]
    if str(receipt.path.resolve()) not in listed:
        listed.append(str(receipt.path.resolve()))
        index.write_text(json.dumps(listed, indent=1) + "\n", encoding="utf-8")
    _record(ctx, decision, "export_dataset", resource, "succeeded",
            f"exported under agreement {agreement.id} v{agreement.version}", agreement_id=agreement.id,
            agreement_version=agreement.version, recipient=agreement.recipient, rows=receipt.rows,
            columns=len(receipt.columns), envelope_sha256=receipt.envelope_sha256, key_ref=receipt.key_ref)
    click.echo(f"exported {receipt.rows} rows of {dataset} to {receipt.path} (envelope-encrypted with "
               f"{receipt.key_ref}; manifest {receipt.manifest_path.name}) under agreement {agreement.id} "
               f"v{agreement.version}")


def _require_k_anonymous(frame: Any, dataset: str, k: int) -> None:
    """An export leaves the platform: it must be k-anonymous on every quasi-identifier the policy declares."""
    from medllm_pipelines.lib.deidentify.policy import load_policy
    from medllm_pipelines.lib.deidentify.risk import k_anonymity
    from medllm_pipelines.lib.security.governance import ExportRefused

    declared = {column for rule in load_policy().disclosure.values() for column in rule.quasi_identifiers}
    present = sorted(declared & set(frame.columns))
    if not present or frame.empty:
        return
    report = k_anonymity(frame, present, k=k)
    if not report.satisfied:
        raise ExportRefused(
            f"{dataset} is not {k}-anonymous on {', '.join(present)}: {len(report.classes_below_k)} equivalence "
            f"class(es) hold {report.rows_below_k} row(s) below k (smallest {report.smallest_class}); generalise or "
            "suppress before exporting"
        )


# --- governance agree ------------------------------------------------------------------
@click.command("agree")
@click.option("--id", "agreement_id", required=True)
@click.option("--recipient", required=True)
@click.option("--purpose", required=True)
@click.option("--dataset", "datasets", multiple=True, required=True, help="warehouse table schema.table (repeatable)")
@click.option("--valid-until", type=click.DateTime(formats=["%Y-%m-%d"]), required=True)
@click.option("--valid-from", type=click.DateTime(formats=["%Y-%m-%d"]), default=None)
@click.option("--cross-border", is_flag=True)
@click.option("--destination-country", default=None, help="ISO 3166 alpha-2, for a cross-border agreement")
@click.option("--assessment", default=None, help="cross-border transfer assessment / standard contract reference")
@click.option("--approval-id", default=None, help="the ethics approval the sharing serves")
@acting(mfa=True)
@_guarded
def governance_agree(agreement_id: str, recipient: str, purpose: str, datasets: tuple[str, ...],
                     valid_until: dt.datetime, valid_from: dt.datetime | None, cross_border: bool,
                     destination_country: str | None, assessment: str | None, approval_id: str | None,
                     principal: str | None, totp: str | None) -> None:
    """Record a data-sharing agreement (a new version if the id exists): privacy_officer."""
    from medllm_pipelines.lib.security.governance import (
        GovernanceStore,
        SharingAgreement,
    )

    ctx = _context()
    resource = f"agreement:{agreement_id}"
    decision = _require(ctx, principal, "record_sharing_agreement", totp, resource)
    try:
        agreement = SharingAgreement(
            id=agreement_id, recipient=recipient, purpose=purpose, datasets=tuple(datasets), cross_border=cross_border,
            valid_until=valid_until.date(), valid_from=valid_from.date() if valid_from else None,
            destination_country=destination_country, cross_border_assessment=assessment, approval_id=approval_id)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    recorded = GovernanceStore(ctx.settings.governance_dir).record_agreement(agreement, recorded_by=decision.principal
                                                                              or "unknown-principal")
    _record(ctx, decision, "record_sharing_agreement", resource, "succeeded",
            f"sharing agreement recorded (version {recorded.version})", version=recorded.version,
            record_sha256=recorded.sha256)
    click.echo(f"agreement {agreement_id} v{recorded.version} recorded: {recipient} may receive {', '.join(datasets)} "
               f"until {valid_until.date().isoformat()}")


def register(main: click.Group) -> None:
    """Add the security commands to ``medllm`` (and ``agree`` to its governance group)."""
    for command in (principals, audit, keys, reidentify_command, export_command):
        main.add_command(command)
    governance = main.commands.get("governance")
    if isinstance(governance, click.Group):
        governance.add_command(governance_agree)
