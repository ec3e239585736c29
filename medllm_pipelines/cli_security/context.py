"""What every security command shares: the fail-closed context, the acting principal, exit codes.

Fail closed: the principal registry and the audit log both need Vault (sealed
secrets, keyed audit MACs), so with Vault sealed or unreachable every command
stops before changing anything (exit 4). Exit codes: 0 done, 1 error or
integrity problem, 2 usage, 3 denied or refused, 4 Vault unavailable.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from dataclasses import dataclass
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

__all__ = [
    "BOOTSTRAP_ACTOR",
    "EXIT_DENIED",
    "EXIT_ERROR",
    "EXIT_VAULT",
    "SecurityContext",
    "acting",
    "guarded",
    "record",
    "require",
    "require_principal",
    "security_context",
]

EXIT_ERROR = 1
EXIT_VAULT = 4  # 2 is click's usage error
EXIT_DENIED = 3
BOOTSTRAP_ACTOR = "bootstrap"
F = TypeVar("F", bound=Callable[..., Any])


@dataclass
class SecurityContext:
    settings: Settings
    service: Any  # TransitKeyService on the raw-zone data key
    registry: PrincipalRegistry
    audit: AuditLog
    access: AccessControl

    def key_service(self, data_key_name: str) -> Any:
        """A TransitKeyService on the same Vault for another data key (exports)."""
        return _key_service(self.settings, data_key_name)


def _key_service(settings: Settings, data_key_name: str | None = None) -> Any:
    from medllm_pipelines.lib.security.vault_connection import key_service_for

    extra: dict[str, Any] = {"data_key_name": data_key_name} if data_key_name else {}
    if not settings.uses_local_openbao:
        extra["timeout"] = 5.0  # a person is waiting at the terminal
    return key_service_for(settings, **extra)


def security_context() -> SecurityContext:
    """Settings, Vault (checked unsealed), principals and the audit log; fails closed."""
    settings = load_settings()
    prepare_home(settings)
    settings.security_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        service = _key_service(settings)
    except SecurityError as exc:  # no token / no state file: the key service cannot be used
        raise VaultUnavailableError(str(exc)) from None
    health = service.health()
    if health.get("sealed"):
        raise VaultUnavailableError(f"Vault at {service.addr} is sealed")
    registry = PrincipalRegistry(settings.principals_file, service)
    audit = transit_audit_log(settings.audit_log_file, service)
    return SecurityContext(settings, service, registry, audit, AccessControl(registry, audit=audit))


def guarded(command: F) -> F:
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


def require_principal(principal: str | None) -> str:
    """The acting principal, or a usage error that says how to name one."""
    if not principal:
        raise click.UsageError("say who is acting: --as NAME or MEDLLM_PRINCIPAL")
    return principal


def require(ctx: SecurityContext, principal: str | None, action: str, totp: str | None = None,
            resource: str = "-") -> Decision:
    """An allowed (and audited) decision, else :class:`AccessDenied`."""
    return ctx.access.require(require_principal(principal), action, mfa=totp, resource=resource)


def record(ctx: SecurityContext, decision: Decision, action: str, resource: str, outcome: str, reason: str,
           **details: Any) -> None:
    """An effect of an allowed action, as one audit entry under the decision's principal."""
    ctx.audit.append(actor=decision.principal or "unknown-principal", role=decision.role or "none", action=action,
                     resource=resource, outcome=outcome, reason=reason, details=details)
