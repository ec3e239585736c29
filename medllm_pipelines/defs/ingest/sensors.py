"""Real-time intake (clause 5.1.1.2, row D3): one sensor per registered source, one for
unrouted files, and a sensor that refreshes downstream stages after an ingest run."""

import hashlib
import json
from pathlib import Path

from dagster import (
    DagsterRunStatus,
    DefaultSensorStatus,
    RunRequest,
    SensorDefinition,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    run_status_sensor,
    sensor,
)

from medllm_pipelines.defs import keys
from medllm_pipelines.defs.jobs import downstream_job, ingest_job
from medllm_pipelines.defs.ingest.partitions import INSTITUTION_PARTITIONS
from medllm_pipelines.lib.ingest.sources import UNROUTED, SourceRegistry
from medllm_pipelines.resources.landing import LandingZone

# How many content hashes a cursor remembers; older ones are still
# deduplicated by the ledger inside the run.
CURSOR_MEMORY = 20_000


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def sensor_name(partition: str) -> str:
    return f"{keys.LANDING_SENSOR}_{partition.replace('-', '_')}"


def landing_sensor(partition: str, registry: SourceRegistry) -> SensorDefinition:
    """A sensor on one source's landing folder (or on files outside every registered folder).

    New content (by SHA-256, remembered in the cursor) launches `ingest_job` for
    that partition; the run key is derived from the batch's hashes, so the same
    files never launch two runs, even from a sensor restarted without its cursor.
    """

    @sensor(
        name=sensor_name(partition),
        job_name=keys.INGEST_JOB,
        minimum_interval_seconds=30,
        default_status=DefaultSensorStatus.STOPPED,
        description=(
            f"Launches ingest_job[{partition}] when new files land in "
            + ("folders of no registered source." if partition == UNROUTED else f"<landing>/{partition}/.")
        ),
    )
    def _landing_sensor(context: SensorEvaluationContext, landing_zone: LandingZone):
        seen: list[str] = json.loads(context.cursor) if context.cursor else []
        seen_set = set(seen)
        new_hashes: list[str] = []
        for landed in landing_zone.scan_partition(partition, registry.codes):
            try:
                digest = file_sha256(landed.path)
            except FileNotFoundError:  # consumed by a run meanwhile
                continue
            if digest not in seen_set:
                seen_set.add(digest)
                new_hashes.append(digest)
        if not new_hashes:
            return SkipReason(f"no new files for {partition}")
        batch = sorted(new_hashes)
        run_key = hashlib.sha256(f"{partition}:{''.join(batch)}".encode()).hexdigest()
        partition_requests = []
        if partition not in context.instance.get_dynamic_partitions(INSTITUTION_PARTITIONS.name):
            partition_requests.append(INSTITUTION_PARTITIONS.build_add_request([partition]))
        return SensorResult(
            run_requests=[
                RunRequest(
                    run_key=run_key,
                    partition_key=partition,
                    tags={"medllm/new_files": str(len(batch)), "medllm/trigger": sensor_name(partition)},
                )
            ],
            dynamic_partitions_requests=partition_requests,
            cursor=json.dumps((seen + batch)[-CURSOR_MEMORY:]),
        )

    return _landing_sensor


def landing_sensors(registry: SourceRegistry) -> list[SensorDefinition]:
    return [landing_sensor(code, registry) for code in (*registry.codes, UNROUTED)]


@run_status_sensor(
    name="refresh_after_ingest",
    run_status=DagsterRunStatus.SUCCESS,
    monitored_jobs=[ingest_job],
    request_job=downstream_job,
    default_status=DefaultSensorStatus.STOPPED,
    description="After a successful ingest run, refreshes every downstream stage (quality -> evaluate).",
)
def refresh_after_ingest(context):
    return RunRequest(run_key=f"after-{context.dagster_run.run_id}")
