"""De-identification stage: the boundary between identifiable and de-identified data.

Upstream of here everything is in the encrypted raw zone; from here on tables
are in the warehouse and must hold no direct identifier. Each de-identified
table carries a blocking leak check against the raw zone's identifiers. The
work is in ``lib.deidentify`` (``tables``, ``images``); these bodies read,
call it, write and report. The purpose, k and l come from ``run_settings``.
"""
# No `from __future__ import annotations` here: Dagster reads the asset functions' annotations.

from dagster import AssetExecutionContext, AssetKey, AssetsDefinition, MaterializeResult, MetadataValue, asset

from medllm_pipelines.defs import keys
from medllm_pipelines.defs.audit_tables import record_quarantine
from medllm_pipelines.defs.checks import identifier_leak_gate
from medllm_pipelines.defs.deidentify.storage import (
    WITHHELD_REGISTRATIONS_TABLE,
    read_person_index,
    read_withheld_registrations,
    write_deidentified,
)
from medllm_pipelines.defs.keys import asset_name, raw_table_name, warehouse_location
from medllm_pipelines.defs.metadata import counts_by, versions_metadata
from medllm_pipelines.lib.deidentify.policy import build_pseudonym_map, load_policy
from medllm_pipelines.lib.deidentify.tables import (
    deidentify_patients,
    deidentify_person_table,
    release_consent_registry,
)
from medllm_pipelines.resources.artifacts import ArtifactStoreResource
from medllm_pipelines.resources.raw_zone import RawZoneResource
from medllm_pipelines.resources.run_settings import RunSettingsResource
from medllm_pipelines.resources.vault import VaultResource
from medllm_pipelines.resources.warehouse import WarehouseResource

ERASURE_AUDIT_ACTION = "consent.erasure_applied"


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
def pseudonym_map(context: AssetExecutionContext, raw_zone: RawZoneResource, vault: VaultResource,
                  run_settings: RunSettingsResource) -> MaterializeResult:
    zone = raw_zone.get()
    patients = zone.read_table(raw_table_name(keys.CLEAN_PATIENTS))
    policy = load_policy(purpose=run_settings.purpose)
    mapping = build_pseudonym_map(patients, vault.hmac_many, policy)
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
            **versions_metadata(deidentification_policy=policy.version),
        }
    )


@asset(
    key=keys.DEID_PATIENTS,
    deps=[keys.CLEAN_PATIENTS, keys.PSEUDONYM_MAP, keys.CLEAN_OBSERVATIONS],
    group_name=keys.DEIDENTIFY,
    kinds={"python", "duckdb"},
)
def deidentified_patients(context: AssetExecutionContext, raw_zone: RawZoneResource, warehouse: WarehouseResource,
                          run_settings: RunSettingsResource) -> MaterializeResult:
    """Patients without direct identifiers: pseudonym, institution, sex, 5-year age band (90+ top-coded).

    Age is taken at the person's latest observation, so re-running later does
    not change the dataset. Released k-anonymous on the policy's quasi-identifiers:
    rows of rare combinations get a wider age band, then a withheld one (see
    ``disclosure_control`` in the policy).
    """
    zone = raw_zone.get()
    released = deidentify_patients(
        zone.read_table(raw_table_name(keys.CLEAN_PATIENTS)), zone.read_table(raw_table_name(keys.CLEAN_OBSERVATIONS)),
        read_person_index(zone), load_policy(purpose=run_settings.purpose),
        k=run_settings.k_anonymity_k, l=run_settings.l_diversity_l)
    zone.write_table(WITHHELD_REGISTRATIONS_TABLE, released.withheld)
    return MaterializeResult(metadata={
        **write_deidentified(warehouse, keys.DEID_PATIENTS, released.frame),
        **released.as_metadata(),
        **{f"rows_by_{column}": counts_by(released.frame, column) for column in ("age_band", "sex", "institution")},
        **versions_metadata(),
    })


def _deidentify_table(raw_zone: RawZoneResource, warehouse: WarehouseResource, run_settings: RunSettingsResource,
                      source: AssetKey, target: AssetKey, policy_table: str) -> MaterializeResult:
    zone = raw_zone.get()
    released = deidentify_person_table(
        policy_table, zone.read_table(raw_table_name(source)), read_person_index(zone),
        load_policy(purpose=run_settings.purpose), read_withheld_registrations(zone),
        k=run_settings.k_anonymity_k, l=run_settings.l_diversity_l)
    return MaterializeResult(metadata={
        **write_deidentified(warehouse, target, released.frame),
        **released.as_metadata(),
        "rows_by_institution": counts_by(released.frame, "institution"),
        **versions_metadata(),
    })


@asset(
    key=keys.DEID_OBSERVATIONS,
    deps=[keys.CLEAN_OBSERVATIONS, keys.PSEUDONYM_MAP, keys.DEID_PATIENTS],
    group_name=keys.DEIDENTIFY,
    kinds={"python", "duckdb"},
)
def deidentified_observations(context: AssetExecutionContext, raw_zone: RawZoneResource,
                              warehouse: WarehouseResource, run_settings: RunSettingsResource) -> MaterializeResult:
    """Harmonised observations keyed by pseudonym, dates generalised to the year."""
    return _deidentify_table(raw_zone, warehouse, run_settings, keys.CLEAN_OBSERVATIONS, keys.DEID_OBSERVATIONS,
                             "observations")


@asset(
    key=keys.DEID_CONDITIONS,
    deps=[keys.CLEAN_CONDITIONS, keys.PSEUDONYM_MAP, keys.DEID_PATIENTS],
    group_name=keys.DEIDENTIFY,
    kinds={"python", "duckdb"},
)
def deidentified_conditions(context: AssetExecutionContext, raw_zone: RawZoneResource,
                            warehouse: WarehouseResource, run_settings: RunSettingsResource) -> MaterializeResult:
    """Diagnoses (unified ICD-10) keyed by pseudonym, onset generalised to the year."""
    return _deidentify_table(raw_zone, warehouse, run_settings, keys.CLEAN_CONDITIONS, keys.DEID_CONDITIONS,
                             "conditions")


@asset(
    key=keys.CONSENT_REGISTRY,
    deps=[keys.CLEAN_CONSENTS, keys.PSEUDONYM_MAP, keys.DEID_PATIENTS],
    group_name=keys.DEIDENTIFY,
    kinds={"python", "duckdb"},
)
def consent_registry(
    context: AssetExecutionContext, raw_zone: RawZoneResource, warehouse: WarehouseResource
) -> MaterializeResult:
    """Each person's current research consent: granted, refused or withdrawn (latest decision wins)."""
    zone = raw_zone.get()
    released = release_consent_registry(
        zone.read_table(raw_table_name(keys.CLEAN_CONSENTS)), zone.read_table(raw_table_name(keys.PSEUDONYM_MAP)),
        read_withheld_registrations(zone), warehouse.get().read_table(*warehouse_location(keys.DEID_PATIENTS)))
    # an erasure a sender asked for (FHIR DELETE Patient) is audited once per person, by pseudonym
    audited = sum(raw_zone.audit_event(ERASURE_AUDIT_ACTION, f"person:{pseudonym}",
                                       "erasure request from a sender: withdrawn from every derived dataset")
                  for pseudonym in released.erased)
    return MaterializeResult(metadata={
        **write_deidentified(warehouse, keys.CONSENT_REGISTRY, released.frame),
        **released.as_metadata(),
        "persons_by_status": counts_by(released.frame, "consent_status"),
        "erasure_requests_audited": audited,
        **versions_metadata(),
    })


@asset(
    key=keys.DEID_IMAGES,
    deps=[keys.RAW_DICOM_INSTANCES, keys.PSEUDONYM_MAP, keys.RAW_PATIENTS, keys.DEID_PATIENTS],
    group_name=keys.DEIDENTIFY,
    kinds={"python", "dicom"},
)
def deidentified_images(
    context: AssetExecutionContext,
    raw_zone: RawZoneResource,
    vault: VaultResource,
    warehouse: WarehouseResource,
    artifacts: ArtifactStoreResource,
    run_settings: RunSettingsResource,
) -> MaterializeResult:
    """DICOM files de-identified per PS3.15 Annex E (``dicom_profile.yaml``), keyed by image pseudonym.

    UIDs are remapped and dates shifted with keys held in Vault. An instance
    whose pixels may carry burned-in text, or that still holds a known
    identifier of its patient after de-identification, is quarantined, not
    released. The pixel array is also written as ``.npy`` for training.
    """
    # pydicom and the DICOM profile load here, not when the definitions are imported (~0.35 s)
    from medllm_pipelines.lib.deidentify.images import release_images

    zone = raw_zone.get()
    images_dir = artifacts.folder("deidentified", "images")
    released = release_images(
        zone.read_partitions(raw_table_name(keys.RAW_DICOM_INSTANCES)),
        zone.read_partitions(raw_table_name(keys.RAW_PATIENTS)), read_person_index(zone),
        load_policy(purpose=run_settings.purpose), read_withheld_registrations(zone), hmac_many=vault.hmac_many,
        read_object=zone.get_object, images_dir=images_dir,
        quarantine_as=(keys.DEIDENTIFY, asset_name(keys.DEID_IMAGES)))
    return MaterializeResult(metadata={
        **write_deidentified(warehouse, keys.DEID_IMAGES, released.frame),
        **released.as_metadata(),
        **record_quarantine(warehouse.get(), keys.DEID_IMAGES, released.quarantine),
        "uid_and_date_shift_key": f"{vault.transit_mount}/{vault.pseudonym_key_name}",
        "images_dir": MetadataValue.path(str(images_dir)),
        "rows_by_modality": counts_by(released.frame, "modality"),
        **versions_metadata(dicom_profile=released.profile.version),
    })


ASSETS: list[AssetsDefinition] = [
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
