"""Ingest stage: landing zone -> encrypted raw zone -> parsed (still encrypted) tables.

Every ingest asset is partitioned by source institution (a dynamic partition
per registered source, plus ``unrouted`` for files outside any registered
source folder), so one institution's feed is taken in, parsed, re-run or
backfilled without touching the others.
"""


import datetime as dt
import warnings
from collections.abc import Callable, Iterator

import pandas as pd
from dagster import (
    AssetExecutionContext,
    BetaWarning,
    AssetKey,
    AssetSpec,
    BackfillPolicy,
    MaterializeResult,
    MetadataValue,
    asset,
    multi_asset,
)

from medllm_pipelines.defs import keys
from medllm_pipelines.defs.audit_tables import record_file_outcomes, record_quarantine
from medllm_pipelines.defs.keys import asset_name, raw_table_name
from medllm_pipelines.defs.metadata import counts_by, run_id_of, versions_metadata
from medllm_pipelines.defs.ingest.sources import INSTITUTION_PARTITIONS, UNROUTED
from medllm_pipelines.lib.common import codes
from medllm_pipelines.lib.common.records import FileOutcomes, QuarantineRecord, Reconciliation, count_reasons
from medllm_pipelines.lib.ingest.dicom import (
    DICOM_FRAME_COLUMNS,
    DICOM_INDEX_COLUMNS,
    DicomPartition,
    index_dicom,
    summarise_dicom_index,
)
from medllm_pipelines.lib.ingest.fhir import (
    FHIR_TABLES,
    ParsedFhir,
    check_bulk_manifests,
    iter_ndjson_batches,
    parse_fhir_object,
    rows_to_frame,
)
from medllm_pipelines.lib.ingest.intake import (
    LEDGER_COLUMNS,
    STORED,
    consume,
    ledger_quarantine,
    read_ledger,
    stored_objects,
    take_in,
)
from medllm_pipelines.lib.ingest.jsonl import parse_jsonl_object
from medllm_pipelines.lib.ingest.landing import ANNOTATIONS, DIALOGUES, DICOM, FHIR_BUNDLE, FHIR_NDJSON, HL7V2
from medllm_pipelines.resources.landing import LandingZone
from medllm_pipelines.resources.raw_zone import RawZoneResource
from medllm_pipelines.resources.vault import VaultResource
from medllm_pipelines.resources.warehouse import WarehouseResource

warnings.filterwarnings("ignore", message=".*backfill_policy.*is currently in beta", category=BetaWarning)

RAW_STORAGE = "raw zone (envelope-encrypted Parquet, one file per institution)"


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
    context: AssetExecutionContext,
    landing_zone: LandingZone,
    raw_zone: RawZoneResource,
    vault: VaultResource,
    warehouse: WarehouseResource,
) -> MaterializeResult:
    partitions = context.partition_keys
    registry = landing_zone.registry()
    wh = warehouse.get()
    known = set(read_ledger(warehouse.get())["content_sha256"])
    files = [f for partition in partitions for f in landing_zone.scan_partition(partition, registry.codes)]
    context.log.info(f"{','.join(partitions)}: {len(files)} files in the landing zone, {len(known)} already in the ledger")

    def progress(done: int) -> None:
        if done % 200 == 0:
            context.log.info(f"encrypted {done}/{len(files)} files into the raw zone")

    outcome = take_in(
        files,
        raw_zone.get(),
        known,
        lambda text: vault.encrypt(text.encode("utf-8")),
        run_id=run_id_of(context),
        now=dt.datetime.now(dt.UTC),
        registered=registry.codes,
        progress=progress,
    )
    recon = outcome.reconciliation()
    # Ledger first (one atomic append), then consume: a crash in between leaves
    # a duplicate delivery for the rerun to skip, never a lost file.
    if outcome.ledger_rows:
        wh.write_table(keys.AUDIT_SCHEMA, keys.FILE_LEDGER_TABLE, outcome.ledger_frame(), mode="append")
    ledger = read_ledger(warehouse.get())
    quarantined_by_partition = {}
    for partition in partitions:
        in_partition = ledger[
            ledger["institution"].eq(partition) if partition != UNROUTED else ~ledger["institution"].isin(registry.codes)
        ]
        quarantined_by_partition[partition] = record_quarantine(
            wh, keys.LANDED_FILES, ledger_quarantine(in_partition, asset_name(keys.LANDED_FILES)), partition
        )["quarantined"]
    consumed = consume(outcome.to_consume, landing_zone.root) if landing_zone.consume else 0
    new = outcome.ledger_frame()
    return MaterializeResult(
        metadata={
            "partitions_in_run": MetadataValue.json(list(partitions)),
            "files_in": recon.records_in,
            "files_stored": outcome.stored,
            "files_quarantined": outcome.quarantined,
            "duplicate_deliveries": outcome.duplicates,
            "reconciled": recon.balanced,
            "bytes_encrypted": outcome.bytes_stored,
            "files_consumed_from_landing": consumed,
            "ledger_files_total": len(ledger),
            "ledger_quarantined_by_partition": MetadataValue.json(quarantined_by_partition),
            "new_files_by_institution": counts_by(new, "institution"),
            "new_files_by_kind": counts_by(new, "file_kind"),
            "encryption": "AES-256-GCM envelope, data keys wrapped by Vault transit",
            "key_ref": vault.key_ref,
            "source_registry_version": registry.version,
            **versions_metadata(),
        }
    )


def _fhir_specs() -> list[AssetSpec]:
    table_keys = {
        "patients": keys.RAW_PATIENTS,
        "encounters": keys.RAW_ENCOUNTERS,
        "conditions": keys.RAW_CONDITIONS,
        "observations": keys.RAW_OBSERVATIONS,
        "medication_requests": keys.RAW_MEDICATION_REQUESTS,
        "notes": keys.RAW_NOTES,
        "consents": keys.RAW_CONSENTS,
        "diagnostic_reports": keys.RAW_DIAGNOSTIC_REPORTS,
        "procedures": keys.RAW_PROCEDURES,
        "allergy_intolerances": keys.RAW_ALLERGY_INTOLERANCES,
        "immunizations": keys.RAW_IMMUNIZATIONS,
    }
    return [
        AssetSpec(
            table_keys[table],
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


FHIR_SPECS = _fhir_specs()
FHIR_KEY_OF_TABLE = {spec.key.path[-1]: spec.key for spec in FHIR_SPECS}
CLINICAL_FEED_KINDS = (FHIR_BUNDLE, FHIR_NDJSON, HL7V2)


# Rows per raw-zone part file: bounds memory whatever the feed's size.
PART_ROWS = 50_000


def _clinical_parser(kind: str) -> Callable[..., ParsedFhir]:
    if kind == HL7V2:
        from medllm_pipelines.lib.ingest.hl7 import parse_hl7_object

        return parse_hl7_object
    return lambda content, **kw: parse_fhir_object(content, kind=kind, **kw)


def _parse_clinical_object(zone, row) -> Iterator[ParsedFhir]:
    """Parsed batches of one stored clinical file; Bulk NDJSON is streamed (decrypted and parsed
    chunk by chunk), Bundles and HL7 batches are parsed whole (one file is one message set)."""
    lineage = {"institution": row.institution, "source_object": row.content_sha256, "asset": "ingest/fhir_resources"}
    if row.file_kind == FHIR_NDJSON:
        with zone.stream_object(row.content_sha256) as chunks:
            yield from iter_ndjson_batches(chunks, **lineage)
        return
    yield _clinical_parser(row.file_kind)(zone.get_object(row.content_sha256), **lineage)


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
    zone = raw_zone.get()
    total = ParsedFhir()
    files_total = files_with_quarantine = records_out_total = 0
    rows_by_table: dict[str, dict[str, int]] = {table: {} for table in FHIR_TABLES}
    manifest_checks: dict[str, dict] = {}
    hl7_warnings: dict[str, int] = {}  # lenient HL7 v2 reading: what strict validation would have rejected
    for partition in context.partition_keys:
        objects = stored_objects(warehouse.get(), CLINICAL_FEED_KINDS, institution=partition)
        writers = {table: zone.partition_writer(raw_table_name(FHIR_KEY_OF_TABLE[table]), partition) for table in FHIR_TABLES}
        buffered: dict[str, list[dict]] = {table: [] for table in FHIR_TABLES}
        written = {table: 0 for table in FHIR_TABLES}

        def flush(table: str, force: bool = False) -> None:
            rows = buffered[table]
            if rows and (force or len(rows) >= PART_ROWS):
                writers[table].write(pd.DataFrame(rows))
                written[table] += len(rows)
                buffered[table] = []

        in_partition = ParsedFhir(rows={})  # counts only: rows go straight to the writers
        ndjson_types: dict[str, int] = {}
        outcomes = FileOutcomes(asset_name(keys.key(keys.INGEST, "fhir_resources")))
        for done, row in enumerate(objects.itertuples(index=False), start=1):
            for batch in _parse_clinical_object(zone, row):
                outcomes.add(
                    row.content_sha256, row.institution, records_in=batch.resources_seen,
                    records_out=batch.records_out, quarantine=batch.quarantine, removed_by_rule=batch.removals(),
                )
                for code, n in getattr(batch, "warnings_by_code", {}).items():
                    hl7_warnings[code] = hl7_warnings.get(code, 0) + n
                if row.file_kind == FHIR_NDJSON:
                    for rtype, n in batch.types_seen.items():
                        ndjson_types[rtype] = ndjson_types.get(rtype, 0) + n
                for table, rows in batch.rows.items():
                    buffered[table].extend(rows)
                    flush(table)
                batch.rows = {}
                in_partition.extend(batch)
            if done % 200 == 0:
                context.log.info(f"{partition}: parsed {done}/{len(objects)} clinical files")
        files_with_quarantine += len({q.source_object for q in in_partition.quarantine})
        for table in FHIR_TABLES:
            flush(table, force=True)
            if not written[table]:
                writers[table].write(rows_to_frame(table, []))  # an empty partition still has the table's columns
            writers[table].commit()
            rows_by_table[table][partition] = written[table]
        files_total += len(objects)
        if in_partition.manifests:
            manifest_checks[partition] = check_bulk_manifests(in_partition.manifests, ndjson_types).as_metadata()
        record_quarantine(warehouse.get(), keys.key(keys.INGEST, "fhir_resources"), in_partition.quarantine, partition)
        record_file_outcomes(warehouse.get(), outcomes, partition)
        Reconciliation(
            in_partition.resources_seen, sum(written.values()), len(in_partition.quarantine), in_partition.removals()
        ).check()
        records_out_total += sum(written.values())
        in_partition.manifests = []
        total.extend(in_partition)
    recon = Reconciliation(total.resources_seen, records_out_total, len(total.quarantine), total.removals()).check()
    context.log.info(f"{recon.records_in} entries read, {recon.records_out} out, {recon.quarantined} quarantined")
    by_reason = count_reasons(total.quarantine)
    feed_meta = {
        "partitions_in_run": MetadataValue.json(list(context.partition_keys)),
        "feed_files": files_total,
        "feed_files_with_quarantine": files_with_quarantine,
        "feed_entries_read": recon.records_in,
        "feed_resources_out": recon.records_out,
        "feed_quarantined": recon.quarantined,
        "feed_out_of_scope": total.out_of_scope,
        "feed_out_of_scope_by_type": MetadataValue.json(dict(sorted(total.out_of_scope_by_type.items()))),
        "feed_removed_by_rule": MetadataValue.json(dict(sorted(total.removals().items()))),
        "feed_events": MetadataValue.json(dict(sorted(total.events.items()))),
        "feed_erasure_requests": total.events.get(codes.ERASURE_REQUEST, 0),
        "feed_reconciled": recon.balanced,
        "feed_quarantined_by_reason": MetadataValue.json(dict(sorted(by_reason.items()))),
        "feed_bulk_manifest_checks": MetadataValue.json(manifest_checks),
        "feed_bulk_counts_match": all(c["bulk_counts_match"] for c in manifest_checks.values()),
        "feed_hl7_warnings_by_code": MetadataValue.json(dict(sorted(hl7_warnings.items()))),
    }
    for table in FHIR_TABLES:
        yield MaterializeResult(
            asset_key=FHIR_KEY_OF_TABLE[table],
            metadata={
                "rows_by_institution": MetadataValue.json(rows_by_table[table]),
                "dagster/row_count": sum(rows_by_table[table].values()),
                "storage": RAW_STORAGE,
                "quarantined_of_this_type": sum(1 for q in total.quarantine if q.resource_type == FHIR_TABLES[table]),
                **feed_meta,
                **versions_metadata(),
            },
        )


def _parse_objects_to_partition(
    context: AssetExecutionContext,
    raw_zone: RawZoneResource,
    warehouse: WarehouseResource,
    asset_key: AssetKey,
    kind: str,
    columns: list[str],
) -> MaterializeResult:
    """Shared body of the JSONL ingest assets: parse each institution's objects, quarantine, write."""
    zone = raw_zone.get()
    name = asset_name(asset_key)
    seen_total = out_total = quarantined_total = files_total = 0
    rows_by_institution: dict[str, int] = {}
    by_reason: dict[str, int] = {}
    for partition in context.partition_keys:
        objects = stored_objects(warehouse.get(), (kind,), institution=partition)
        rows: list[dict] = []
        quarantine: list[QuarantineRecord] = []
        outcomes = FileOutcomes(name)
        seen = 0
        for row in objects.itertuples(index=False):
            parsed = parse_jsonl_object(
                zone.get_object(row.content_sha256), kind=kind, institution=row.institution,
                source_object=row.content_sha256, asset=name,
            )
            seen += parsed.lines_seen
            rows.extend(parsed.rows)
            quarantine.extend(parsed.quarantine)
            outcomes.add(row.content_sha256, row.institution, records_in=parsed.lines_seen,
                         records_out=len(parsed.rows), quarantine=parsed.quarantine)
        frame = pd.DataFrame(rows) if rows else pd.DataFrame(columns=columns)
        zone.write_partition(raw_table_name(asset_key), partition, frame)
        record_quarantine(warehouse.get(), asset_key, quarantine, partition)
        record_file_outcomes(warehouse.get(), outcomes, partition)
        Reconciliation(seen, len(frame), len(quarantine)).check()
        seen_total, out_total, quarantined_total = seen_total + seen, out_total + len(frame), quarantined_total + len(quarantine)
        files_total += len(objects)
        rows_by_institution[partition] = len(frame)
        count_reasons(quarantine, by_reason)
    recon = Reconciliation(seen_total, out_total, quarantined_total).check()
    context.log.info(f"{name}: {recon.records_in} in, {recon.records_out} out, {recon.quarantined} quarantined")
    return MaterializeResult(
        metadata={
            "partitions_in_run": MetadataValue.json(list(context.partition_keys)),
            "dagster/row_count": out_total,
            **recon.as_metadata(),
            "quarantined": quarantined_total,
            "quarantined_by_reason": MetadataValue.json(dict(sorted(by_reason.items()))),
            "rows_by_institution": MetadataValue.json(rows_by_institution),
            "source_files": files_total,
            "storage": RAW_STORAGE,
            **versions_metadata(),
        }
    )


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
    zone = raw_zone.get()
    name = asset_name(keys.RAW_DICOM_INSTANCES)
    lineage = ["institution", "source_object"]
    totals = {"in": 0, "out": 0, "quarantined": 0, "frames": 0, "files": 0, "dicomdirs": 0}
    per_partition: dict[str, dict] = {}
    by_reason: dict[str, int] = {}
    undecodable: dict[str, int] = {}
    for partition in context.partition_keys:
        index = DicomPartition(name)
        for row in stored_objects(warehouse.get(), (DICOM,), institution=partition).itertuples(index=False):
            index.add(row.content_sha256, row.institution,
                      index_dicom(zone.get_object(row.content_sha256), institution=row.institution,
                                  source_object=row.content_sha256, asset=name))
        instances = pd.DataFrame(index.instances, columns=[*DICOM_INDEX_COLUMNS, *lineage])
        frames = pd.DataFrame(index.frames, columns=[*DICOM_FRAME_COLUMNS, *lineage])
        zone.write_partition(raw_table_name(keys.RAW_DICOM_INSTANCES), partition, instances)
        zone.write_partition(raw_table_name(keys.RAW_DICOM_FRAMES), partition, frames)
        record_quarantine(warehouse.get(), keys.RAW_DICOM_INSTANCES, index.quarantine, partition)
        record_file_outcomes(warehouse.get(), index.outcomes, partition)
        Reconciliation(index.records_in, len(instances), len(index.quarantine),
                       {"dicomdir_index": len(index.directories)}).check()
        studies, series = summarise_dicom_index(instances)
        if index.records_in:  # institutions that sent no DICOM in this run are not listed
            per_partition[partition] = {
                "studies": len(studies), "series": len(series), "instances": len(instances), "frames": len(frames),
                "quarantined": len(index.quarantine),
                **({"dicomdir": index.directory_summary()} if index.directories else {}),
            }
        for key, value in (("in", index.records_in), ("out", len(instances)), ("quarantined", len(index.quarantine)),
                           ("frames", len(frames)), ("files", len(index.outcomes)), ("dicomdirs", len(index.directories))):
            totals[key] += value
        count_reasons(index.quarantine, by_reason)
        for reason, n in index.undecodable_by_reason().items():
            undecodable[reason] = undecodable.get(reason, 0) + n
    recon = Reconciliation(totals["in"], totals["out"], totals["quarantined"], {"dicomdir_index": totals["dicomdirs"]}).check()
    context.log.info(f"{name}: {recon.records_in} files in, {recon.records_out} instances, {recon.quarantined} quarantined")
    shared = {
        "partitions_in_run": MetadataValue.json(list(context.partition_keys)),
        "dicom_hierarchy_by_institution": MetadataValue.json(per_partition),
        "source_files": totals["files"],
        "storage": RAW_STORAGE,
        **versions_metadata(),
    }
    yield MaterializeResult(
        asset_key=keys.RAW_DICOM_INSTANCES,
        metadata={
            "dagster/row_count": totals["out"],
            **recon.as_metadata(),
            "quarantined": totals["quarantined"],
            "quarantined_by_reason": MetadataValue.json(dict(sorted(by_reason.items()))),
            "rows_by_institution": MetadataValue.json({p: c["instances"] for p, c in per_partition.items()}),
            "pixels_undecodable_by_reason": MetadataValue.json(undecodable),
            **shared,
        },
    )
    yield MaterializeResult(
        asset_key=keys.RAW_DICOM_FRAMES,
        metadata={
            "dagster/row_count": totals["frames"],
            "rows_by_institution": MetadataValue.json({p: c["frames"] for p, c in per_partition.items()}),
            **shared,
        },
    )


@asset(
    key=keys.RAW_DIALOGUES,
    deps=[keys.LANDED_FILES],
    group_name=keys.INGEST,
    kinds={"python"},
    partitions_def=INSTITUTION_PARTITIONS,
    backfill_policy=BackfillPolicy.single_run(),
    description="Pre-consultation dialogues (symptoms -> department), encrypted raw zone.",
)
def dialogues(context: AssetExecutionContext, raw_zone: RawZoneResource, warehouse: WarehouseResource) -> MaterializeResult:
    columns = ["dialogue_id", "patient_mrn", "language", "department", "turn_count", "turns_json", "institution", "source_object", "source_position"]
    return _parse_objects_to_partition(context, raw_zone, warehouse, keys.RAW_DIALOGUES, DIALOGUES, columns)


@asset(
    key=keys.RAW_ANNOTATIONS,
    deps=[keys.LANDED_FILES],
    group_name=keys.INGEST,
    kinds={"python"},
    partitions_def=INSTITUTION_PARTITIONS,
    backfill_policy=BackfillPolicy.single_run(),
    description="Annotators' labels (three annotators per item), encrypted raw zone.",
)
def annotations(context: AssetExecutionContext, raw_zone: RawZoneResource, warehouse: WarehouseResource) -> MaterializeResult:
    columns = ["item_id", "annotator_id", "label", "annotated_at", "tool", "guideline_version", "institution", "source_object", "source_position"]
    return _parse_objects_to_partition(context, raw_zone, warehouse, keys.RAW_ANNOTATIONS, ANNOTATIONS, columns)


ASSETS = [landed_files, fhir_resources, dicom_index, dialogues, annotations]
