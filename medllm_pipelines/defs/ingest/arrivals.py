"""Feeds over time: what arrived each day, per institution and file kind (daily partitions).

Backfilling a date range from the UI recomputes those days from the ledger;
a schedule fills yesterday every morning.
"""

import pandas as pd
from dagster import (
    AllPartitionMapping,
    AssetDep,
    AssetExecutionContext,
    DailyPartitionsDefinition,
    MaterializeResult,
    MetadataValue,
    asset,
    build_schedule_from_partitioned_job,
    define_asset_job,
)

from medllm_pipelines.defs import keys
from medllm_pipelines.lib.ingest.intake import read_ledger
from medllm_pipelines.resources.warehouse import WarehouseResource

# end_offset=1: today is a partition too (the feed summary fills as the day goes).
DAILY_PARTITIONS = DailyPartitionsDefinition(start_date="2024-01-01", timezone="Asia/Shanghai", end_offset=1)


@asset(
    key=keys.DAILY_ARRIVALS,
    # a day's summary reads the whole ledger (every institution's landed files): all of its partitions
    deps=[AssetDep(keys.LANDED_FILES, partition_mapping=AllPartitionMapping())],
    group_name=keys.INGEST,
    kinds={"python", "duckdb"},
    partitions_def=DAILY_PARTITIONS,
    description="Files landed per day, institution, kind and status (from audit.file_ledger); audit.daily_arrivals.",
)
def daily_arrivals(context: AssetExecutionContext, warehouse: WarehouseResource) -> MaterializeResult:
    day = context.partition_key
    ledger = read_ledger(warehouse.get())
    landed = pd.to_datetime(ledger["landed_at"], utc=True, errors="coerce").dt.tz_convert(DAILY_PARTITIONS.timezone)
    todays = ledger[landed.dt.strftime("%Y-%m-%d") == day]
    summary = (
        todays.assign(institution=todays["institution"].fillna("<none>"))
        .groupby(["institution", "file_kind", "status"], as_index=False)
        .agg(files=("content_sha256", "count"), bytes=("size_bytes", "sum"))
        .assign(day=day)
    )
    summary = summary.astype({"files": "int64", "bytes": "int64"})
    warehouse.get().replace_rows(keys.AUDIT_SCHEMA, "daily_arrivals", {"day": day}, summary)
    return MaterializeResult(
        metadata={
            "day": day,
            "files": int(summary["files"].sum()),
            "bytes": int(summary["bytes"].sum()),
            "files_by_institution": MetadataValue.json(
                {str(k): int(v) for k, v in summary.groupby("institution")["files"].sum().items()}
            ),
            "quarantined_files": int(summary.loc[summary["status"] == "quarantined", "files"].sum()),
        }
    )


daily_arrivals_job = define_asset_job(keys.DAILY_ARRIVALS_JOB, selection=[keys.DAILY_ARRIVALS], partitions_def=DAILY_PARTITIONS)
daily_arrivals_schedule = build_schedule_from_partitioned_job(daily_arrivals_job, hour_of_day=6)
