"""Check factories more than one stage attaches to its assets."""
# No `from __future__ import annotations` here: Dagster reads the check functions' annotations at definition time.


from dagster import (
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetCheckSeverity,
    AssetKey,
    MetadataValue,
    asset_check,
)

from medllm_pipelines.defs import keys
from medllm_pipelines.defs.keys import raw_table_name, warehouse_location
from medllm_pipelines.lib.security.leak_scan import identifier_needles, scan_frame
from medllm_pipelines.resources.raw_zone import RawZoneResource
from medllm_pipelines.resources.warehouse import WarehouseResource


def identifier_leak_gate(asset_key: AssetKey):
    """Blocking check: no identifier of the raw zone's patients appears in this de-identified table."""

    @asset_check(
        asset=asset_key,
        name=keys.CHECK_NO_IDENTIFIERS,
        blocking=True,
        description="Scans every text column for the raw zone's names, ID numbers, MRNs, phones, emails, addresses.",
    )
    def _leak_gate(
        context: AssetCheckExecutionContext, raw_zone: RawZoneResource, warehouse: WarehouseResource
    ) -> AssetCheckResult:
        needles = identifier_needles(raw_zone.get().read_partitions(raw_table_name(keys.RAW_PATIENTS)))
        schema, table = warehouse_location(asset_key)
        hits = scan_frame(warehouse.get().read_table(schema, table), needles, f"{schema}.{table}")
        return AssetCheckResult(
            passed=not hits,
            severity=AssetCheckSeverity.ERROR,
            description="no direct identifier found" if not hits else f"{len(hits)} identifier kinds found",
            metadata={
                "identifier_kinds_scanned": MetadataValue.json(sorted(needles)),
                "values_scanned": sum(len(v) for v in needles.values()),
                "hits": MetadataValue.json([{"location": h.location, "kind": h.identifier_kind, "count": h.count} for h in hits]),
            },
        )

    return _leak_gate


def model_trained_result(needs) -> AssetCheckResult:
    """The ``model_trained`` check of a train asset: passes when the spec's data needs were met; otherwise a WARN
    with the reason (the data stages succeeded; nothing downstream is blocked)."""
    return AssetCheckResult(check_name=keys.CHECK_MODEL_TRAINED, passed=needs.met, severity=AssetCheckSeverity.WARN,
                            description="trained" if needs.met else f"not trained: {needs.reason}",
                            metadata=needs.as_metadata())
