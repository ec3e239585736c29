"""Quality stage: declared cleaning rules, then Great Expectations gates (blocking).

The cleaning, accuracy checks and accounting are in ``lib/quality`` (``cleaned``, ``cleaning``,
``accuracy``, ``expectations``); these bodies read the raw zone, call it, write and report.
"""


import datetime as dt

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
from medllm_pipelines.defs.metadata import frame_metadata, versions_metadata
from medllm_pipelines.lib.quality.cleaned import (
    CleaningReport,
    ReconciliationVerdict,
    clean_patient_linked,
    clean_patient_table,
)
from medllm_pipelines.lib.quality.cleaning import CleaningResult, load_rules
from medllm_pipelines.lib.quality.expectations import build_data_docs, load_suite, run_suite
from medllm_pipelines.lib.quality.inputs import conform_parsed_table
from medllm_pipelines.resources.artifacts import ArtifactStoreResource
from medllm_pipelines.resources.raw_zone import RawZoneResource
from medllm_pipelines.resources.vault import VaultResource
from medllm_pipelines.resources.warehouse import WarehouseResource

STORAGE = "raw zone (envelope-encrypted Parquet)"


def publish(
    context: AssetExecutionContext,
    asset_key: AssetKey,
    records_in: pd.DataFrame,
    result: CleaningResult,
    raw_zone: RawZoneResource,
    warehouse: WarehouseResource,
) -> MaterializeResult:
    """Write a cleaned table to the raw zone and its quarantine to the audit table; report the accounting."""
    report = CleaningReport.of(records_in, result, load_rules().version)
    raw_zone.get().write_table(raw_table_name(asset_key), result.frame)
    quarantine_meta = record_quarantine(warehouse.get(), asset_key, result.quarantine)
    context.log.info(report.summary(asset_name(asset_key)))
    return MaterializeResult(
        metadata={
            **frame_metadata(result.frame, with_schema=False),
            **report.as_metadata(),
            **quarantine_meta,
            "storage": STORAGE,
            **versions_metadata(cleaning_rules=report.rules_version),
        }
    )


def read_parsed(raw_zone: RawZoneResource, source: AssetKey) -> pd.DataFrame:
    """A raw ingest table (every institution partition) with its declared columns and types."""
    return conform_parsed_table(raw_zone.get().read_partitions(raw_table_name(source)), source.path[-1])


@asset(key=keys.CLEAN_PATIENTS, deps=[keys.RAW_PATIENTS], group_name=keys.QUALITY, kinds={"python"})
def clean_patients(
    context: AssetExecutionContext, raw_zone: RawZoneResource, warehouse: WarehouseResource, vault: VaultResource
) -> MaterializeResult:
    """Patients deduplicated (re-sent and superseded versions), birth dates checked, sex coded."""
    patients = read_parsed(raw_zone, keys.RAW_PATIENTS)
    result = clean_patient_table(patients, asset_name(keys.CLEAN_PATIENTS), dt.date.today(), load_rules(), vault.hmac_many)
    return publish(context, keys.CLEAN_PATIENTS, patients, result, raw_zone, warehouse)


def patient_linked_cleaning(source: AssetKey, target: AssetKey, description: str):
    """A cleaning asset for records that refer to a patient (checked against the cleaned patients)."""

    @asset(key=target, deps=[source, keys.CLEAN_PATIENTS], group_name=keys.QUALITY, kinds={"python"},
           description=description)
    def _clean(context: AssetExecutionContext, raw_zone: RawZoneResource, warehouse: WarehouseResource) -> MaterializeResult:
        records = read_parsed(raw_zone, source)
        patients = raw_zone.get().read_table(raw_table_name(keys.CLEAN_PATIENTS))
        result = clean_patient_linked(source.path[-1], records, patients, asset_name(target), load_rules(),
                                      dt.datetime.now(dt.UTC))
        return publish(context, target, records, result, raw_zone, warehouse)

    return _clean


clean_observations = patient_linked_cleaning(
    keys.RAW_OBSERVATIONS,
    keys.CLEAN_OBSERVATIONS,
    "Observations mapped to LOINC concepts, converted to one UCUM unit each, range- and date-checked.",
)
clean_conditions = patient_linked_cleaning(
    keys.RAW_CONDITIONS,
    keys.CLEAN_CONDITIONS,
    "Diagnoses from ICD-10 (WHO), ICD-10-CM, the Chinese clinical edition, SNOMED CT and local codes unified to WHO "
    "ICD-10 (versioned crosswalk lib/quality/code_crosswalk.yaml); unmapped codes counted as unmapped_code.",
)
clean_consents = patient_linked_cleaning(
    keys.RAW_CONSENTS,
    keys.CLEAN_CONSENTS,
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
        outcome = run_suite(suite_name, raw_zone.get().read_table(raw_table_name(asset_key)))
        # Browsable GX Data Docs for this validation (records by source hash#position, never values).
        docs_index = build_data_docs([outcome], artifacts.folder("reports", "data_docs", suite_name))
        return AssetCheckResult(
            passed=outcome.success,
            severity=AssetCheckSeverity.ERROR,
            description=outcome.summary(),
            metadata={**outcome.as_metadata(), "data_docs": MetadataValue.path(str(docs_index))},
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
        verdict = ReconciliationVerdict(
            {k: v.value for k, v in event.asset_materialization.metadata.items()} if event else {}
        )
        return AssetCheckResult(passed=verdict.passed, severity=AssetCheckSeverity.ERROR,
                                description=verdict.description, metadata=verdict.as_metadata())

    return _reconciled


ASSETS = [clean_patients, clean_observations, clean_conditions, clean_consents]
CHECKS = [
    great_expectations_gate(keys.CLEAN_PATIENTS, "clean_patients"),
    great_expectations_gate(keys.CLEAN_OBSERVATIONS, "clean_observations"),
    great_expectations_gate(keys.CLEAN_CONDITIONS, "clean_conditions"),
    *(reconciliation_gate(k) for k in (keys.CLEAN_PATIENTS, keys.CLEAN_OBSERVATIONS, keys.CLEAN_CONDITIONS, keys.CLEAN_CONSENTS)),
]
