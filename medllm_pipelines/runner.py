"""Running the lifecycle through Dagster (what `medllm run` does), recorded in the instance.

Ingestion is partitioned by institution. A lifecycle is ONE Dagster run of
`lifecycle_job` over the range of every institution partition (the ingest
assets use a single-run backfill policy and loop over the run's partition
keys), followed in the same run by every downstream stage. Sensors launch
single-partition `ingest_job` runs; the UI can backfill any subset.
"""

from __future__ import annotations

import datetime as dt
import gc
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any
from zoneinfo import ZoneInfo

from medllm_pipelines.settings import Settings


@dataclass
class LifecycleResult:
    """The Dagster runs of one lifecycle, in order; the last is the downstream run."""

    runs: list[Any] = field(default_factory=list)
    partitions: list[str] = field(default_factory=list)

    @property
    def success(self) -> bool:
        return bool(self.runs) and all(run.success for run in self.runs)

    @property
    def run_id(self) -> str:
        """The lifecycle run (the first; a feed-summary run may follow it)."""
        return self.runs[0].run_id

    @property
    def run_ids(self) -> list[str]:
        return [run.run_id for run in self.runs]

    @property
    def all_events(self) -> list[Any]:
        return [event for run in self.runs for event in run.all_events]

    def get_asset_materialization_events(self) -> list[Any]:
        return [event for run in self.runs for event in run.get_asset_materialization_events()]

    def materializations(self, asset_key: Any) -> Iterator[dict[str, Any]]:
        """Metadata of ``asset_key``'s materialisation in each run.

        A run over several institution partitions records one event per
        partition, all with the same run-level metadata (totals plus
        per-institution breakdowns); it is yielded once.
        """
        for run in self.runs:
            for event in run.get_asset_materialization_events():
                materialization = event.event_specific_data.materialization
                if materialization.asset_key == asset_key:
                    yield {k: v.value for k, v in materialization.metadata.items()}
                    break

    def failed_checks(self) -> list[str]:
        return [
            f"{e.event_specific_data.asset_key.to_user_string()}:{e.event_specific_data.check_name}"
            for e in self.all_events
            if e.event_type_value == "ASSET_CHECK_EVALUATION" and not e.event_specific_data.passed
        ]


def ensure_partitions(instance: Any, partitions: Sequence[str]) -> None:
    """Register the institution partitions Dagster does not know yet."""
    from medllm_pipelines.defs.ingest.sources import INSTITUTION_PARTITIONS

    known = set(instance.get_dynamic_partitions(INSTITUTION_PARTITIONS.name))
    missing = [p for p in partitions if p not in known]
    if missing:
        instance.add_dynamic_partitions(INSTITUTION_PARTITIONS.name, missing)


def partition_range_tags(instance: Any, partitions: Sequence[str]) -> dict[str, str]:
    """Tags that make one run cover ``partitions`` (they must be contiguous in Dagster's order)."""
    from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG

    from medllm_pipelines.defs.ingest.sources import INSTITUTION_PARTITIONS

    order = list(instance.get_dynamic_partitions(INSTITUTION_PARTITIONS.name))
    positions = sorted(order.index(p) for p in partitions)
    if positions != list(range(positions[0], positions[0] + len(positions))):
        raise ValueError("partitions for one run must be contiguous in the institution partition order")
    return {
        ASSET_PARTITION_RANGE_START_TAG: order[positions[0]],
        ASSET_PARTITION_RANGE_END_TAG: order[positions[-1]],
    }


def run_lifecycle(
    settings: Settings,
    *,
    job_name: str | None = None,
    log_level: str = "INFO",
    freeze_gc: bool = False,
    partitions: Sequence[str] | None = None,
) -> LifecycleResult:
    """Ingest every institution (or ``partitions``), then run every downstream stage once.

    ``job_name``: ``lifecycle_job`` (default: ingest + downstream), ``ingest_job``
    or ``downstream_job``. ``freeze_gc`` moves the objects alive before the runs
    out of the garbage collector's reach; benchmarks/bench_lifecycle.py measures
    it side by side. Off by default: a small gain at 400 patients did not hold
    at 1,000 (docs/benchmarks.md).
    """
    from dagster import DagsterInstance

    from medllm_pipelines.definitions import make_definitions
    from medllm_pipelines.defs import keys
    from medllm_pipelines.defs.ingest.arrivals import DAILY_PARTITIONS
    from medllm_pipelines.defs.ingest.sources import UNROUTED, load_sources

    job_name = job_name or keys.LIFECYCLE_JOB
    if job_name not in (keys.LIFECYCLE_JOB, keys.INGEST_JOB, keys.DOWNSTREAM_JOB):
        raise ValueError(f"unknown job {job_name!r}")
    defs = make_definitions(settings)
    registered = [*load_sources(settings.sources_file).codes, UNROUTED]
    chosen = list(partitions or registered)
    run_config = {"loggers": {"console": {"config": {"log_level": log_level}}}}
    result = LifecycleResult(partitions=chosen)
    with DagsterInstance.get() as instance:
        ensure_partitions(instance, chosen)
        tags = {"medllm/trigger": "cli"}
        if job_name != keys.DOWNSTREAM_JOB:
            tags.update(partition_range_tags(instance, chosen))
        if freeze_gc:
            gc.collect()
            gc.freeze()
        try:
            result.runs.append(
                defs.resolve_job_def(job_name).execute_in_process(
                    instance=instance, raise_on_error=False, run_config=run_config, tags=tags
                )
            )
            if job_name != keys.DOWNSTREAM_JOB and result.success:
                # today's feed summary (the daily partitions fill the time axis)
                today = dt.datetime.now(ZoneInfo(DAILY_PARTITIONS.timezone)).strftime("%Y-%m-%d")
                result.runs.append(
                    defs.resolve_job_def(keys.DAILY_ARRIVALS_JOB).execute_in_process(
                        instance=instance, partition_key=today, raise_on_error=False, run_config=run_config
                    )
                )
        finally:
            if freeze_gc:
                gc.unfreeze()
    return result
