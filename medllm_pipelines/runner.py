"""Running the lifecycle through Dagster (what `medllm run` does), recorded in the instance.

Ingestion is partitioned by institution. A lifecycle is ONE Dagster run of
`lifecycle_job` over the range of every institution partition (the ingest
assets use a single-run backfill policy and loop over the run's partition
keys), followed in the same run by every downstream stage. Sensors launch
single-partition `ingest_job` runs; the UI can backfill any subset.

Runs execute in this process but are created as the Dagster UI creates them:
with the origin of the workspace's code location (``workspace.yaml``) and a
reconstructable job (``definitions.current_definitions``). So they appear on
the UI's timeline and job pages, and a failed run can be re-executed from the
UI. A run made by ``execute_in_process`` has no origin and can do neither.
"""

from __future__ import annotations

import datetime as dt
import gc
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import yaml

from medllm_pipelines.settings import Settings, load_settings

PROJECT_ROOT = Path(__file__).resolve().parents[1]
WORKSPACE_FILE = PROJECT_ROOT / "workspace.yaml"
DEFINITIONS_MODULE = "medllm_pipelines.definitions"
DEFINITIONS_FACTORY = "current_definitions"
REPOSITORY_NAME = "__repository__"  # the one repository a Definitions object forms
PARTITION_TAG = "dagster/partition"


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
        """Metadata of every materialisation of ``asset_key`` in these runs.

        A run over several institution partitions records one event per
        partition, each with that partition's own figures (in no fixed
        order): sum or merge them for the run's totals.
        """
        for run in self.runs:
            for event in run.get_asset_materialization_events():
                materialization = event.event_specific_data.materialization
                if materialization.asset_key == asset_key:
                    yield {k: v.value for k, v in materialization.metadata.items()}

    def failed_checks(self) -> list[str]:
        return [
            f"{e.event_specific_data.asset_key.to_user_string()}:{e.event_specific_data.check_name}"
            for e in self.all_events
            if e.event_type_value == "ASSET_CHECK_EVALUATION" and not e.event_specific_data.passed
        ]


def ensure_partitions(instance: Any, partitions: Sequence[str]) -> None:
    """Register the institution partitions Dagster does not know yet."""
    from medllm_pipelines.defs.ingest.partitions import INSTITUTION_PARTITIONS

    known = set(instance.get_dynamic_partitions(INSTITUTION_PARTITIONS.name))
    missing = [p for p in partitions if p not in known]
    if missing:
        instance.add_dynamic_partitions(INSTITUTION_PARTITIONS.name, missing)


def partition_range_tags(instance: Any, partitions: Sequence[str]) -> dict[str, str]:
    """Tags that make one run cover ``partitions`` (they must be contiguous in Dagster's order)."""
    from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG

    from medllm_pipelines.defs.ingest.partitions import INSTITUTION_PARTITIONS

    order = list(instance.get_dynamic_partitions(INSTITUTION_PARTITIONS.name))
    positions = sorted(order.index(p) for p in partitions)
    if positions != list(range(positions[0], positions[0] + len(positions))):
        raise ValueError("partitions for one run must be contiguous in the institution partition order")
    return {
        ASSET_PARTITION_RANGE_START_TAG: order[positions[0]],
        ASSET_PARTITION_RANGE_END_TAG: order[positions[-1]],
    }


@lru_cache(maxsize=1)
def code_location_name(workspace_file: Path = WORKSPACE_FILE) -> str:
    """The location name the Dagster UI gives this project (``workspace.yaml``)."""
    for entry in yaml.safe_load(workspace_file.read_text())["load_from"]:
        module = entry.get("python_module")
        if isinstance(module, dict) and module.get("module_name") == DEFINITIONS_MODULE:
            return str(module.get("location_name") or DEFINITIONS_MODULE)
    raise ValueError(f"{workspace_file} loads no python_module {DEFINITIONS_MODULE}")


def ui_job_origin(job_name: str) -> Any:
    """The origin the UI records for ``job_name`` when it launches it from the workspace's code location."""
    from dagster._core.remote_origin import ManagedGrpcPythonEnvCodeLocationOrigin, RemoteRepositoryOrigin
    from dagster._core.types.loadable_target_origin import LoadableTargetOrigin

    # exactly what workspace.yaml's python_module entry gives (no executable or directory), so the ids match
    target = LoadableTargetOrigin(module_name=DEFINITIONS_MODULE)
    location = ManagedGrpcPythonEnvCodeLocationOrigin(target, code_location_name())
    return RemoteRepositoryOrigin(location, REPOSITORY_NAME).get_job_origin(job_name)


def reconstructable_job(job_name: str) -> Any:
    """The job as the workspace's code location gives it, for the settings the environment gives *now*.

    Dagster keeps the last job definition per ``ReconstructableJob`` (``lru_cache`` on its methods, keyed by module,
    factory and job name, not by our settings): a second run of the same job in one process with another
    ``MEDLLM_HOME`` would reuse the first one's resources (its Vault, warehouse, landing zone). The cache is
    cleared here, so each run reads ``current_definitions()`` again (itself cached per settings).
    """
    from dagster._core.definitions.reconstruct import ReconstructableJob, ReconstructableRepository

    ReconstructableJob.get_definition.cache_clear()
    ReconstructableJob.get_repository_definition.cache_clear()
    repository = ReconstructableRepository.for_module(DEFINITIONS_MODULE, DEFINITIONS_FACTORY,
                                                      working_directory=str(PROJECT_ROOT))
    return repository.get_reconstructable_job(job_name)


def execute_job_run(instance: Any, job_name: str, run_config: dict[str, Any], tags: dict[str, str]) -> Any:
    """Create the run as the UI would (origin, reconstructable job) and execute it here, synchronously."""
    from dagster._core.execution.api import execute_run

    job = reconstructable_job(job_name)
    run = instance.create_run_for_job(
        job_def=job.get_definition(),
        run_config=run_config,
        tags=tags,
        remote_job_origin=ui_job_origin(job_name),
        job_code_origin=job.get_python_origin(),
    )
    return execute_run(job, run, instance)


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

    from medllm_pipelines.defs import keys
    from medllm_pipelines.defs.ingest.partitions import ARRIVALS_TIMEZONE
    from medllm_pipelines.lib.ingest.sources import UNROUTED, load_sources

    job_name = job_name or keys.LIFECYCLE_JOB
    if job_name not in (keys.LIFECYCLE_JOB, keys.INGEST_JOB, keys.DOWNSTREAM_JOB):
        raise ValueError(f"unknown job {job_name!r}")
    if settings != load_settings():
        # runs are reconstructed from the environment (definitions.current_definitions), as the UI does
        raise ValueError("run_lifecycle runs with the settings the environment gives; set MEDLLM_* before calling it")
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
            result.runs.append(execute_job_run(instance, job_name, run_config, tags))
            if job_name != keys.DOWNSTREAM_JOB and result.success:
                # today's feed summary (the daily partitions fill the time axis)
                today = dt.datetime.now(ZoneInfo(ARRIVALS_TIMEZONE)).strftime("%Y-%m-%d")
                daily_tags = {"medllm/trigger": "cli", PARTITION_TAG: today}
                result.runs.append(execute_job_run(instance, keys.DAILY_ARRIVALS_JOB, run_config, daily_tags))
        finally:
            if freeze_gc:
                gc.unfreeze()
    return result
