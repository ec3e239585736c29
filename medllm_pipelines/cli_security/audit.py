"""``medllm audit``: verify and read the hash-chained, Vault-keyed audit log (needs ``read_audit``)."""

from __future__ import annotations

import datetime as dt
import json
import sys

import click

from medllm_pipelines.cli_security.context import (
    EXIT_ERROR,
    acting,
    guarded,
    require,
    require_principal,
    security_context,
)
from medllm_pipelines.lib.security.audit import AuditIntegrityError
from medllm_pipelines.lib.security.rbac import AccessControl, AccessDenied

__all__ = ["audit"]


@click.group()
def audit() -> None:
    """The hash-chained, Vault-keyed audit log."""


@audit.command("verify")
@acting(mfa=True)
@guarded
def audit_verify(principal: str | None, totp: str | None) -> None:
    """Check the whole chain, checkpoints and head; exit 1 at the first fault."""
    ctx = security_context()
    principal = require_principal(principal)
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
@guarded
def audit_show(since: str | None, limit: int | None, as_json: bool, principal: str | None, totp: str | None) -> None:
    """Print entries (no entry holds a patient identifier)."""
    ctx = security_context()
    start = _since(since)
    require(ctx, principal, "read_audit", totp, "audit-log")
    entries = [e for e in ctx.audit.entries()
               if start is None or dt.datetime.fromisoformat(e.time) >= start]
    for entry in entries[-limit:] if limit else entries:
        if as_json:
            click.echo(json.dumps(entry.to_dict(), ensure_ascii=False, sort_keys=True))
        else:
            click.echo(f"{entry.seq:6d} {entry.time} {entry.actor}/{entry.role} {entry.action} {entry.resource} "
                       f"{entry.outcome}: {entry.reason}")
