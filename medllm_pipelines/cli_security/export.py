"""``medllm export``: a de-identified warehouse table, encrypted, under a data-sharing agreement.

The gates and the write are :func:`medllm_pipelines.lib.security.exports.export_warehouse_table`;
this command checks the principal, audits the raw-zone read of the identifier
screen, the refusal or the export, and lists the file for key rotation.
"""

from __future__ import annotations

import datetime as dt
import re
import sys
from pathlib import Path

import click

from medllm_pipelines.cli_security.context import (
    EXIT_DENIED,
    acting,
    guarded,
    record,
    require,
    security_context,
)

__all__ = ["export_command"]

_DATASET = re.compile(r"^[a-z_][a-z0-9_]*\.[a-z_][a-z0-9_]*$")


@click.command("export")
@click.argument("dataset")
@click.option("--recipient", required=True)
@click.option("--agreement", "agreement_id", required=True)
@click.option("--out", "out_file", type=click.Path(path_type=Path), required=True)
@click.option("--cross-border", is_flag=True, help="the recipient is outside the country")
@acting(mfa=True)
@guarded
def export_command(dataset: str, recipient: str, agreement_id: str, out_file: Path, cross_border: bool,
                   principal: str | None, totp: str | None) -> None:
    """Export a de-identified warehouse table (schema.table) under a sharing agreement, encrypted."""
    from medllm_pipelines.defs.keys import RAW_PATIENTS, raw_table_name
    from medllm_pipelines.lib.security.exports import (
        ExportRequest,
        export_audit_details,
        export_warehouse_table,
        raw_zone_needles,
        record_export,
    )
    from medllm_pipelines.lib.security.governance import ExportRefused, GovernanceError
    from medllm_pipelines.lib.security.raw_zone import RawZone
    from medllm_pipelines.lib.security.vault_client import DEFAULT_EXPORT_KEY_NAME

    if not _DATASET.fullmatch(dataset):
        raise click.BadParameter("DATASET is a warehouse table, schema.table", param_hint="DATASET")
    ctx = security_context()
    settings = ctx.settings
    resource = f"dataset:{dataset}"
    decision = require(ctx, principal, "export_dataset", totp, resource)

    def audit_read(name: str) -> None:
        record(ctx, decision, "raw_zone.read", name, "succeeded", "identifier screen of an export")

    zone = RawZone(settings.raw_zone_dir, ctx.service, on_read=audit_read)
    request = ExportRequest(dataset, recipient, agreement_id, out_file, cross_border, dt.date.today())
    try:
        receipt = export_warehouse_table(
            request, governance_dir=settings.governance_dir, warehouse_url=settings.warehouse_url,
            k=settings.k_anonymity_k, purpose=settings.purpose, keys=ctx.key_service(DEFAULT_EXPORT_KEY_NAME),
            needles=lambda: raw_zone_needles(zone, raw_table_name(RAW_PATIENTS)))
    except (GovernanceError, ExportRefused) as exc:
        record(ctx, decision, "export_dataset", resource, "failed", f"export refused: {exc}",
               agreement_id=agreement_id)
        click.echo(f"refused: {exc}", err=True)
        sys.exit(EXIT_DENIED)
    record_export(settings.exports_dir, receipt.path)
    record(ctx, decision, "export_dataset", resource, "succeeded",
           f"exported under agreement {receipt.agreement_id} v{receipt.agreement_version}",
           **export_audit_details(receipt))
    click.echo(f"exported {receipt.rows} rows of {dataset} to {receipt.path} (envelope-encrypted with "
               f"{receipt.key_ref}; manifest {receipt.manifest_path.name}) under agreement {receipt.agreement_id} "
               f"v{receipt.agreement_version}")
