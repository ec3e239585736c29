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


def _metadata(event: Any) -> dict[str, Any]:
    return {k: v.value for k, v in event.asset_materialization.metadata.items()}


def _run_metadata(instance: Any, key: Any, run_id: str) -> list[dict[str, Any]]:
    """Every partition's metadata of ``key`` in ``run_id``: a partition's event carries that partition only."""
    from dagster import DagsterEventType

    return [
        _metadata(entry)
        for entry in instance.all_logs(run_id, of_type=DagsterEventType.ASSET_MATERIALIZATION)
        if entry.asset_materialization is not None and entry.asset_materialization.asset_key == key
    ]


def _stage_row(key: Any, run_id: str, metas: list[dict[str, Any]]) -> dict[str, Any] | None:
    """One stage row from one or several (partition) metadata dicts: counts summed, breakdowns merged."""
    counts: dict[str, Any] = {}
    for name, fields in COUNT_FIELDS.items():
        values = [value for meta in metas if (value := _first(meta, fields)) is not None]
        counts[name] = sum(values) if values else None
    if all(v is None for v in counts.values()):
        return None
    removed: dict[str, int] = {}
    by_institution: dict[str, Any] = {}
    reconciled = []
    for meta in metas:
        for k, v in meta.items():
            if k.startswith("removed["):
                rule = k.removeprefix("removed[").removesuffix("]")
                removed[rule] = removed.get(rule, 0) + v
        by_institution.update(meta.get("reconciliation_by_institution") or meta.get("rows_by_institution") or {})
        reconciled.append(meta.get("reconciled", meta.get("feed_reconciled")))
    known = [r for r in reconciled if r is not None]
    return {
        "stage": key.path[0],
        "asset": key.to_user_string(),
        "run_id": run_id,
        **counts,
        "removed_by_rule": removed,
        "reconciled": all(known) if known else None,
        "by_institution": by_institution,
    }


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
            partitioned = graph.get(key).partitions_def is not None
            metas = _run_metadata(instance, key, event.run_id) if partitioned else [_metadata(event)]
            stage = _stage_row(key, event.run_id, metas)
            if stage is not None:
                stages.append(stage)
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
        files = file_accounting(warehouse)
    finally:
        warehouse.dispose()
    return {"stages": stages, "quarantine": quarantine, **files}


def file_accounting(warehouse: Any) -> dict[str, Any]:
    """Every file in the ledger and what became of it: quarantined at intake (with the reason), or,
    per ingest asset that read it, its records in, out, quarantined (by reason) and removed (by rule).

    Files are named by content hash only (a file name can identify a patient). A stored file that no
    asset accounts for is listed under ``files_unaccounted``; a file whose counts do not balance
    under ``files_unbalanced``.
    """
    import orjson

    from medllm_pipelines.defs import keys
    from medllm_pipelines.lib.ingest.intake import STORED
    from medllm_pipelines.lib.ingest.landing import ANNOTATION_FILE_KINDS

    empty: dict[str, Any] = {"files": [], "files_summary": {"files": 0}, "files_unaccounted": [], "files_unbalanced": []}
    if not warehouse.table_exists(keys.AUDIT_SCHEMA, keys.FILE_LEDGER_TABLE):
        return empty
    ledger = warehouse.read_table(keys.AUDIT_SCHEMA, keys.FILE_LEDGER_TABLE)
    outcomes: dict[str, list[dict[str, Any]]] = {}
    if warehouse.table_exists(keys.AUDIT_SCHEMA, keys.FILE_OUTCOMES_TABLE):
        for row in warehouse.read_table(keys.AUDIT_SCHEMA, keys.FILE_OUTCOMES_TABLE).to_dict("records"):
            outcomes.setdefault(str(row["source_object"]), []).append(
                {
                    "asset": row["asset"],
                    "in": int(row["records_in"]),
                    "out": int(row["records_out"]),
                    "quarantined": int(row["records_quarantined"]),
                    "removed": int(row["records_removed"]),
                    "quarantined_by_reason": orjson.loads(row["quarantined_by_reason"] or "{}"),
                    "removed_by_rule": orjson.loads(row["removed_by_rule"] or "{}"),
                }
            )
    label_quarantine: dict[str, dict[str, int]] = {}
    if warehouse.table_exists(keys.AUDIT_SCHEMA, keys.QUARANTINE_TABLE):
        held = warehouse.query(
            f"SELECT source_object, reason_code, count(*) AS n FROM {keys.AUDIT_SCHEMA}.{keys.QUARANTINE_TABLE} "
            f"WHERE stage = 'label' AND source_object IS NOT NULL GROUP BY 1, 2"
        )
        for source_object, reason, n in held.itertuples(index=False):
            label_quarantine.setdefault(str(source_object), {})[str(reason)] = int(n)
    files, unaccounted, unbalanced = [], [], []
    by_status: dict[str, int] = {}
    for row in ledger.sort_values(["institution", "file_kind", "content_sha256"]).itertuples(index=False):
        entry: dict[str, Any] = {
            "content_sha256": row.content_sha256,
            "institution": row.institution,
            "file_kind": row.file_kind,
            "ledger_status": row.status,
        }
        if row.status != STORED:
            entry["outcome"] = "quarantined_at_intake"
            entry["reason_code"] = row.reason_code
        elif row.content_sha256 in outcomes:
            entry["outcome"] = "ingested"
            entry["assets"] = outcomes[row.content_sha256]
            if any(a["in"] != a["out"] + a["quarantined"] + a["removed"] for a in entry["assets"]):
                unbalanced.append(row.content_sha256)
        elif row.file_kind in ANNOTATION_FILE_KINDS:
            entry["outcome"] = "read_by_label_imports"
            entry["quarantined_by_reason"] = label_quarantine.get(row.content_sha256, {})
        else:
            entry["outcome"] = "unaccounted"
            unaccounted.append(row.content_sha256)
        by_status[entry["outcome"]] = by_status.get(entry["outcome"], 0) + 1
        files.append(entry)
    return {
        "files": files,
        "files_summary": {"files": len(files), **dict(sorted(by_status.items())), "unbalanced": len(unbalanced)},
        "files_unaccounted": unaccounted,
        "files_unbalanced": unbalanced,
    }


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
    summary = report.get("files_summary") or {}
    if summary.get("files"):
        lines.append("")
        lines.append("landed files: " + ", ".join(f"{k} {v}" for k, v in summary.items()))
        for digest in report.get("files_unaccounted", [])[:20]:
            lines.append(f"  UNACCOUNTED {digest}")
        for digest in report.get("files_unbalanced", [])[:20]:
            lines.append(f"  UNBALANCED  {digest}")
    if report["quarantine"]:
        lines.append("")
        lines.append("quarantined records by asset, institution and reason:")
        for row in report["quarantine"]:
            lines.append(f"  {row['asset']:36s} {row['institution']:12s} {row['reason_code']:28s} {row['records']:>6d}")
    return "\n".join(lines)
