"""Quality stage: declared cleaning rules, then Great Expectations gates (blocking)."""


import datetime as dt
from collections.abc import Callable

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
from medllm_pipelines.defs.keys import asset_name, raw_table_name
from medllm_pipelines.defs.metadata import counts_by, frame_metadata, versions_metadata
from medllm_pipelines.lib.common.records import reconciliation_by_institution
from medllm_pipelines.lib.quality.cleaning import (
    CleaningResult,
    clean_conditions,
    clean_consents,
    clean_observations,
    clean_patients,
    load_rules,
)
from medllm_pipelines.lib.quality.inputs import conform_parsed_table
from medllm_pipelines.lib.quality.accuracy import MATCH_RULE, find_disagreements, link_patients
from medllm_pipelines.lib.quality.expectations import build_data_docs, load_suite, run_suite
from medllm_pipelines.resources.artifacts import ArtifactStoreResource
from medllm_pipelines.resources.raw_zone import RawZoneResource
from medllm_pipelines.resources.vault import VaultResource
from medllm_pipelines.resources.warehouse import WarehouseResource

STORAGE = "raw zone (envelope-encrypted Parquet)"


def _publish(
    context: AssetExecutionContext,
    asset_key: AssetKey,
    result: CleaningResult,
    raw_zone: RawZoneResource,
    warehouse: WarehouseResource,
    records_in: pd.DataFrame,
) -> MaterializeResult:
    raw_zone.get().write_table(raw_table_name(asset_key), result.frame)
    by_institution = reconciliation_by_institution(records_in, result.frame, result.quarantine)
    quarantine_meta = record_quarantine(warehouse.get(), asset_key, result.quarantine)
    rules = load_rules()
    context.log.info(
        f"{'/'.join(asset_key.path)}: {result.reconciliation.records_in} in, {result.reconciliation.records_out} out, "
        f"{result.reconciliation.quarantined} quarantined, removed {result.reconciliation.removed_by_rule}"
    )
    details = {k: MetadataValue.json(v) if isinstance(v, dict) else v for k, v in result.details.items()}
    return MaterializeResult(
        metadata={
            **frame_metadata(result.frame, with_schema=False),
            **result.reconciliation.as_metadata(),
            **quarantine_meta,
            **details,
            "rows_by_institution": counts_by(result.frame, "institution"),
            "reconciliation_by_institution": MetadataValue.json(by_institution),
            "storage": STORAGE,
            **versions_metadata(cleaning_rules=rules.version),
        }
    )


@asset(key=keys.CLEAN_PATIENTS, deps=[keys.RAW_PATIENTS], group_name=keys.QUALITY, kinds={"python"})
def clean_patients_asset(
    context: AssetExecutionContext, raw_zone: RawZoneResource, warehouse: WarehouseResource, vault: VaultResource
) -> MaterializeResult:
    """Patients deduplicated (re-sent and superseded versions), birth dates checked, sex coded."""
    patients = conform_parsed_table(raw_zone.get().read_partitions(raw_table_name(keys.RAW_PATIENTS)), "patients")
    result = clean_patients(patients, asset_name(keys.CLEAN_PATIENTS), dt.date.today(), load_rules())
    # Near-duplicate persons across institutions, matched on keyed hashes (match rule in lib/quality/accuracy.py).
    links = link_patients(result.frame, vault.hmac_many)
    result.details["near_duplicate_pairs_by_status"] = {
        str(k): int(v) for k, v in (links["status"].value_counts().items() if "status" in links else [])
    }
    result.details["near_duplicate_match_rule"] = MATCH_RULE
    return _publish(context, keys.CLEAN_PATIENTS, result, raw_zone, warehouse, patients)


PatientLinkedCleaner = Callable[[pd.DataFrame, pd.DataFrame, str], CleaningResult]


def patient_linked_cleaning(source: AssetKey, target: AssetKey, clean: PatientLinkedCleaner, description: str):
    """A cleaning asset for records that refer to a patient (checked against the cleaned patients)."""

    @asset(
        key=target,
        deps=[source, keys.CLEAN_PATIENTS],
        group_name=keys.QUALITY,
        kinds={"python"},
        description=description,
    )
    def _clean(context: AssetExecutionContext, raw_zone: RawZoneResource, warehouse: WarehouseResource) -> MaterializeResult:
        zone = raw_zone.get()
        records = conform_parsed_table(zone.read_partitions(raw_table_name(source)), source.path[-1])
        result = clean(records, zone.read_table(raw_table_name(keys.CLEAN_PATIENTS)), asset_name(target))
        return _publish(context, target, result, raw_zone, warehouse, records)

    return _clean


SAFE_DISAGREEMENT_COLUMNS = (
    "concept",
    "unit",
    "record_a",
    "record_b",
    "institution_a",
    "institution_b",
    "days_apart",
    "abs_difference",
    "tolerance",
)


def _clean_and_double_verify(records: pd.DataFrame, patients: pd.DataFrame, name: str) -> CleaningResult:
    """Clean, then list repeated measurements of one concept that disagree beyond the declared
    tolerance (clause 5.1.2.2 double verification): listed by record address, never averaged away."""
    rules = load_rules()
    result = clean_observations(records, patients, name, dt.datetime.now(dt.UTC), rules)
    verification = rules.double_verification
    disagreements = find_disagreements(
        result.frame, verification.get("tolerances", {}), window_days=int(verification.get("window_days", 0))
    )
    result.details["double_verification_disagreements"] = len(disagreements)
    result.details["double_verification_examples"] = {
        "tolerances": verification.get("tolerances", {}),
        # record addresses (source hash#position) and sizes only: no patient key, no value
        "records": disagreements.head(20)[[c for c in SAFE_DISAGREEMENT_COLUMNS if c in disagreements.columns]]
        .astype(str)
        .to_dict(orient="records")
        if len(disagreements)
        else [],
    }
    return result


clean_observations_asset = patient_linked_cleaning(
    keys.RAW_OBSERVATIONS,
    keys.CLEAN_OBSERVATIONS,
    _clean_and_double_verify,
    "Observations mapped to LOINC concepts, converted to one UCUM unit each, range- and date-checked.",
)
clean_conditions_asset = patient_linked_cleaning(
    keys.RAW_CONDITIONS,
    keys.CLEAN_CONDITIONS,
    lambda records, patients, name: clean_conditions(records, patients, name, load_rules()),
    "Diagnoses from ICD-10 (WHO), ICD-10-CM, the Chinese clinical edition, SNOMED CT and local codes unified to WHO "
    "ICD-10 (versioned crosswalk lib/quality/code_crosswalk.yaml); unmapped codes counted as unmapped_code.",
)
clean_consents_asset = patient_linked_cleaning(
    keys.RAW_CONSENTS,
    keys.CLEAN_CONSENTS,
    lambda records, patients, name: clean_consents(records, patients, name, load_rules()),
    "Consent records deduplicated and dated (UTC) so the latest decision can win.",
)


def great_expectations_gate(asset_key: AssetKey, suite_name: str):
    """A blocking asset check running the versioned GX suite on the asset's table."""
    suite = load_suite(suite_name)

    @asset_check(
        asset=asset_key,
        name=keys.CHECK_GE_SUITE,
        blocking=True,
        description=f"Great Expectations suite '{suite.name}' v{suite.version}: {suite.description}",
    )
    def _gate(
        context: AssetCheckExecutionContext, raw_zone: RawZoneResource, artifacts: ArtifactStoreResource
    ) -> AssetCheckResult:
        frame = raw_zone.get().read_table(raw_table_name(asset_key))
        outcome = run_suite(suite_name, frame)
        # Browsable GX Data Docs for this validation (records by source hash#position, never values).
        docs_index = build_data_docs([outcome], artifacts.folder("reports", "data_docs", suite_name))
        failures = {
            f"{o.expectation}({o.column})": {
                "unexpected_count": o.unexpected_count,
                "unexpected_percent": round(o.unexpected_percent, 3),
                "records": o.failing_records,
            }
            for o in outcome.failed
        }
        return AssetCheckResult(
            passed=outcome.success,
            severity=AssetCheckSeverity.ERROR,
            description=outcome.summary(),
            metadata={
                "suite": outcome.suite,
                "suite_version": outcome.suite_version,
                "expectations_evaluated": outcome.evaluated,
                "expectations_failed": len(outcome.failed),
                "rows_validated": outcome.rows,
                "failures": MetadataValue.json(failures),
                "data_docs": MetadataValue.path(str(docs_index)),
            },
        )

    return _gate


def reconciliation_gate(asset_key: AssetKey):
    """Blocking check: the latest materialisation accounted for every record, per institution too."""

    @asset_check(
        asset=asset_key,
        name=keys.CHECK_RECONCILED,
        blocking=True,
        description="in = out + quarantined + removed-by-rule, for the stage and for each institution.",
    )
    def _reconciled(context: AssetCheckExecutionContext) -> AssetCheckResult:
        event = context.instance.get_latest_materialization_event(asset_key)
        meta = {k: v.value for k, v in event.asset_materialization.metadata.items()} if event else {}
        per_institution = meta.get("reconciliation_by_institution") or {}
        unbalanced = {
            name: counts
            for name, counts in per_institution.items()
            if counts["in"] != counts["out"] + counts["quarantined"] + counts["removed"] or counts["removed"] < 0
        }
        passed = bool(meta.get("reconciled")) and not unbalanced and bool(per_institution or meta.get("records_in") == 0)
        return AssetCheckResult(
            passed=passed,
            severity=AssetCheckSeverity.ERROR,
            description="every record accounted for" if passed else "records were lost or invented",
            metadata={
                "records_in": meta.get("records_in", 0),
                "records_out": meta.get("records_out", 0),
                "records_quarantined": meta.get("records_quarantined", 0),
                "institutions_checked": len(per_institution),
                "unbalanced_institutions": MetadataValue.json(unbalanced),
            },
        )

    return _reconciled


ASSETS = [clean_patients_asset, clean_observations_asset, clean_conditions_asset, clean_consents_asset]
CHECKS = [
    great_expectations_gate(keys.CLEAN_PATIENTS, "clean_patients"),
    great_expectations_gate(keys.CLEAN_OBSERVATIONS, "clean_observations"),
    great_expectations_gate(keys.CLEAN_CONDITIONS, "clean_conditions"),
    *(reconciliation_gate(k) for k in (keys.CLEAN_PATIENTS, keys.CLEAN_OBSERVATIONS, keys.CLEAN_CONDITIONS, keys.CLEAN_CONSENTS)),
]
