"""``medllm keys rotate``: rotate transit keys, rewrap every holder, and prove that no record was lost.

The workflows (what is rewrapped, what is counted, when a rotation is
complete) live in :mod:`medllm_pipelines.lib.security.key_rotation`; this
command chooses the keys, checks the principal and audits the outcome.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import click

from medllm_pipelines.cli_security.context import (
    EXIT_ERROR,
    SecurityContext,
    acting,
    guarded,
    record,
    require,
    security_context,
)
from medllm_pipelines.lib.security.errors import SecurityError, VaultError
from medllm_pipelines.lib.security.key_rotation import (
    CiphertextColumn,
    KeyRotationOutcome,
    rotate_audit_key,
    rotate_export_key,
    rotate_raw_zone_key,
)

__all__ = ["keys"]


@click.group()
def keys() -> None:
    """Vault transit keys: rotation with every holder rewrapped and counted."""


def _rotators(ctx: SecurityContext) -> dict[str, Callable[[], KeyRotationOutcome]]:
    """Each rotatable key and the workflow that rotates it (the pseudonym key is deliberately absent)."""
    from medllm_pipelines.defs import keys as asset_keys
    from medllm_pipelines.lib.security.exports import exported_files
    from medllm_pipelines.lib.security.vault_client import DEFAULT_AUDIT_KEY_NAME, DEFAULT_EXPORT_KEY_NAME

    settings = ctx.settings
    ledger = CiphertextColumn(settings.warehouse_url, asset_keys.AUDIT_SCHEMA, asset_keys.FILE_LEDGER_TABLE,
                              "source_path_ciphertext")
    return {
        ctx.service.data_key_name: lambda: rotate_raw_zone_key(
            ctx.service, raw_zone_dir=settings.raw_zone_dir, registry=ctx.registry, ledger=ledger),
        DEFAULT_EXPORT_KEY_NAME: lambda: rotate_export_key(
            ctx.key_service(DEFAULT_EXPORT_KEY_NAME), exports_dir=settings.exports_dir,
            exported=exported_files(settings.exports_dir)),
        DEFAULT_AUDIT_KEY_NAME: lambda: rotate_audit_key(ctx.service, DEFAULT_AUDIT_KEY_NAME, ctx.audit),
    }


@keys.command("rotate")
@click.option("--key", "key_names", multiple=True, help="key to rotate (medllm-raw-zone, medllm-export, medllm-audit)")
@click.option("--all", "rotate_all", is_flag=True, help="every rotatable key")
@acting(mfa=True)
@guarded
def keys_rotate(key_names: tuple[str, ...], rotate_all: bool, principal: str | None, totp: str | None) -> None:
    """Rotate transit key(s), rewrap every holder, and prove that no record was lost."""
    if bool(key_names) == rotate_all:
        raise click.UsageError("name --key NAME (repeatable) or --all")
    ctx = security_context()
    rotators = _rotators(ctx)
    chosen = list(rotators) if rotate_all else list(dict.fromkeys(key_names))
    resource = "transit/*" if rotate_all else ",".join(f"transit/{name}" for name in chosen)
    decision = require(ctx, principal, "rotate_keys", totp, resource)
    unknown = [name for name in chosen if name not in rotators]
    if unknown:
        why = ("the pseudonym key is never rotated here: it would change every pseudonym computed afterwards"
               if ctx.service.pseudonym_key_name in unknown else f"rotatable keys are {sorted(rotators)}")
        record(ctx, decision, "keys.rotate", resource, "failed", f"unknown or non-rotatable key: {why}")
        raise click.UsageError(why)
    outcomes: list[KeyRotationOutcome] = []
    try:
        for name in chosen:
            outcome = rotators[name]()
            for line in outcome.summary:
                click.echo(line)
            outcomes.append(outcome)
    except (VaultError, SecurityError) as exc:
        try:
            record(ctx, decision, "keys.rotate", resource, "failed", f"rotation stopped ({type(exc).__name__})",
                   completed_keys=len(outcomes))
        except (VaultError, SecurityError):
            pass  # the audit needs Vault too; the error below says what happened
        raise
    complete = all(outcome.complete for outcome in outcomes)
    record(ctx, decision, "keys.rotate", resource, "succeeded" if complete else "failed",
           "every holder rewrapped, counts equal, all decrypt" if complete else "rotation incomplete: see counts",
           keys=[outcome.as_metadata() for outcome in outcomes])
    if not complete:
        click.echo("INCOMPLETE: some holders were not rewrapped or counts differ; rerun after fixing (old key "
                   "versions are still valid, nothing was retired)", err=True)
        sys.exit(EXIT_ERROR)
    click.echo("rotation complete: no record lost, every object still decrypts (old versions not retired)")
