"""Ingest stage: landing zone -> encrypted raw zone -> parsed (still encrypted) tables.

Every ingest asset is partitioned by source institution (``partitions.py``),
so one institution's feed is taken in, parsed, re-run or backfilled without
touching the others; one run may cover several partitions, and each shows its
own figures (``results.py``). The work itself is ``lib/ingest``'s.
"""

# No `from __future__ import annotations`: Dagster reads the `context` annotation as a class.

import datetime as dt
import warnings
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

from dagster import (
    AssetExecutionContext,
    AssetKey,
    AssetSpec,
    BackfillPolicy,
    BetaWarning,
    MaterializeResult,
    asset,
    multi_asset,
)

from medllm_pipelines.defs import keys
from medllm_pipelines.defs.audit_tables import record_file_outcomes, record_quarantine
from medllm_pipelines.defs.ingest.partitions import ARRIVALS_TIMEZONE, INSTITUTION_PARTITIONS
from medllm_pipelines.defs.ingest.results import partition_results
from medllm_pipelines.defs.keys import asset_name, raw_table_name
from medllm_pipelines.defs.metadata import run_id_of, versions_metadata
from medllm_pipelines.lib.ingest.arrivals import first_arrival_day
from medllm_pipelines.lib.ingest.clinical import CLINICAL_FEED_KINDS, parse_clinical_partition
from medllm_pipelines.lib.ingest.dicom_partition import index_dicom_partition
from medllm_pipelines.lib.ingest.intake import (
    consume,
    ledger_of_partition,
    ledger_quarantine,
    read_ledger,
    stored_objects,
    take_in_partitions,
)
from medllm_pipelines.lib.ingest.jsonl import parse_jsonl_partition
from medllm_pipelines.lib.ingest.landing import ANNOTATIONS, CONSULTATIONS, DIALOGUES, DICOM
from medllm_pipelines.lib.ingest.tables import FHIR_TABLES
from medllm_pipelines.resources.landing import LandingZone
from medllm_pipelines.resources.raw_zone import RawZoneResource
from medllm_pipelines.resources.vault import VaultResource
from medllm_pipelines.resources.warehouse import WarehouseResource

warnings.filterwarnings("ignore", message=".*backfill_policy.*is currently in beta", category=BetaWarning)

RAW_STORAGE = "raw zone (envelope-encrypted Parquet, one file per institution)"
FHIR_RESOURCES = keys.key(keys.INGEST, "fhir_resources")  # the multi-asset's name in lineage and audit rows
FHIR_KEY_OF_TABLE: dict[str, AssetKey] = {
    "patients": keys.RAW_PATIENTS, "encounters": keys.RAW_ENCOUNTERS, "conditions": keys.RAW_CONDITIONS,
    "observations": keys.RAW_OBSERVATIONS, "medication_requests": keys.RAW_MEDICATION_REQUESTS,
    "notes": keys.RAW_NOTES, "consents": keys.RAW_CONSENTS, "diagnostic_reports": keys.RAW_DIAGNOSTIC_REPORTS,
    "procedures": keys.RAW_PROCEDURES, "allergy_intolerances": keys.RAW_ALLERGY_INTOLERANCES,
    "immunizations": keys.RAW_IMMUNIZATIONS,
}


def _shared_metadata(context: AssetExecutionContext, **extra: Any) -> dict[str, Any]:
    """What every partition of the run carries: the run's partitions, versions (and ``extra``)."""
    return {"partitions_in_run": list(context.partition_keys), **extra, **versions_metadata()}


def _progress(context: AssetExecutionContext, what: str) -> Callable[[str, int], None]:
    """A progress callback logging every 200 files of a partition."""

    def report(partition: str, done: int) -> None:
        if done % 200 == 0:
            context.log.info(f"{partition}: {what} {done} files")

    return report


@asset(
    key=keys.LANDED_FILES,
    group_name=keys.INGEST,
    kinds={"python", "vault"},
    partitions_def=INSTITUTION_PARTITIONS,
    backfill_policy=BackfillPolicy.single_run(),
    description=(
        "Files taken from the institution's landing folder into the encrypted raw zone (AES-256-GCM, data keys "
        "wrapped by Vault transit), deduplicated by content hash; ledger in audit.file_ledger. Partition "
        "'unrouted' takes in (and quarantines) files outside any registered source folder."
    ),
)
def landed_files(
    context: AssetExecutionContext, landing_zone: LandingZone, raw_zone: RawZoneResource, vault: VaultResource,
    warehouse: WarehouseResource,
) -> Iterator[MaterializeResult]:
    registry, wh = landing_zone.registry(), warehouse.get()
    files = {p: landing_zone.scan_partition(p, registry.codes) for p in context.partition_keys}
    known = set(read_ledger(wh)["content_sha256"])
    context.log.info(f"{','.join(files)}: {sum(map(len, files.values()))} files landed, {len(known)} in the ledger")
    intake = take_in_partitions(
        files, raw_zone.get(), known, lambda text: vault.encrypt(text.encode("utf-8")), run_id=run_id_of(context),
        now=dt.datetime.now(dt.UTC), registered=registry.codes, progress=_progress(context, "encrypted"),
    )
    # Ledger first (one atomic append), then consume: a crash in between leaves
    # a duplicate delivery for the rerun to skip, never a lost file.
    if len(new_rows := intake.ledger_frame()):
        wh.write_table(keys.AUDIT_SCHEMA, keys.FILE_LEDGER_TABLE, new_rows, mode="append")
    ledger = read_ledger(wh)
    landing_zone.record_first_arrival(first_arrival_day(ledger, ARRIVALS_TIMEZONE))
    by_partition = {}
    for partition, outcome in intake.by_partition.items():
        in_partition = ledger_of_partition(ledger, partition, registry.codes)
        held = record_quarantine(wh, keys.LANDED_FILES, ledger_quarantine(in_partition, asset_name(keys.LANDED_FILES)),
                                 partition)
        by_partition[partition] = {**outcome.as_metadata(), "ledger_files": len(in_partition),
                                   "ledger_quarantined": held["quarantined"]}
    for partition, outcome in intake.by_partition.items():
        consumed = consume(outcome.to_consume, landing_zone.root) if landing_zone.consume else 0
        by_partition[partition]["files_consumed_from_landing"] = consumed
    yield from partition_results(context, {keys.LANDED_FILES: by_partition}, _shared_metadata(
        context, encryption="AES-256-GCM envelope, data keys wrapped by Vault transit", key_ref=vault.key_ref,
        source_registry_version=registry.version,
    ))


FHIR_SPECS = [
    AssetSpec(
        FHIR_KEY_OF_TABLE[table],
        deps=[keys.LANDED_FILES],
        group_name=keys.INGEST,
        kinds={"python", "fhir"},
        partitions_def=INSTITUTION_PARTITIONS,
        description=(
            f"{rtype} records from FHIR R4 (validated with fhir.resources.R4B; R4-only elements handled as "
            "lib/ingest/fhir_r4.py documents) and HL7 v2 feeds, one encrypted raw-zone partition per institution."
            + (" Also holds erasure requests (DELETE Patient) as consent rows with provision_type "
               "erasure_request." if table == "consents" else "")
        ),
    )
    for table, rtype in FHIR_TABLES.items()
]


@multi_asset(
    specs=FHIR_SPECS,
    name="fhir_resources",
    partitions_def=INSTITUTION_PARTITIONS,
    backfill_policy=BackfillPolicy.single_run(),
)
def fhir_resources(
    context: AssetExecutionContext, raw_zone: RawZoneResource, warehouse: WarehouseResource
) -> Iterator[MaterializeResult]:
    """Parse every stored FHIR Bundle/NDJSON and HL7 v2 object of each institution in the run (a full
    refresh of the partition from the raw zone, so a killed run rerun leaves no duplicate and no gap)."""
    zone, wh = raw_zone.get(), warehouse.get()
    by_partition: dict[AssetKey, dict[str, dict]] = {key: {} for key in FHIR_KEY_OF_TABLE.values()}
    for partition in context.partition_keys:
        writers = {table: zone.partition_writer(raw_table_name(key), partition) for table, key in FHIR_KEY_OF_TABLE.items()}
        parsed = parse_clinical_partition(
            zone, stored_objects(wh, CLINICAL_FEED_KINDS, institution=partition), writers, partition=partition,
            asset=asset_name(FHIR_RESOURCES), progress=partial(_progress(context, "parsed"), partition),
        )
        record_quarantine(wh, FHIR_RESOURCES, parsed.parsed.quarantine, partition)
        record_file_outcomes(wh, parsed.outcomes, partition)
        recon = parsed.reconciliation()
        context.log.info(f"{partition}: {recon.records_in} entries read, {recon.records_out} out, {recon.quarantined} quarantined")
        for table, key in FHIR_KEY_OF_TABLE.items():
            by_partition[key][partition] = parsed.table_metadata(table)
    yield from partition_results(context, by_partition, _shared_metadata(context, storage=RAW_STORAGE))


@multi_asset(
    specs=[
        AssetSpec(
            keys.RAW_DICOM_INSTANCES, deps=[keys.LANDED_FILES], group_name=keys.INGEST, kinds={"python", "dicom"},
            partitions_def=INSTITUTION_PARTITIONS,
            description="DICOM Part-10 header index (one row per instance, with whether its pixels can be decoded "
            "here); pixels stay in the encrypted raw object. DICOMDIRs are read as directories, not images.",
        ),
        AssetSpec(
            keys.RAW_DICOM_FRAMES, deps=[keys.LANDED_FILES], group_name=keys.INGEST, kinds={"python", "dicom"},
            partitions_def=INSTITUTION_PARTITIONS,
            description="One row per frame of every indexed instance: position, orientation, spacing, stack and "
            "temporal indices from the (per-frame / shared) functional groups of enhanced multi-frame objects.",
        ),
    ],
    name="dicom_index",
    partitions_def=INSTITUTION_PARTITIONS,
    backfill_policy=BackfillPolicy.single_run(),
)
def dicom_index(context: AssetExecutionContext, raw_zone: RawZoneResource, warehouse: WarehouseResource) -> Iterator[MaterializeResult]:
    """Index every stored DICOM object of each institution in the run (a full refresh of its partitions);
    one bad file is one quarantine record, never a failed step."""
    zone, wh = raw_zone.get(), warehouse.get()
    by_partition: dict[AssetKey, dict[str, dict]] = {keys.RAW_DICOM_INSTANCES: {}, keys.RAW_DICOM_FRAMES: {}}
    for partition in context.partition_keys:
        index = index_dicom_partition(zone, stored_objects(wh, (DICOM,), institution=partition), partition=partition,
                                      asset=asset_name(keys.RAW_DICOM_INSTANCES))
        zone.write_partition(raw_table_name(keys.RAW_DICOM_INSTANCES), partition, index.instances_frame())
        zone.write_partition(raw_table_name(keys.RAW_DICOM_FRAMES), partition, index.frames_frame())
        record_quarantine(wh, keys.RAW_DICOM_INSTANCES, index.quarantine, partition)
        record_file_outcomes(wh, index.outcomes, partition)
        by_partition[keys.RAW_DICOM_INSTANCES][partition] = index.instances_metadata()
        by_partition[keys.RAW_DICOM_FRAMES][partition] = index.frames_metadata()
    yield from partition_results(context, by_partition, _shared_metadata(context, storage=RAW_STORAGE))


def _jsonl_feed(context: AssetExecutionContext, raw_zone: RawZoneResource, warehouse: WarehouseResource,
                asset_key: AssetKey, kind: str) -> Iterator[MaterializeResult]:
    """Shared body of the JSONL ingest assets: parse each institution's objects, quarantine, write."""
    zone, wh = raw_zone.get(), warehouse.get()
    by_partition = {}
    for partition in context.partition_keys:
        parsed = parse_jsonl_partition(zone, stored_objects(wh, (kind,), institution=partition), kind=kind,
                                       partition=partition, asset=asset_name(asset_key))
        zone.write_partition(raw_table_name(asset_key), partition, parsed.frame)
        record_quarantine(wh, asset_key, parsed.quarantine, partition)
        record_file_outcomes(wh, parsed.outcomes, partition)
        by_partition[partition] = parsed.as_metadata()
    yield from partition_results(context, {asset_key: by_partition}, _shared_metadata(context, storage=RAW_STORAGE))


@asset(
    key=keys.RAW_DIALOGUES,
    deps=[keys.LANDED_FILES],
    group_name=keys.INGEST,
    kinds={"python"},
    partitions_def=INSTITUTION_PARTITIONS,
    backfill_policy=BackfillPolicy.single_run(),
    description="Pre-consultation dialogues (symptoms -> department), encrypted raw zone.",
)
def dialogues(context: AssetExecutionContext, raw_zone: RawZoneResource, warehouse: WarehouseResource) -> Iterator[MaterializeResult]:
    yield from _jsonl_feed(context, raw_zone, warehouse, keys.RAW_DIALOGUES, DIALOGUES)


@asset(
    key=keys.RAW_CONSULTATIONS,
    deps=[keys.LANDED_FILES],
    group_name=keys.INGEST,
    kinds={"python"},
    partitions_def=INSTITUTION_PARTITIONS,
    backfill_policy=BackfillPolicy.single_run(),
    description="Recorded consultations and ward rounds (transcript turns + the doctor's signed record), encrypted "
    "raw zone.",
)
def consultations(context: AssetExecutionContext, raw_zone: RawZoneResource, warehouse: WarehouseResource) -> Iterator[MaterializeResult]:
    yield from _jsonl_feed(context, raw_zone, warehouse, keys.RAW_CONSULTATIONS, CONSULTATIONS)


@asset(
    key=keys.RAW_ANNOTATIONS,
    deps=[keys.LANDED_FILES],
    group_name=keys.INGEST,
    kinds={"python"},
    partitions_def=INSTITUTION_PARTITIONS,
    backfill_policy=BackfillPolicy.single_run(),
    description="Annotators' labels (three annotators per item), encrypted raw zone.",
)
def annotations(context: AssetExecutionContext, raw_zone: RawZoneResource, warehouse: WarehouseResource) -> Iterator[MaterializeResult]:
    yield from _jsonl_feed(context, raw_zone, warehouse, keys.RAW_ANNOTATIONS, ANNOTATIONS)


ASSETS = [landed_files, fhir_resources, dicom_index, dialogues, consultations, annotations]
