"""Ingest stage: landing zone -> encrypted raw zone -> parsed (still encrypted) tables."""


import datetime as dt
from collections.abc import Iterator

import pandas as pd
from dagster import AssetExecutionContext, AssetKey, AssetSpec, MaterializeResult, asset, multi_asset

from medllm_pipelines.defs import keys
from medllm_pipelines.defs.common import (
    asset_name,
    counts_by,
    frame_metadata,
    raw_table_name,
    record_quarantine,
    run_id_of,
    versions_metadata,
)
from medllm_pipelines.lib.common.records import QuarantineRecord, Reconciliation
from medllm_pipelines.lib.ingest.dicom import DICOM_INDEX_COLUMNS, index_dicom_object
from medllm_pipelines.lib.ingest.fhir import FHIR_TABLES, LINEAGE_COLUMNS, ParsedFhir, parse_fhir_object
from medllm_pipelines.lib.ingest.intake import LEDGER_COLUMNS, STORED, consume, ledger_quarantine, take_in
from medllm_pipelines.lib.ingest.jsonl import parse_jsonl_object
from medllm_pipelines.lib.ingest.landing import ANNOTATIONS, DIALOGUES, DICOM, FHIR_BUNDLE, FHIR_NDJSON
from medllm_pipelines.resources.landing import LandingZone
from medllm_pipelines.resources.raw_zone import RawZoneResource
from medllm_pipelines.resources.vault import VaultResource
from medllm_pipelines.resources.warehouse import WarehouseResource


def stored_objects(warehouse: WarehouseResource, kinds: tuple[str, ...]) -> pd.DataFrame:
    """Ledger rows of stored (not quarantined) raw objects of the given kinds."""
    wh = warehouse.get()
    if not wh.table_exists(keys.AUDIT_SCHEMA, keys.FILE_LEDGER_TABLE):
        return pd.DataFrame(columns=LEDGER_COLUMNS)
    ledger = wh.read_table(keys.AUDIT_SCHEMA, keys.FILE_LEDGER_TABLE)
    selected = ledger[(ledger["status"] == STORED) & ledger["file_kind"].isin(kinds)]
    return selected.sort_values("content_sha256").reset_index(drop=True)


@asset(
    key=keys.LANDED_FILES,
    group_name=keys.INGEST,
    kinds={"python", "vault"},
    description=(
        "Files taken from the landing zone into the encrypted raw zone (AES-256-GCM, data keys wrapped "
        "by Vault transit), deduplicated by content hash; ledger in audit.file_ledger."
    ),
)
def landed_files(
    context: AssetExecutionContext,
    landing_zone: LandingZone,
    raw_zone: RawZoneResource,
    vault: VaultResource,
    warehouse: WarehouseResource,
) -> MaterializeResult:
    wh = warehouse.get()
    known: set[str] = set()
    if wh.table_exists(keys.AUDIT_SCHEMA, keys.FILE_LEDGER_TABLE):
        known = set(wh.query(f"SELECT content_sha256 FROM {keys.AUDIT_SCHEMA}.{keys.FILE_LEDGER_TABLE}")["content_sha256"])
    files = landing_zone.scan()
    context.log.info(f"{len(files)} files in the landing zone, {len(known)} already in the ledger")

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
        progress=progress,
    )
    recon = outcome.reconciliation()
    # Ledger first, then consume: a crash in between leaves a duplicate delivery, never a lost file.
    if outcome.ledger_rows:
        wh.write_table(keys.AUDIT_SCHEMA, keys.FILE_LEDGER_TABLE, outcome.ledger_frame(), mode="append")
    ledger = wh.read_table(keys.AUDIT_SCHEMA, keys.FILE_LEDGER_TABLE) if wh.table_exists(
        keys.AUDIT_SCHEMA, keys.FILE_LEDGER_TABLE
    ) else outcome.ledger_frame()
    quarantine_meta = record_quarantine(wh, keys.LANDED_FILES, ledger_quarantine(ledger, asset_name(keys.LANDED_FILES)))
    consumed = consume(outcome.to_consume, landing_zone.root) if landing_zone.consume else 0
    new = outcome.ledger_frame()
    return MaterializeResult(
        metadata={
            "files_in": recon.records_in,
            "files_stored": outcome.stored,
            "files_quarantined": outcome.quarantined,
            "duplicate_deliveries": outcome.duplicates,
            "reconciled": recon.balanced,
            "bytes_encrypted": outcome.bytes_stored,
            "files_consumed_from_landing": consumed,
            "ledger_files_total": len(ledger),
            "new_files_by_institution": counts_by(new, "institution"),
            "new_files_by_kind": counts_by(new, "file_kind"),
            "encryption": "AES-256-GCM envelope, data keys wrapped by Vault transit",
            "key_ref": vault.key_ref,
            **{f"ledger_{k}": v for k, v in quarantine_meta.items() if k != "quarantined"},
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
    }
    return [
        AssetSpec(
            table_keys[table],
            deps=[keys.LANDED_FILES],
            group_name=keys.INGEST,
            kinds={"python", "fhir"},
            description=f"FHIR R4 {rtype} resources validated with fhir.resources.R4B (encrypted raw zone).",
        )
        for table, rtype in FHIR_TABLES.items()
    ]


FHIR_SPECS = _fhir_specs()
FHIR_KEY_OF_TABLE = {spec.key.path[-1]: spec.key for spec in FHIR_SPECS}


@multi_asset(specs=FHIR_SPECS, name="fhir_resources")
def fhir_resources(
    context: AssetExecutionContext, raw_zone: RawZoneResource, warehouse: WarehouseResource
) -> Iterator[MaterializeResult]:
    """Parse every stored FHIR Bundle/NDJSON object (full refresh: idempotent by construction)."""
    objects = stored_objects(warehouse, (FHIR_BUNDLE, FHIR_NDJSON))
    zone = raw_zone.get()
    parsed = ParsedFhir()
    files_with_quarantine = 0
    for done, row in enumerate(objects.itertuples(index=False), start=1):
        result = parse_fhir_object(
            zone.get_object(row.content_sha256),
            kind=row.file_kind,
            institution=row.institution,
            source_object=row.content_sha256,
            asset="ingest/fhir_resources",
        )
        files_with_quarantine += int(bool(result.quarantine))
        parsed.extend(result)
        if done % 200 == 0:
            context.log.info(f"parsed {done}/{len(objects)} FHIR files")
    wh = warehouse.get()
    quarantine_meta = record_quarantine(wh, keys.key(keys.INGEST, "fhir_resources"), parsed.quarantine)
    recon = Reconciliation(
        parsed.resources_seen, parsed.records_out, len(parsed.quarantine), {"out_of_scope_resource_type": parsed.out_of_scope}
    ).check()
    feed_meta = {
        "feed_files": len(objects),
        "feed_files_with_quarantine": files_with_quarantine,
        "feed_entries_read": recon.records_in,
        "feed_resources_out": recon.records_out,
        "feed_quarantined": recon.quarantined,
        "feed_out_of_scope": parsed.out_of_scope,
        "feed_reconciled": recon.balanced,
        "feed_quarantined_by_reason": quarantine_meta["quarantined_by_reason"],
    }
    for table, rows in parsed.rows.items():
        frame = pd.DataFrame(rows)
        if frame.empty:
            frame = pd.DataFrame(columns=LINEAGE_COLUMNS)
        raw_zone.get().write_table(raw_table_name(FHIR_KEY_OF_TABLE[table]), frame)
        yield MaterializeResult(
            asset_key=FHIR_KEY_OF_TABLE[table],
            metadata={
                **frame_metadata(frame, with_schema=False),
                "rows_by_institution": counts_by(frame, "institution"),
                "storage": "raw zone (envelope-encrypted Parquet)",
                "quarantined_of_this_type": sum(1 for q in parsed.quarantine if q.resource_type == FHIR_TABLES[table]),
                **feed_meta,
                **versions_metadata(),
            },
        )


def _parse_objects_to_table(
    context: AssetExecutionContext,
    raw_zone: RawZoneResource,
    warehouse: WarehouseResource,
    asset_key: AssetKey,
    kind: str,
    columns: list[str],
) -> MaterializeResult:
    """Shared body of the non-FHIR ingest assets: parse each object, quarantine, write."""
    objects = stored_objects(warehouse, (kind,))
    zone = raw_zone.get()
    rows: list[dict] = []
    quarantine: list[QuarantineRecord] = []
    seen = 0
    name = asset_name(asset_key)
    for row in objects.itertuples(index=False):
        content = zone.get_object(row.content_sha256)
        if kind == DICOM:
            indexed, rejected = index_dicom_object(
                content, institution=row.institution, source_object=row.content_sha256, asset=name
            )
            seen += 1
            if rejected:
                quarantine.append(rejected)
            else:
                assert indexed is not None
                rows.append({**indexed, "institution": row.institution, "source_object": row.content_sha256})
        else:
            parsed = parse_jsonl_object(content, kind=kind, institution=row.institution, source_object=row.content_sha256, asset=name)
            seen += parsed.lines_seen
            rows.extend(parsed.rows)
            quarantine.extend(parsed.quarantine)
    frame = pd.DataFrame(rows) if rows else pd.DataFrame(columns=columns)
    zone.write_table(raw_table_name(asset_key), frame)
    quarantine_meta = record_quarantine(warehouse.get(), asset_key, quarantine)
    recon = Reconciliation(seen, len(frame), len(quarantine)).check()
    context.log.info(f"{name}: {recon.records_in} in, {recon.records_out} out, {recon.quarantined} quarantined")
    return MaterializeResult(
        metadata={
            **frame_metadata(frame, with_schema=False),
            **recon.as_metadata(),
            **quarantine_meta,
            "source_files": len(objects),
            "rows_by_institution": counts_by(frame, "institution"),
            "storage": "raw zone (envelope-encrypted Parquet)",
            **versions_metadata(),
        }
    )


@asset(
    key=keys.RAW_DICOM_INSTANCES,
    deps=[keys.LANDED_FILES],
    group_name=keys.INGEST,
    kinds={"python", "dicom"},
    description="DICOM Part-10 header index (one row per instance); pixels stay in the encrypted raw object.",
)
def dicom_instances(context: AssetExecutionContext, raw_zone: RawZoneResource, warehouse: WarehouseResource) -> MaterializeResult:
    columns = [*DICOM_INDEX_COLUMNS, "institution", "source_object"]
    return _parse_objects_to_table(context, raw_zone, warehouse, keys.RAW_DICOM_INSTANCES, DICOM, columns)


@asset(
    key=keys.RAW_DIALOGUES,
    deps=[keys.LANDED_FILES],
    group_name=keys.INGEST,
    kinds={"python"},
    description="Pre-consultation dialogues (symptoms -> department), encrypted raw zone.",
)
def dialogues(context: AssetExecutionContext, raw_zone: RawZoneResource, warehouse: WarehouseResource) -> MaterializeResult:
    columns = ["dialogue_id", "patient_mrn", "language", "department", "turn_count", "turns_json", "institution", "source_object", "source_position"]
    return _parse_objects_to_table(context, raw_zone, warehouse, keys.RAW_DIALOGUES, DIALOGUES, columns)


@asset(
    key=keys.RAW_ANNOTATIONS,
    deps=[keys.LANDED_FILES],
    group_name=keys.INGEST,
    kinds={"python"},
    description="Annotators' labels (three annotators per item), encrypted raw zone.",
)
def annotations(context: AssetExecutionContext, raw_zone: RawZoneResource, warehouse: WarehouseResource) -> MaterializeResult:
    columns = ["item_id", "annotator_id", "label", "annotated_at", "tool", "guideline_version", "institution", "source_object", "source_position"]
    return _parse_objects_to_table(context, raw_zone, warehouse, keys.RAW_ANNOTATIONS, ANNOTATIONS, columns)


ASSETS = [landed_files, fhir_resources, dicom_instances, dialogues, annotations]
