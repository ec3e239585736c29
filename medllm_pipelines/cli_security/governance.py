"""``medllm governance agree``: record a data-sharing agreement (privacy officer), versioned and audited."""

from __future__ import annotations

import datetime as dt

import click

from medllm_pipelines.cli_security.context import acting, guarded, record, require, security_context

__all__ = ["governance_agree"]


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
@guarded
def governance_agree(agreement_id: str, recipient: str, purpose: str, datasets: tuple[str, ...],
                     valid_until: dt.datetime, valid_from: dt.datetime | None, cross_border: bool,
                     destination_country: str | None, assessment: str | None, approval_id: str | None,
                     principal: str | None, totp: str | None) -> None:
    """Record a data-sharing agreement (a new version if the id exists): privacy_officer."""
    from medllm_pipelines.lib.security.governance import (
        GovernanceStore,
        SharingAgreement,
    )

    ctx = security_context()
    resource = f"agreement:{agreement_id}"
    decision = require(ctx, principal, "record_sharing_agreement", totp, resource)
    try:
        agreement = SharingAgreement(
            id=agreement_id, recipient=recipient, purpose=purpose, datasets=tuple(datasets), cross_border=cross_border,
            valid_until=valid_until.date(), valid_from=valid_from.date() if valid_from else None,
            destination_country=destination_country, cross_border_assessment=assessment, approval_id=approval_id)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    recorded = GovernanceStore(ctx.settings.governance_dir).record_agreement(agreement, recorded_by=decision.principal
                                                                              or "unknown-principal")
    record(ctx, decision, "record_sharing_agreement", resource, "succeeded",
            f"sharing agreement recorded (version {recorded.version})", version=recorded.version,
            record_sha256=recorded.sha256)
    click.echo(f"agreement {agreement_id} v{recorded.version} recorded: {recipient} may receive {', '.join(datasets)} "
               f"until {valid_until.date().isoformat()}")
