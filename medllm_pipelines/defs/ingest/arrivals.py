"""Feeds over time: what arrived each day, per institution and file kind (daily partitions).

Backfilling a date range from the UI recomputes those days from the ledger;
a schedule fills the latest day every morning. The days start at the
deployment's first arrival (``defs/ingest/partitions.py``): ``make_definitions``
builds this asset, its job and schedule with :func:`build_daily_arrivals`.
"""

# No `from __future__ import annotations`: Dagster reads the `context` annotation as a class.

from typing import Any, NamedTuple

from dagster import (
    AllPartitionMapping,
    AssetDep,
    AssetExecutionContext,
    AssetsDefinition,
    DailyPartitionsDefinition,
    MaterializeResult,
    ScheduleDefinition,
    asset,
    build_schedule_from_partitioned_job,
    define_asset_job,
)

from medllm_pipelines.defs import keys
from medllm_pipelines.defs.ingest.partitions import FALLBACK_ARRIVALS_START, daily_partitions
from medllm_pipelines.lib.ingest.arrivals import summarise_day
from medllm_pipelines.lib.ingest.intake import read_ledger
from medllm_pipelines.resources.warehouse import WarehouseResource

DAILY_ARRIVALS_TABLE = "daily_arrivals"


class DailyArrivals(NamedTuple):
    """The asset, its job and its schedule, over one daily partitions definition."""

    partitions_def: DailyPartitionsDefinition
    asset: AssetsDefinition
    job: Any  # what define_asset_job returns (its class is not public API)
    schedule: ScheduleDefinition


def build_daily_arrivals(start_date: str) -> DailyArrivals:
    """``ingest/daily_arrivals`` with daily partitions from ``start_date``, and its job and schedule."""
    partitions_def = daily_partitions(start_date)

    @asset(
        key=keys.DAILY_ARRIVALS,
        # a day's summary reads the whole ledger (every institution's landed files): all of its partitions
        deps=[AssetDep(keys.LANDED_FILES, partition_mapping=AllPartitionMapping())],
        group_name=keys.INGEST,
        kinds={"python", "duckdb"},
        partitions_def=partitions_def,
        description="Files landed per day, institution, kind and status (from audit.file_ledger); audit.daily_arrivals.",
    )
    def daily_arrivals(context: AssetExecutionContext, warehouse: WarehouseResource) -> MaterializeResult:
        summary = summarise_day(read_ledger(warehouse.get()), context.partition_key, partitions_def.timezone)
        warehouse.get().replace_rows(keys.AUDIT_SCHEMA, DAILY_ARRIVALS_TABLE, {"day": summary.day}, summary.frame)
        return MaterializeResult(metadata=summary.as_metadata())

    job = define_asset_job(keys.DAILY_ARRIVALS_JOB, selection=[keys.DAILY_ARRIVALS], partitions_def=partitions_def)
    return DailyArrivals(partitions_def, daily_arrivals, job, build_schedule_from_partitioned_job(job, hour_of_day=6))


# Built without a deployment (imports that only need the shape, not the start).
DEFAULT = build_daily_arrivals(FALLBACK_ARRIVALS_START)
DAILY_PARTITIONS = DEFAULT.partitions_def
daily_arrivals = DEFAULT.asset
daily_arrivals_job = DEFAULT.job
daily_arrivals_schedule = DEFAULT.schedule
