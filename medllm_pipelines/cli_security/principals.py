"""``medllm principals``: people and service accounts, one role each, with TOTP MFA.

The first principal of an empty registry bootstraps itself as admin; after
that every change needs ``manage_roles`` with MFA, and every decision and
effect is audited. An enrolment's secret is shown once and stored only sealed
by Vault.
"""

from __future__ import annotations

import sys

import click

from medllm_pipelines.cli_security.context import (
    BOOTSTRAP_ACTOR,
    EXIT_DENIED,
    acting,
    guarded,
    record,
    require,
    security_context,
)
from medllm_pipelines.lib.security.rbac import AccessDenied, Decision

__all__ = ["principals"]


@click.group()
def principals() -> None:
    """People and service accounts, one role each (permissions.yaml); TOTP MFA."""


@principals.command("add")
@click.argument("name")
@click.option("--role", required=True)
@acting(mfa=True)
@guarded
def principals_add(name: str, role: str, principal: str | None, totp: str | None) -> None:
    """Add a principal. The first one, in an empty registry, must be an admin."""
    ctx = security_context()
    resource = f"principal:{name}"
    # Bootstrap while no active admin exists (an empty registry, or one holding only the demo's clinician).
    if not any(p.role == "admin" and p.active for p in ctx.registry.list()):
        if role != "admin":
            ctx.audit.append(actor=BOOTSTRAP_ACTOR, role="none", action="manage_roles", resource=resource,
                             outcome="denied", reason="the first principal of a registry without an admin must be an admin",
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
    decision = require(ctx, principal, "manage_roles", totp, resource)
    ctx.registry.add_principal(name, role)
    record(ctx, decision, "manage_roles", resource, "succeeded", f"added principal with role {role}", role=role)
    click.echo(f"added {name} as {role}; next: medllm principals enrol-mfa {name} --as {principal} --totp CODE")


@principals.command("set-role")
@click.argument("name")
@click.option("--role", required=True)
@acting(mfa=True)
@guarded
def principals_set_role(name: str, role: str, principal: str | None, totp: str | None) -> None:
    """Change a principal's role (its TOTP secret is re-sealed to the new role)."""
    ctx = security_context()
    decision = require(ctx, principal, "manage_roles", totp, f"principal:{name}")
    before = ctx.registry.get(name).role
    ctx.registry.set_role(name, role)
    record(ctx, decision, "manage_roles", f"principal:{name}", "succeeded", f"role changed from {before} to {role}",
            old_role=before, new_role=role)
    click.echo(f"{name}: role {before} -> {role}")


@principals.command("deactivate")
@click.argument("name")
@acting(mfa=True)
@guarded
def principals_deactivate(name: str, principal: str | None, totp: str | None) -> None:
    """Deactivate a principal (kept for the audit trail; every later decision denies it)."""
    ctx = security_context()
    decision = require(ctx, principal, "manage_roles", totp, f"principal:{name}")
    ctx.registry.deactivate(name)
    record(ctx, decision, "manage_roles", f"principal:{name}", "succeeded", "principal deactivated")
    click.echo(f"{name} deactivated")


@principals.command("list")
@acting(mfa=True)
@guarded
def principals_list(principal: str | None, totp: str | None) -> None:
    """Principals, roles and MFA state (needs read_audit: auditors review who may do what)."""
    ctx = security_context()
    require(ctx, principal, "read_audit", totp, "principals")
    for p in ctx.registry.list():
        state = "active" if p.active else "DEACTIVATED"
        mfa = p.totp_state + (" LOCKED" if p.mfa_locked else "")
        click.echo(f"{p.name:24s} {p.role:16s} {state:12s} mfa={mfa}")


@principals.command("enrol-mfa")
@click.argument("name")
@click.option("--replace", is_flag=True, help="replace an existing enrolment")
@acting(mfa=True)
@guarded
def principals_enrol_mfa(name: str, replace: bool, principal: str | None, totp: str | None) -> None:
    """Create a TOTP secret for NAME and print its otpauth URI once.

    An admin (with MFA) enrols anyone. Before any principal has MFA (bootstrap),
    a principal may enrol itself once.
    """
    ctx = security_context()
    target = ctx.registry.get(name)
    resource = f"principal:{name}"
    bootstrap = (principal == name and target.totp_state == "none" and not replace
                 and not any(p.totp_state == "active" for p in ctx.registry.list()))
    if bootstrap:
        ctx.audit.append(actor=name, role=target.role, action="mfa.enrol", resource=resource, outcome="allowed",
                         reason="bootstrap self-enrolment: no principal has MFA yet", details={})
    else:
        decision = require(ctx, principal, "manage_roles", totp, resource)
        record(ctx, decision, "mfa.enrol", resource, "succeeded", "TOTP enrolment created (pending confirmation)",
                replaced=replace)
    _show_enrolment(name, ctx.registry.enrol_totp(name, replace=replace))


@principals.command("confirm-mfa")
@click.argument("name")
@click.argument("code")
@guarded
def principals_confirm_mfa(name: str, code: str) -> None:
    """Activate NAME's pending enrolment with a first code from the authenticator."""
    ctx = security_context()
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
@guarded
def principals_reset_mfa(name: str, re_enrol: bool, principal: str | None, totp: str | None) -> None:
    """Clear NAME's MFA lockout after verifying the person out of band."""
    ctx = security_context()
    resource = f"principal:{name}"
    decision = require(ctx, principal, "manage_roles", totp, resource)
    ctx.registry.reset_mfa(name)
    record(ctx, decision, "mfa.reset", resource, "succeeded", "MFA lockout cleared", re_enrol=re_enrol)
    click.echo(f"MFA lockout of {name} cleared")
    if re_enrol:
        _show_enrolment(name, ctx.registry.enrol_totp(name, replace=True))


def _show_enrolment(name: str, uri: str) -> None:
    import pyotp

    secret = pyotp.parse_uri(uri).secret
    click.echo(f"TOTP enrolment for {name} (shown once; stored only sealed by Vault, never logged):")
    click.echo(f"  otpauth URI: {uri}")
    click.echo(f"  secret:      {secret}")
    click.echo(f"activate it with: medllm principals confirm-mfa {name} CODE")


@principals.command("add-client")
@click.argument("name")
@click.option("--client-id", default=None, help="default: NAME plus a random suffix")
@click.option("--json", "as_json", is_flag=True, help="print the credentials as JSON")
@acting(mfa=True)
@guarded
def principals_add_client(name: str, client_id: str | None, as_json: bool, principal: str | None,
                          totp: str | None) -> None:
    """Issue OAuth client credentials acting as principal NAME (for POST /v1/auth/token); the secret shows once."""
    import json

    from medllm_pipelines.lib.security.clients import ClientRegistry

    ctx = security_context()
    resource = f"principal:{name}"
    decision = require(ctx, principal, "manage_roles", totp, resource)
    target = ctx.registry.get(name)
    issued = ClientRegistry(ctx.settings.clients_file, ctx.service).add(target.name, client_id=client_id)
    record(ctx, decision, "manage_roles", resource, "succeeded", "issued client credentials",
           client_id=issued.client_id)
    if as_json:
        click.echo(json.dumps(issued.as_dict()))
    else:
        click.echo(f"client_id:     {issued.client_id}\nclient_secret: {issued.client_secret}\n"
                   f"(acts as {name}, role {target.role}; the secret is stored hashed and cannot be shown again)")
