"""The audit tables every ingest and quality asset writes: quarantine and per-file outcomes.

Rows are replaced per asset and partition, so re-materialising is idempotent;
``medllm reconcile`` reads them to account for every landed file.
"""

from __future__ import annotations

from typing import Any

from dagster import AssetKey, MetadataValue

from medllm_pipelines.defs.keys import AUDIT_SCHEMA, FILE_OUTCOMES_TABLE, QUARANTINE_TABLE, asset_name
from medllm_pipelines.lib.common.records import FileOutcomes, QuarantineRecord, quarantine_frame
from medllm_pipelines.lib.common.warehouse import Warehouse


def record_quarantine(
    warehouse: Warehouse, asset_key: AssetKey, records: list[QuarantineRecord], partition: str | None = None
) -> dict[str, Any]:
    """Replace this asset's (and partition's) rows in ``audit.quarantine``; return counts for metadata.

    Replacing (not appending) keeps re-materialisation idempotent.
    """
    frame = quarantine_frame(records).assign(partition=partition).astype({"partition": "string"})
    name = asset_name(asset_key)
    warehouse.replace_rows(AUDIT_SCHEMA, QUARANTINE_TABLE, {"asset": name, "partition": partition}, frame)
    by_reason = frame["reason_code"].value_counts().sort_index().to_dict() if len(frame) else {}
    by_institution = frame["institution"].fillna("<none>").value_counts().sort_index().to_dict() if len(frame) else {}
    return {
        "quarantined": len(frame),
        "quarantined_by_reason": MetadataValue.json({str(k): int(v) for k, v in by_reason.items()}),
        "quarantined_by_institution": MetadataValue.json({str(k): int(v) for k, v in by_institution.items()}),
    }


def record_file_outcomes(warehouse: Warehouse, outcomes: FileOutcomes, partition: str | None = None) -> dict[str, Any]:
    """Replace this asset's (and partition's) rows in ``audit.file_outcomes``: per landed file, its
    records in, out, quarantined and removed by rule, so that ``medllm reconcile`` accounts for every file.

    Raises when a file does not balance: a parser that loses or invents records is a bug, not data.
    """
    unbalanced = outcomes.unbalanced()
    if unbalanced:
        first = unbalanced[0]
        raise ValueError(
            f"{outcomes.asset}: {len(unbalanced)} files do not reconcile, e.g. object {first.source_object[:12]}: "
            f"in={first.records_in} out={first.records_out} quarantined={first.quarantined} removed={first.removed_by_rule}"
        )
    frame = outcomes.frame().assign(partition=partition).astype({"partition": "string"})
    warehouse.replace_rows(AUDIT_SCHEMA, FILE_OUTCOMES_TABLE, {"asset": outcomes.asset, "partition": partition}, frame)
    return {"files_accounted": len(frame)}
