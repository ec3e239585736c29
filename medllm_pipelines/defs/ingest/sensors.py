"""Real-time intake: a sensor on the landing zone (clause 5.1.1.2, row D3)."""


import hashlib
import json

from dagster import DefaultSensorStatus, RunRequest, SensorEvaluationContext, SkipReason, sensor

from medllm_pipelines.defs import keys
from medllm_pipelines.resources.landing import LandingZone

# How many content hashes the cursor remembers; older ones are still
# deduplicated by the ledger inside the run.
CURSOR_MEMORY = 20_000


def _file_hash(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@sensor(
    name=keys.LANDING_SENSOR,
    job_name=keys.INGEST_JOB,
    minimum_interval_seconds=30,
    default_status=DefaultSensorStatus.STOPPED,
    description="Launches ingestion when new files land; a file already seen (same content hash) never launches a run.",
)
def landing_zone_sensor(context: SensorEvaluationContext, landing_zone: LandingZone):
    seen: list[str] = json.loads(context.cursor) if context.cursor else []
    seen_set = set(seen)
    new_hashes: list[str] = []
    for landed in landing_zone.scan():
        try:
            digest = _file_hash(landed.path)
        except FileNotFoundError:  # consumed by a run meanwhile
            continue
        if digest not in seen_set:
            seen_set.add(digest)
            new_hashes.append(digest)
    if not new_hashes:
        return SkipReason("no new files in the landing zone")
    batch = sorted(new_hashes)
    context.update_cursor(json.dumps((seen + batch)[-CURSOR_MEMORY:]))
    run_key = hashlib.sha256("".join(batch).encode()).hexdigest()
    return RunRequest(run_key=run_key, tags={"medllm/new_files": str(len(batch)), "medllm/trigger": "landing_zone_sensor"})
