"""The one Definitions object. It only gathers: keep heavy imports out.

torch, lightning, mlflow and great_expectations are imported inside the
assets that use them, so loading this module (every `dagster` process, every
step of a multiprocess run) stays fast.
"""

from __future__ import annotations

from functools import lru_cache

from dagster import Definitions, in_process_executor

from medllm_pipelines.defs import keys
from medllm_pipelines.defs.curate import assets as curate
from medllm_pipelines.defs.curate import dbt as curate_dbt
from medllm_pipelines.defs.curate import sequences as curate_sequences
from medllm_pipelines.defs.curate import text_datasets
from medllm_pipelines.defs.deidentify import assets as deidentify
from medllm_pipelines.defs.deidentify import disclosure, text
from medllm_pipelines.defs.deidentify import vitals as deidentify_vitals
from medllm_pipelines.defs.deploy import assets as deploy
from medllm_pipelines.defs.deploy import sensors as deploy_sensors
from medllm_pipelines.defs.evaluate import assets as evaluate
from medllm_pipelines.defs.evaluate import leak_scan
from medllm_pipelines.defs.ingest import arrivals
from medllm_pipelines.defs.ingest import assets as ingest
from medllm_pipelines.defs.ingest import vitals as ingest_vitals
from medllm_pipelines.defs.ingest.partitions import deployment_arrivals_start
from medllm_pipelines.defs.ingest.sensors import landing_sensors, refresh_after_ingest
from medllm_pipelines.lib.ingest.sources import load_sources
from medllm_pipelines.defs.jobs import JOBS
from medllm_pipelines.defs.label import assets as label
from medllm_pipelines.defs.quality import assets as quality
from medllm_pipelines.defs.resources import build_dbt_resources, build_resources
from medllm_pipelines.defs.train import assets as train
from medllm_pipelines.defs.train import compression, tabular_zoo
from medllm_pipelines.defs.train import imaging as train_imaging
from medllm_pipelines.defs.train import sequence as train_sequence
from medllm_pipelines.defs.train import text as train_text
from medllm_pipelines.defs.curate import entity_datasets
from medllm_pipelines.defs.train import entities as train_entities
from medllm_pipelines.defs.curate import note_datasets
from medllm_pipelines.defs.train import notes as train_notes
from medllm_pipelines.settings import Settings, load_settings

ALL_ASSETS = [
    *ingest.ASSETS,
    *ingest_vitals.ASSETS,
    arrivals.daily_arrivals,
    *quality.ASSETS,
    *deidentify.ASSETS,
    *deidentify_vitals.ASSETS,
    *text.ASSETS,
    *disclosure.ASSETS,
    *label.ASSETS,
    *curate.ASSETS,
    *curate_dbt.ASSETS,
    *text_datasets.ASSETS,
    *curate_sequences.ASSETS,
    *train.ASSETS,
    *tabular_zoo.ASSETS,
    *train_imaging.ASSETS,
    *train_text.ASSETS,
    *entity_datasets.ASSETS,
    *train_entities.ASSETS,
    *compression.ASSETS,
    *train_sequence.ASSETS,
    *note_datasets.ASSETS,
    *train_notes.ASSETS,
    *evaluate.ASSETS,
    *leak_scan.ASSETS,
    *deploy.ASSETS,
]


def _sinks(assets: list) -> list:
    """Keys nothing else depends on (the time-partitioned feed summary aside): the leak scan runs after them."""
    produced = {k for a in assets for k in a.keys}
    consumed = {k for a in assets for k in a.dependency_keys}
    return sorted(produced - consumed - {keys.DAILY_ARRIVALS}, key=lambda k: k.to_user_string())


ALL_ASSETS.append(leak_scan.build_privacy_leak_scan(_sinks(ALL_ASSETS)))
ALL_CHECKS = [
    *quality.CHECKS,
    *deidentify.CHECKS,
    *text.CHECKS,
    *disclosure.CHECKS,
    *label.CHECKS,
    *curate.CHECKS,
    *leak_scan.CHECKS,
    *deidentify_vitals.CHECKS,
]


def make_definitions(settings: Settings | None = None) -> Definitions:
    """Definitions bound to ``settings`` (tests pass their own; Dagster loads ``defs``)."""
    settings = settings or load_settings()
    # the daily-arrivals partitions start at this deployment's first arrival (fixed when the code loads)
    daily = arrivals.build_daily_arrivals(deployment_arrivals_start(settings.first_arrival_file, settings.arrivals_start))
    return Definitions(
        assets=[daily.asset if asset is arrivals.daily_arrivals else asset for asset in ALL_ASSETS],
        asset_checks=ALL_CHECKS,
        jobs=[*JOBS, daily.job],
        schedules=[daily.schedule],
        sensors=[*landing_sensors(load_sources(settings.sources_file)), refresh_after_ingest, *deploy_sensors.SENSORS],
        resources={**build_resources(settings), **build_dbt_resources(settings)},
        # One process per run: the DuckDB warehouse has a single writer, and
        # re-importing the code location per step costs more than it saves here.
        executor=in_process_executor,
    )


@lru_cache(maxsize=4)
def _definitions_for(settings: Settings) -> Definitions:
    return make_definitions(settings)


def current_definitions() -> Definitions:
    """The Definitions of the settings the environment gives now: what a run of `medllm run` reconstructs.

    ``runner.run_lifecycle`` executes jobs as reconstructable runs pointing here (module and attribute),
    so that each run records the code location the Dagster UI loads and can be re-executed from it.
    """
    return _definitions_for(load_settings())


defs = make_definitions()
