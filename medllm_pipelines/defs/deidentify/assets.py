"""De-identification stage: the boundary between identifiable and de-identified data.

Upstream of here everything is in the encrypted raw zone; from here on tables
are in the warehouse and must hold no direct identifier. Each de-identified
table carries a blocking leak check against the raw zone's identifiers.
"""


import datetime as dt

import numpy as np
import pandas as pd
from dagster import (
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetCheckSeverity,
    AssetExecutionContext,
    AssetKey,
    MaterializeResult,
    MetadataValue,
    asset,
    asset_check,
)

from medllm_pipelines.defs import keys
from medllm_pipelines.defs.common import counts_by, frame_metadata, raw_table_name, versions_metadata, warehouse_location
from medllm_pipelines.lib.deidentify.consent import build_consent_registry
from medllm_pipelines.lib.deidentify.policy import PolicyOutcome, apply_policy, build_pseudonym_map, load_policy
from medllm_pipelines.lib.ingest.dicom import read_pixels
from medllm_pipelines.lib.security.leak_scan import identifier_needles, scan_frame
from medllm_pipelines.resources.artifacts import ArtifactStoreResource
from medllm_pipelines.resources.raw_zone import RawZoneResource
from medllm_pipelines.resources.vault import VaultResource
from medllm_pipelines.resources.warehouse import WarehouseResource


def _policy_metadata(outcome: PolicyOutcome, rows_in: int) -> dict:
    policy = load_policy()
    return {
        "records_in": rows_in,
        "records_out": len(outcome.frame),
        "removed[unlinked_person]": outcome.unlinked_rows,
        "reconciled": rows_in == len(outcome.frame) + outcome.unlinked_rows,
        "columns_removed": MetadataValue.json(outcome.removed_columns),
        "columns_dropped_undeclared": MetadataValue.json(outcome.undeclared_columns),
        "deidentification_policy_version": policy.version,
        "purpose": policy.purpose,
    }


def _person_lookups(pseudonym_map: pd.DataFrame) -> tuple[dict, dict]:
    by_key = {(i, k): p for i, k, p in pseudonym_map[["institution", "patient_key", "patient_pseudonym"]].itertuples(index=False)}
    by_mrn = {
        (i, m): p
        for i, m, p in pseudonym_map[["institution", "mrn", "patient_pseudonym"]].itertuples(index=False)
        if isinstance(m, str)
    }
    return by_key, by_mrn


def _write_deidentified(warehouse: WarehouseResource, asset_key: AssetKey, frame: pd.DataFrame) -> dict:
    schema, table = warehouse_location(asset_key)
    warehouse.get().write_table(schema, table, frame)
    return {
        **frame_metadata(frame),
        "warehouse_table": f"{schema}.{table}",
        "warehouse_backend": warehouse.backend,
    }


@asset(
    key=keys.PSEUDONYM_MAP,
    deps=[keys.CLEAN_PATIENTS],
    group_name=keys.DEIDENTIFY,
    kinds={"python", "vault"},
    description=(
        "Person pseudonyms: HMAC-SHA-256 (Vault transit key, never on disk) of the resident ID when valid, "
        "else institution+MRN. The mapping is identifiable and stays in the encrypted raw zone."
    ),
)
def pseudonym_map(context: AssetExecutionContext, raw_zone: RawZoneResource, vault: VaultResource) -> MaterializeResult:
    zone = raw_zone.get()
    patients = zone.read_table(raw_table_name(keys.CLEAN_PATIENTS))
    mapping = build_pseudonym_map(patients, vault.hmac_many, load_policy())
    zone.write_table(raw_table_name(keys.PSEUDONYM_MAP), mapping)
    persons = mapping["patient_pseudonym"].nunique()
    return MaterializeResult(
        metadata={
            "records_in": len(patients),
            "records_out": len(mapping),
            "reconciled": len(patients) == len(mapping),
            "persons": persons,
            "records_linked_across_institutions": int(len(mapping) - persons),
            "link_basis": counts_by(mapping, "link_kind"),
            "pseudonym_key": f"{vault.transit_mount}/{vault.pseudonym_key_name}",
            "storage": "raw zone (envelope-encrypted Parquet)",
            **versions_metadata(deidentification_policy=load_policy().version),
        }
    )


@asset(
    key=keys.DEID_PATIENTS,
    deps=[keys.CLEAN_PATIENTS, keys.PSEUDONYM_MAP, keys.CLEAN_OBSERVATIONS],
    group_name=keys.DEIDENTIFY,
    kinds={"python", "duckdb"},
)
def deidentified_patients(
    context: AssetExecutionContext, raw_zone: RawZoneResource, warehouse: WarehouseResource
) -> MaterializeResult:
    """Patients without direct identifiers: pseudonym, institution, sex, 5-year age band (90+ top-coded).

    Age is taken at the person's latest observation, so re-running later does
    not change the dataset.
    """
    zone = raw_zone.get()
    patients = zone.read_table(raw_table_name(keys.CLEAN_PATIENTS))
    observations = zone.read_table(raw_table_name(keys.CLEAN_OBSERVATIONS))
    by_key, by_mrn = _person_lookups(zone.read_table(raw_table_name(keys.PSEUDONYM_MAP)))
    latest = observations.groupby(["institution", "patient_key"])["effective_date"].max()
    reference = [
        dt.date.fromisoformat(latest.get((i, k))) if (i, k) in latest.index else dt.date.today()
        for i, k in zip(patients["institution"], patients["resource_key"], strict=True)
    ]
    frame = patients.rename(columns={"resource_key": "patient_key"})
    outcome = apply_policy(
        "patients",
        frame,
        load_policy(),
        person_by_key=by_key,
        person_by_mrn=by_mrn,
        age_reference=pd.Series(reference, index=frame.index),
    )
    meta = _write_deidentified(warehouse, keys.DEID_PATIENTS, outcome.frame)
    return MaterializeResult(
        metadata={
            **meta,
            **_policy_metadata(outcome, len(frame)),
            "persons": int(outcome.frame["patient_pseudonym"].nunique()),
            "rows_by_age_band": counts_by(outcome.frame, "age_band"),
            "rows_by_sex": counts_by(outcome.frame, "sex"),
            "rows_by_institution": counts_by(outcome.frame, "institution"),
            **versions_metadata(),
        }
    )


def _deidentify_table(
    context: AssetExecutionContext,
    raw_zone: RawZoneResource,
    warehouse: WarehouseResource,
    source: AssetKey,
    target: AssetKey,
    policy_table: str,
) -> MaterializeResult:
    zone = raw_zone.get()
    frame = zone.read_table(raw_table_name(source))
    by_key, by_mrn = _person_lookups(zone.read_table(raw_table_name(keys.PSEUDONYM_MAP)))
    outcome = apply_policy(policy_table, frame, load_policy(), person_by_key=by_key, person_by_mrn=by_mrn)
    meta = _write_deidentified(warehouse, target, outcome.frame)
    return MaterializeResult(
        metadata={
            **meta,
            **_policy_metadata(outcome, len(frame)),
            "rows_by_institution": counts_by(outcome.frame, "institution"),
            **versions_metadata(),
        }
    )


@asset(
    key=keys.DEID_OBSERVATIONS,
    deps=[keys.CLEAN_OBSERVATIONS, keys.PSEUDONYM_MAP],
    group_name=keys.DEIDENTIFY,
    kinds={"python", "duckdb"},
)
def deidentified_observations(
    context: AssetExecutionContext, raw_zone: RawZoneResource, warehouse: WarehouseResource
) -> MaterializeResult:
    """Harmonised observations keyed by pseudonym, dates generalised to the year."""
    return _deidentify_table(context, raw_zone, warehouse, keys.CLEAN_OBSERVATIONS, keys.DEID_OBSERVATIONS, "observations")


@asset(
    key=keys.DEID_CONDITIONS,
    deps=[keys.CLEAN_CONDITIONS, keys.PSEUDONYM_MAP],
    group_name=keys.DEIDENTIFY,
    kinds={"python", "duckdb"},
)
def deidentified_conditions(
    context: AssetExecutionContext, raw_zone: RawZoneResource, warehouse: WarehouseResource
) -> MaterializeResult:
    """Diagnoses (unified ICD-10) keyed by pseudonym, onset generalised to the year."""
    return _deidentify_table(context, raw_zone, warehouse, keys.CLEAN_CONDITIONS, keys.DEID_CONDITIONS, "conditions")


@asset(
    key=keys.CONSENT_REGISTRY,
    deps=[keys.CLEAN_CONSENTS, keys.PSEUDONYM_MAP],
    group_name=keys.DEIDENTIFY,
    kinds={"python", "duckdb"},
)
def consent_registry(
    context: AssetExecutionContext, raw_zone: RawZoneResource, warehouse: WarehouseResource
) -> MaterializeResult:
    """Each person's current research consent: granted, refused or withdrawn (latest decision wins)."""
    zone = raw_zone.get()
    registry = build_consent_registry(
        zone.read_table(raw_table_name(keys.CLEAN_CONSENTS)), zone.read_table(raw_table_name(keys.PSEUDONYM_MAP))
    )
    meta = _write_deidentified(warehouse, keys.CONSENT_REGISTRY, registry)
    return MaterializeResult(
        metadata={**meta, "persons_by_status": counts_by(registry, "consent_status"), **versions_metadata()}
    )


@asset(
    key=keys.DEID_IMAGES,
    deps=[keys.RAW_DICOM_INSTANCES, keys.PSEUDONYM_MAP],
    group_name=keys.DEIDENTIFY,
    kinds={"python", "dicom"},
)
def deidentified_images(
    context: AssetExecutionContext,
    raw_zone: RawZoneResource,
    vault: VaultResource,
    warehouse: WarehouseResource,
    artifacts: ArtifactStoreResource,
) -> MaterializeResult:
    """Pixel arrays re-saved without any header (so no tag can carry an identifier), keyed by image pseudonym.

    Images with BurnedInAnnotation=YES are not released (pixels may show text).
    """
    zone = raw_zone.get()
    index = zone.read_partitions(raw_table_name(keys.RAW_DICOM_INSTANCES))
    by_key, by_mrn = _person_lookups(zone.read_table(raw_table_name(keys.PSEUDONYM_MAP)))
    burned = index["burned_in_annotation"].fillna("").str.upper().eq("YES") if len(index) else pd.Series(dtype=bool)
    releasable = index[~burned] if len(index) else index
    outcome = apply_policy(
        "dicom_instances", releasable, load_policy(), person_by_key=by_key, person_by_mrn=by_mrn, hmac_many=vault.hmac_many
    )
    frame = outcome.frame
    images_dir = artifacts.folder("deidentified", "images")
    pixel_files: list[str] = []
    sources = releasable.loc[outcome.kept_index, "source_object"].tolist() if len(frame) else []
    for image_id, source in zip(frame["image_id"], sources, strict=True):
        target = images_dir / f"{image_id}.npy"
        np.save(target, np.asarray(read_pixels(zone.get_object(source))))
        pixel_files.append(target.name)
    frame = frame.assign(pixel_file=pixel_files)
    meta = _write_deidentified(warehouse, keys.DEID_IMAGES, frame)
    return MaterializeResult(
        metadata={
            **meta,
            **_policy_metadata(outcome, len(releasable)),
            "withheld_burned_in_annotation": int(burned.sum()) if len(index) else 0,
            "images_dir": str(images_dir),
            "rows_by_modality": counts_by(frame, "modality"),
            **versions_metadata(),
        }
    )


def identifier_leak_gate(asset_key: AssetKey):
    """Blocking check: no identifier of the raw zone's patients appears in this de-identified table."""

    @asset_check(
        asset=asset_key,
        name=keys.CHECK_NO_IDENTIFIERS,
        blocking=True,
        description="Scans every text column for the raw zone's names, ID numbers, MRNs, phones, emails, addresses.",
    )
    def _leak_gate(
        context: AssetCheckExecutionContext, raw_zone: RawZoneResource, warehouse: WarehouseResource
    ) -> AssetCheckResult:
        needles = identifier_needles(raw_zone.get().read_partitions(raw_table_name(keys.RAW_PATIENTS)))
        schema, table = warehouse_location(asset_key)
        hits = scan_frame(warehouse.get().read_table(schema, table), needles, f"{schema}.{table}")
        return AssetCheckResult(
            passed=not hits,
            severity=AssetCheckSeverity.ERROR,
            description="no direct identifier found" if not hits else f"{len(hits)} identifier kinds found",
            metadata={
                "identifier_kinds_scanned": MetadataValue.json(sorted(needles)),
                "values_scanned": sum(len(v) for v in needles.values()),
                "hits": MetadataValue.json([{"location": h.location, "kind": h.identifier_kind, "count": h.count} for h in hits]),
            },
        )

    return _leak_gate


ASSETS = [
    pseudonym_map,
    deidentified_patients,
    deidentified_observations,
    deidentified_conditions,
    consent_registry,
    deidentified_images,
]
CHECKS = [
    identifier_leak_gate(k)
    for k in (keys.DEID_PATIENTS, keys.DEID_OBSERVATIONS, keys.DEID_CONDITIONS, keys.CONSENT_REGISTRY, keys.DEID_IMAGES)
]
