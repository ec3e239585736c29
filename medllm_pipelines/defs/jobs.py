"""Jobs: per-institution ingestion, the downstream refresh, and the whole lifecycle."""

from dagster import AssetSelection, define_asset_job

from medllm_pipelines.defs import keys

# The daily feed summary has its own (time) partitions and job.
_TIME_PARTITIONED = AssetSelection.assets(keys.DAILY_ARRIVALS)

ingest_job = define_asset_job(
    keys.INGEST_JOB,
    selection=AssetSelection.groups(keys.INGEST) - _TIME_PARTITIONED,
    description="Take one institution's new landed files into the encrypted raw zone and parse them (partitioned).",
)
downstream_job = define_asset_job(
    keys.DOWNSTREAM_JOB,
    selection=AssetSelection.all() - AssetSelection.groups(keys.INGEST),
    description=(
        "Everything after ingestion, over all institutions: quality -> deidentify -> label -> curate -> train -> "
        "evaluate -> deploy."
    ),
)
lifecycle_job = define_asset_job(
    keys.LIFECYCLE_JOB,
    selection=AssetSelection.all() - _TIME_PARTITIONED,
    description="One institution's ingestion and every downstream stage in one run (pick the partition).",
)
retrain_job = define_asset_job(
    keys.RETRAIN_JOB,
    selection=AssetSelection.groups(keys.TRAIN, keys.EVALUATE),
    description="Retrain and re-evaluate every model on the curated data (launched when clinicians' feedback "
    "recommends it: deploy/clinical_feedback, sensor retrain_on_feedback).",
)
JOBS = [ingest_job, downstream_job, lifecycle_job, retrain_job]  # + daily_arrivals_job (defs/ingest/arrivals.py)
