"""`medllm reconcile`: every stage's records in, out and quarantined, per institution and reason.

Read from what the assets recorded (their latest materialisation metadata in
the Dagster instance) and from the quarantine log in the warehouse, so the
figures people read are the figures auditors see in the UI.
"""

from __future__ import annotations

from typing import Any

from medllm_pipelines.settings import Settings

COUNT_FIELDS = {
    "in": ("records_in", "feed_entries_read", "files_in"),
    "out": ("records_out", "feed_resources_out", "files_stored"),
    "quarantined": ("records_quarantined", "feed_quarantined", "files_quarantined", "quarantined"),
}


def _first(meta: dict[str, Any], names: tuple[str, ...]) -> Any:
    for name in names:
        if name in meta:
            return meta[name]
    return None


def reconciliation_report(settings: Settings) -> dict[str, Any]:
    """{"stages": [...], "quarantine": [...]} for the latest materialisation of every asset."""
    from dagster import DagsterInstance

    from medllm_pipelines.definitions import make_definitions
    from medllm_pipelines.defs import keys
    from medllm_pipelines.lib.common.warehouse import Warehouse

    graph = make_definitions(settings).resolve_asset_graph()
    stages = []
    instance = DagsterInstance.from_config(str(settings.dagster_home))
    try:
        for key in graph.toposorted_asset_keys:
            event = instance.get_latest_materialization_event(key)
            if event is None or event.asset_materialization is None:
                continue
            meta = {k: v.value for k, v in event.asset_materialization.metadata.items()}
            counts = {name: _first(meta, fields) for name, fields in COUNT_FIELDS.items()}
            if all(v is None for v in counts.values()):
                continue
            removed = {k.removeprefix("removed[").removesuffix("]"): v for k, v in meta.items() if k.startswith("removed[")}
            stages.append(
                {
                    "stage": key.path[0],
                    "asset": key.to_user_string(),
                    "run_id": event.run_id,
                    **counts,
                    "removed_by_rule": removed,
                    "reconciled": meta.get("reconciled", meta.get("feed_reconciled")),
                    "by_institution": meta.get("reconciliation_by_institution") or meta.get("rows_by_institution") or {},
                }
            )
    finally:
        instance.dispose()
    warehouse = Warehouse(settings.warehouse_url)
    quarantine: list[dict[str, Any]] = []
    try:
        if warehouse.table_exists(keys.AUDIT_SCHEMA, keys.QUARANTINE_TABLE):
            frame = warehouse.query(
                f"SELECT asset, coalesce(institution, '<none>') AS institution, reason_code, count(*) AS records "
                f"FROM {keys.AUDIT_SCHEMA}.{keys.QUARANTINE_TABLE} GROUP BY 1, 2, 3 ORDER BY 1, 2, 3"
            )
            quarantine = [
                {"asset": a, "institution": i, "reason_code": r, "records": int(n)}
                for a, i, r, n in frame.itertuples(index=False)
            ]
    finally:
        warehouse.dispose()
    return {"stages": stages, "quarantine": quarantine}


def format_report(report: dict[str, Any]) -> str:
    lines = [f"{'asset':42s} {'in':>8s} {'out':>8s} {'quar.':>7s} {'removed':>8s}  ok"]
    for row in report["stages"]:
        removed = sum(int(v or 0) for v in row["removed_by_rule"].values())
        ok = {True: "yes", False: "NO", None: "-"}[row["reconciled"]]
        lines.append(
            f"{row['asset']:42s} {str(row['in'] if row['in'] is not None else '-'):>8s} "
            f"{str(row['out'] if row['out'] is not None else '-'):>8s} "
            f"{str(row['quarantined'] if row['quarantined'] is not None else '-'):>7s} {removed:>8d}  {ok}"
        )
        for institution, counts in sorted(row["by_institution"].items()):
            detail = (
                f"in {counts['in']} out {counts['out']} quarantined {counts['quarantined']} removed {counts['removed']}"
                if isinstance(counts, dict)
                else f"out {counts}"
            )
            lines.append(f"    {institution:38s} {detail}")
    if report["quarantine"]:
        lines.append("")
        lines.append("quarantined records by asset, institution and reason:")
        for row in report["quarantine"]:
            lines.append(f"  {row['asset']:36s} {row['institution']:12s} {row['reason_code']:28s} {row['records']:>6d}")
    return "\n".join(lines)
