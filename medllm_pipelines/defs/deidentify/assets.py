"""De-identification stage: the boundary between identifiable and de-identified data.

Upstream of here everything is in the encrypted raw zone; from here on tables
are in the warehouse and must hold no direct identifier. Each de-identified
table carries a blocking leak check against the raw zone's identifiers.
"""


import datetime as dt
from functools import partial

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
from medllm_pipelines.defs.audit_tables import record_quarantine
from medllm_pipelines.defs.checks import identifier_leak_gate
from medllm_pipelines.defs.keys import asset_name, raw_table_name, warehouse_location
from medllm_pipelines.defs.metadata import counts_by, frame_metadata, versions_metadata
from medllm_pipelines.defs.deidentify.disclosure import protect_released_table
from medllm_pipelines.lib.common.records import QuarantineRecord, Reconciliation
from medllm_pipelines.lib.deidentify.consent import build_consent_registry, erased_persons
from medllm_pipelines.lib.deidentify.risk import (
    K_ANONYMITY_SUPPRESSED,
    withheld_persons,
    withheld_registrations,
    withhold,
)
from medllm_pipelines.lib.deidentify.policy import (
    PolicyOutcome,
    apply_policy,
    build_pseudonym_map,
    load_policy,
)
from medllm_pipelines.lib.ingest.dicom import decoded_pixels
from medllm_pipelines.lib.security.leak_scan import (
    IDENTIFIER_COLUMNS,
    identifier_needles,
    scan_frame,
)
from medllm_pipelines.resources.artifacts import ArtifactStoreResource
from medllm_pipelines.resources.raw_zone import RawZoneResource
from medllm_pipelines.resources.vault import VaultResource
from medllm_pipelines.resources.warehouse import WarehouseResource

# Identifiable: which (pseudonym, institution) registrations were withheld and by which rule. Kept in the
# encrypted raw zone (a list of rare persons), read by every person-keyed de-identified table of the run.
WITHHELD_REGISTRATIONS_TABLE = "deidentify_withheld_registrations"
# Rules under which a person's registration can be withheld from release; every person-keyed table reports each.
WITHHOLDING_RULES = (K_ANONYMITY_SUPPRESSED,)
ERASURE_AUDIT_ACTION = "consent.erasure_applied"


def _policy_metadata(outcome: PolicyOutcome, rows_in: int, rows_out: int, removed: dict[str, int]) -> dict:
    """``removed``: rows withheld after the policy, by rule (k-anonymity suppression here or of the person's registration)."""
    policy = load_policy()
    recon = Reconciliation(rows_in, rows_out, 0, {"unlinked_person": outcome.unlinked_rows, **removed})
    return {
        **recon.as_metadata(),
        "columns_removed": MetadataValue.json(outcome.removed_columns),
        "columns_dropped_undeclared": MetadataValue.json(outcome.undeclared_columns),
        "deidentification_policy_version": policy.version,
        "purpose": policy.purpose,
        "purpose_id": policy.purpose_id,
    }


def _withheld_registrations(zone) -> pd.DataFrame:
    """Registrations the released patients table withholds (written by deidentify/patients in this run)."""
    return zone.read_table(WITHHELD_REGISTRATIONS_TABLE)


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
    not change the dataset. Released k-anonymous on the policy's quasi-identifiers:
    rows of rare combinations get a wider age band, then a withheld one (see
    ``disclosure_control`` in the policy).
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
    released, k_meta, k_suppressed = protect_released_table("patients", outcome.frame)
    withheld = withheld_registrations(outcome.frame, released, K_ANONYMITY_SUPPRESSED)
    zone.write_table(WITHHELD_REGISTRATIONS_TABLE, withheld)
    meta = _write_deidentified(warehouse, keys.DEID_PATIENTS, released)
    return MaterializeResult(
        metadata={
            **meta,
            **_policy_metadata(outcome, len(frame), len(released), {K_ANONYMITY_SUPPRESSED: k_suppressed}),
            **k_meta,
            f"persons_withheld[{K_ANONYMITY_SUPPRESSED}]": int(
                withheld_persons(withheld, released)["patient_pseudonym"].nunique()),
            "registrations_withheld": len(withheld),
            "persons": int(released["patient_pseudonym"].nunique()),
            "rows_by_age_band": counts_by(released, "age_band"),
            "rows_by_sex": counts_by(released, "sex"),
            "rows_by_institution": counts_by(released, "institution"),
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
    protected, k_meta, k_suppressed = protect_released_table(policy_table, outcome.frame)
    # the person's registration was withheld from deidentify/patients: their rows here go too, under that rule
    withheld = withhold(protected, _withheld_registrations(zone), rules=WITHHOLDING_RULES)
    removed = dict(withheld.removed_by_rule)
    removed[K_ANONYMITY_SUPPRESSED] += k_suppressed
    released = withheld.frame
    meta = _write_deidentified(warehouse, target, released)
    return MaterializeResult(
        metadata={
            **meta,
            **_policy_metadata(outcome, len(frame), len(released), removed),
            **{k: v for k, v in withheld.as_metadata().items() if k.startswith("persons_withheld")},
            **k_meta,
            "rows_by_institution": counts_by(released, "institution"),
            **versions_metadata(),
        }
    )


@asset(
    key=keys.DEID_OBSERVATIONS,
    deps=[keys.CLEAN_OBSERVATIONS, keys.PSEUDONYM_MAP, keys.DEID_PATIENTS],
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
    deps=[keys.CLEAN_CONDITIONS, keys.PSEUDONYM_MAP, keys.DEID_PATIENTS],
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
    deps=[keys.CLEAN_CONSENTS, keys.PSEUDONYM_MAP, keys.DEID_PATIENTS],
    group_name=keys.DEIDENTIFY,
    kinds={"python", "duckdb"},
)
def consent_registry(
    context: AssetExecutionContext, raw_zone: RawZoneResource, warehouse: WarehouseResource
) -> MaterializeResult:
    """Each person's current research consent: granted, refused or withdrawn (latest decision wins)."""
    zone = raw_zone.get()
    clean_consents = zone.read_table(raw_table_name(keys.CLEAN_CONSENTS))
    pseudonym_map = zone.read_table(raw_table_name(keys.PSEUDONYM_MAP))
    registry = build_consent_registry(clean_consents, pseudonym_map)
    # an erasure a sender asked for (FHIR DELETE Patient) is audited once per person, by pseudonym
    erased = erased_persons(clean_consents, pseudonym_map)
    audited = sum(raw_zone.audit_event(ERASURE_AUDIT_ACTION, f"person:{pseudonym}",
                                       "erasure request from a sender: withdrawn from every derived dataset")
                  for pseudonym in erased)
    # one row per person: withheld only when every registration of the person was withheld
    released_patients = warehouse.get().read_table(*warehouse_location(keys.DEID_PATIENTS))
    withheld = withhold(
        registry, withheld_persons(_withheld_registrations(zone), released_patients), rules=WITHHOLDING_RULES
    )
    meta = _write_deidentified(warehouse, keys.CONSENT_REGISTRY, withheld.frame)
    recon = Reconciliation(len(registry), len(withheld.frame), 0, withheld.removed_by_rule)
    return MaterializeResult(
        metadata={
            **meta,
            **recon.as_metadata(),
            **withheld.as_metadata(),
            "persons_by_status": counts_by(withheld.frame, "consent_status"),
            "erasure_requests_applied": len(erased),
            "erasure_requests_audited": audited,
            **versions_metadata(),
        }
    )


def _patient_needles(patients: pd.DataFrame, by_key: dict, by_mrn: dict) -> dict[object, frozenset[str]]:
    """Each patient's known identifiers from the raw patients table, by pseudonym and by (institution, MRN).

    Forms a header may hold are added: ``Family^Given`` for an English name,
    ``姓^名`` for a Chinese one. Used for the residual self-check only.
    """
    needles = identifier_needles(patients)
    found: dict[object, set[str]] = {}
    columns = [c for c in IDENTIFIER_COLUMNS if c in patients.columns]
    for row in patients[["institution", "resource_key", *columns]].itertuples(index=False):
        values: set[str] = set()
        for column in columns:
            value = getattr(row, column)
            if isinstance(value, str) and value in needles.get(column, ()):
                values.add(value)
                if column == "name_en" and " " in value.strip():
                    given, family = value.strip().split(" ", 1)
                    values.add(f"{family}^{given}")
                elif column == "name_zh" and len(value) >= 2:
                    values.add(f"{value[0]}^{value[1:]}")
        mrn = row.mrn if "mrn" in columns and isinstance(row.mrn, str) else None
        owners = {by_key.get((row.institution, row.resource_key)), by_mrn.get((row.institution, mrn)), (row.institution, mrn)}
        for owner in owners - {None, (row.institution, None)}:
            found.setdefault(owner, set()).update(values)
    return {owner: frozenset(values) for owner, values in found.items()}


def _image_quarantine(decision) -> QuarantineRecord:
    """Quarantine row of a withheld instance (a ``dicom_release.ReleaseDecision``): reason codes, never values."""
    institution, source_object = decision.instance.context
    return QuarantineRecord(
        stage=keys.DEIDENTIFY,
        asset=asset_name(keys.DEID_IMAGES),
        institution=institution,
        source_object=source_object,
        position=None,
        resource_type="DICOM",
        reason_code=str(decision.withheld_reason_code),
        reason=str(decision.withheld_reason),
    )


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
) -> MaterializeResult:
    """DICOM files de-identified per PS3.15 Annex E (``dicom_profile.yaml``), keyed by image pseudonym.

    UIDs are remapped and dates shifted with keys held in Vault. An instance
    whose pixels may carry burned-in text, or that still holds a known
    identifier of its patient after de-identification, is quarantined, not
    released. The pixel array is also written as ``.npy`` for training.
    """
    # pydicom and the DICOM profile load here, not when the definitions are imported (~0.35 s)
    from medllm_pipelines.lib.deidentify.dicom import default_profile
    from medllm_pipelines.lib.deidentify.dicom_release import (
        InstanceToRelease,
        ReleaseSummary,
        release_instances,
    )

    zone = raw_zone.get()
    index = zone.read_partitions(raw_table_name(keys.RAW_DICOM_INSTANCES))
    by_key, by_mrn = _person_lookups(zone.read_table(raw_table_name(keys.PSEUDONYM_MAP)))
    needles = _patient_needles(zone.read_partitions(raw_table_name(keys.RAW_PATIENTS)), by_key, by_mrn)
    outcome = apply_policy(
        "dicom_instances", index, load_policy(), person_by_key=by_key, person_by_mrn=by_mrn, hmac_many=vault.hmac_many
    )
    linked = index.loc[outcome.kept_index] if len(outcome.frame) else index.iloc[0:0]
    # a registration withheld from deidentify/patients takes its images with it: no file is written for them
    withheld = (withhold(outcome.frame, _withheld_registrations(zone), rules=WITHHOLDING_RULES)
                if "patient_pseudonym" in outcome.frame.columns else None)
    releasable = set(withheld.frame["image_id"]) if withheld is not None else set()
    profile = default_profile()
    instances = [
        InstanceToRelease(
            image_id=image_id,
            patient_pseudonym=pseudonym,
            needles=needles.get(pseudonym, frozenset()) | needles.get((institution, patient_id), frozenset()),
            read=partial(zone.get_object, source_object),
            context=(institution, source_object),
        )
        for image_id, pseudonym, institution, patient_id, source_object in zip(
            outcome.frame["image_id"] if len(outcome.frame) else [],
            outcome.frame["patient_pseudonym"] if len(outcome.frame) else [],
            linked["institution"],
            linked["patient_id"],
            linked["source_object"],
            strict=True,
        )
        if image_id in releasable
    ]
    images_dir = artifacts.folder("deidentified", "images")
    # images whose pixels cannot be decoded here: released de-identified, withheld from models (no pixel file)
    undecodable = (
        dict(zip(outcome.frame["image_id"], outcome.frame["pixel_undecodable_reason"], strict=True))
        if len(outcome.frame) and "pixel_decodable" in outcome.frame.columns else {}
    )
    undecodable = {k: v for k, v in undecodable.items() if isinstance(v, str) and v}
    pixels_withheld: dict[str, int] = {}
    summary = ReleaseSummary()
    released: dict[str, tuple[str, str]] = {}
    quarantine: list[QuarantineRecord] = []
    for decision in release_instances(instances, vault.hmac_many, profile=profile):
        summary.add(decision)
        image_id = decision.instance.image_id
        if not decision.released or decision.data is None:
            quarantine.append(_image_quarantine(decision))
            continue
        dicom_target, pixel_target = images_dir / f"{image_id}.dcm", images_dir / f"{image_id}.npy"
        dicom_target.write_bytes(decision.data)
        pixels, withheld_reason = decoded_pixels(decision.data, undecodable.get(image_id))
        if pixels is None:
            pixels_withheld[withheld_reason] = pixels_withheld.get(withheld_reason, 0) + 1
            released[image_id] = (dicom_target.name, None)
            continue
        np.save(pixel_target, pixels)
        released[image_id] = (dicom_target.name, pixel_target.name)
    frame = outcome.frame[outcome.frame["image_id"].isin(released)] if len(outcome.frame) else outcome.frame
    frame = frame.assign(
        dicom_file=[released[i][0] for i in frame["image_id"]], pixel_file=[released[i][1] for i in frame["image_id"]]
    )
    meta = _write_deidentified(warehouse, keys.DEID_IMAGES, frame)
    quarantine_meta = record_quarantine(warehouse.get(), keys.DEID_IMAGES, quarantine)
    withheld_by_rule = withheld.removed_by_rule if withheld is not None else dict.fromkeys(WITHHOLDING_RULES, 0)
    recon = Reconciliation(len(index), len(frame), len(quarantine),
                           {"unlinked_person": outcome.unlinked_rows, **withheld_by_rule})
    report = summary.as_dict()
    return MaterializeResult(
        metadata={
            **meta,
            **recon.as_metadata(),
            **quarantine_meta,
            "columns_removed": MetadataValue.json(outcome.removed_columns),
            "columns_dropped_undeclared": MetadataValue.json(outcome.undeclared_columns),
            "deidentification_policy_version": load_policy().version,
            "dicom_profile": profile.method_codes["basic"][1],
            "dicom_profile_standard": profile.standard,
            "dicom_profile_options": MetadataValue.json(list(profile.options)),
            "dicom_method_codes": MetadataValue.json(report["method_codes"]),
            "attributes_removed": report["attributes_removed"],
            "attributes_replaced": report["attributes_replaced"],
            "attributes_cleaned": report["attributes_cleaned"],
            "attribute_actions": MetadataValue.json(report["attribute_actions"]),
            "uids_remapped": report["uids_remapped"],
            "dates_shifted": report["dates_shifted"],
            "private_tags_removed": report["private_tags_removed"],
            "private_tags_retained": report["private_tags_retained"],
            "identifiers_replaced_in_text": MetadataValue.json(report["identifiers_replaced"]),
            "attributes_cleaned_by_name": MetadataValue.json(report["cleaned_attributes"]),
            "burned_in_annotation": MetadataValue.json(report["burned_in_annotation"]),
            "withheld_by_reason": MetadataValue.json(report["withheld_by_reason"]),
            "files_written": len(released),
            "pixels_withheld_from_models_by_reason": MetadataValue.json(dict(sorted(pixels_withheld.items()))),
            "patient_identity_removed_checked": report["patient_identity_removed_yes"] == len(released),
            "uid_and_date_shift_key": f"{vault.transit_mount}/{vault.pseudonym_key_name}",
            "images_dir": str(images_dir),
            "rows_by_modality": counts_by(frame, "modality"),
            **versions_metadata(dicom_profile=profile.version),
        }
    )


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
