"""``medllm reidentify``: a pseudonym back to institution and MRN, for the privacy officer with MFA.

The answer is printed for the person who asked and never audited; the request,
its lawful basis and the decision are.
"""

from __future__ import annotations

import sys

import click

from medllm_pipelines.cli_security.context import (
    EXIT_ERROR,
    acting,
    guarded,
    require_principal,
    security_context,
)
from medllm_pipelines.lib.security.rbac import AccessDenied

__all__ = ["reidentify_command"]


@click.command("reidentify")
@click.argument("pseudonym")
@click.option("--reason", required=True, help="lawful basis: patient_safety, clinical_follow_up, "
              "data_subject_request, court_order or regulator_request")
@click.option("--case", "case_reference", default=None, help="ticket, court order or committee decision number")
@acting(mfa=True)
@guarded
def reidentify_command(pseudonym: str, reason: str, case_reference: str | None, principal: str | None,
                       totp: str | None) -> None:
    """Resolve a pseudonym to institution + MRN: privacy_officer with MFA, audited."""
    from medllm_pipelines.defs.keys import PSEUDONYM_MAP, raw_table_name
    from medllm_pipelines.lib.security.raw_zone import RawZone
    from medllm_pipelines.lib.security.reidentify import (
        PseudonymNotFound,
        ReidentificationDenied,
        ReidentificationRequest,
        reidentify,
    )

    ctx = security_context()
    principal = require_principal(principal)
    zone = RawZone(ctx.settings.raw_zone_dir, ctx.service)
    table = raw_table_name(PSEUDONYM_MAP)
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
