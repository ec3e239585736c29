"""Disclosure risk: k-anonymity gates on released tables and differentially private released statistics.

Clause 5.4.1.3 (row S3). Person-level tables are recoded to k-anonymity on the
quasi-identifiers the de-identification policy declares, and a blocking check
re-reads each one from the warehouse. Aggregates meant for publication go out
only with differential-privacy noise, charged to the dataset's privacy ledger
before any noise is drawn; a release that would overspend fails and publishes
nothing. The logic is in ``lib.deidentify.disclosure`` and
``lib.deidentify.released_statistics`` (queries: ``released_statistics.yaml``).
"""
# No `from __future__ import annotations` here: Dagster reads the asset and check functions' annotations.

from dagster import (
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetChecksDefinition,
    AssetCheckSeverity,
    AssetExecutionContext,
    AssetKey,
    AssetsDefinition,
    Failure,
    MaterializeResult,
    MetadataValue,
    asset,
    asset_check,
)

from medllm_pipelines.defs import keys
from medllm_pipelines.defs.keys import warehouse_location
from medllm_pipelines.defs.metadata import frame_metadata, run_id_of, versions_metadata
from medllm_pipelines.lib.deidentify.disclosure import assess_released_table
from medllm_pipelines.lib.deidentify.dp import PrivacyLedger
from medllm_pipelines.lib.deidentify.policy import load_policy
from medllm_pipelines.lib.deidentify.released_statistics import (
    ReleaseInputs,
    ReleaseRefused,
    load_release_spec,
    release_statistics,
)
from medllm_pipelines.lib.ingest.sources import load_sources
from medllm_pipelines.resources.artifacts import ArtifactStoreResource
from medllm_pipelines.resources.run_settings import RunSettingsResource
from medllm_pipelines.resources.warehouse import WarehouseResource

# Released tables and the policy table each one is produced from.
POLICY_TABLE_OF = {
    keys.DEID_PATIENTS: "patients",
    keys.DEID_OBSERVATIONS: "observations",
    keys.DEID_CONDITIONS: "conditions",
    keys.DEID_IMAGES: "dicom_instances",
}


def k_anonymity_gate(asset_key: AssetKey, policy_table: str) -> AssetChecksDefinition:
    """Blocking check: the table as stored in the warehouse is k-anonymous on its declared quasi-identifiers."""
    declared = load_policy().disclosure[policy_table]

    @asset_check(
        asset=asset_key,
        name=keys.CHECK_K_ANONYMITY,
        blocking=True,
        description=(
            f"Every combination of ({', '.join(declared.quasi_identifiers)}) holds at least k rows "
            "(k = MEDLLM_K_ANONYMITY_K, default 5)."
        ),
    )
    def _k_gate(context: AssetCheckExecutionContext, warehouse: WarehouseResource,
                run_settings: RunSettingsResource) -> AssetCheckResult:
        policy = load_policy(purpose=run_settings.purpose)
        rule = policy.disclosure.get(policy_table)
        if rule is None:  # the run's purpose releases none of the quasi-identifiers
            return AssetCheckResult(passed=True, description=f"no quasi-identifier released for {policy.purpose_id}",
                                    metadata={"deidentification_policy_version": policy.version})
        frame = warehouse.get().read_table(*warehouse_location(asset_key))
        assessment = assess_released_table(frame, rule, k=run_settings.k_anonymity_k, l=run_settings.l_diversity_l,
                                           policy_version=policy.version)
        return AssetCheckResult(passed=assessment.passed, severity=AssetCheckSeverity.ERROR,
                                description=assessment.description, metadata=assessment.as_metadata())

    return _k_gate


@asset(
    key=keys.RELEASED_STATISTICS,
    deps=[keys.DEID_PATIENTS, keys.DEID_OBSERVATIONS, keys.DEID_CONDITIONS, keys.CONSENT_REGISTRY],
    group_name=keys.DEIDENTIFY,
    kinds={"python", "duckdb"},
)
def released_statistics(
    context: AssetExecutionContext,
    warehouse: WarehouseResource,
    artifacts: ArtifactStoreResource,
    run_settings: RunSettingsResource,
) -> MaterializeResult:
    """Aggregates for publication with Laplace noise (epsilon-DP), charged to the cohort's privacy ledger.

    Persons per institution, per age group x sex, mean HbA1c and fasting
    glucose per institution (clipped to plausible ranges) and the prevalence of
    each diabetes category (``released_statistics.yaml``); persons who refused
    or withdrew consent are left out. A release that the remaining budget
    cannot pay for fails before anything is charged or written.
    """
    spec = load_release_spec()
    ledger = PrivacyLedger(
        artifacts.folder("governance", "privacy_ledger") / f"{run_settings.dp_dataset.replace('/', '__')}.json",
        dataset=run_settings.dp_dataset, epsilon_budget=run_settings.dp_epsilon_budget)
    wh = warehouse.get()
    inputs = ReleaseInputs(*(wh.read_table(*warehouse_location(k)) for k in (
        keys.DEID_PATIENTS, keys.CONSENT_REGISTRY, keys.DEID_OBSERVATIONS, keys.DEID_CONDITIONS)))
    try:
        release = release_statistics(
            spec, ledger, inputs, institutions=list(load_sources(run_settings.sources_file or None).codes),
            epsilon=run_settings.dp_epsilon_per_release, release_id=run_id_of(context),
            reports_dir=artifacts.folder("reports", "released_statistics"), actor=f"dagster:{run_id_of(context)}")
    except ReleaseRefused as exc:
        raise Failure(description=exc.description, metadata=exc.metadata) from exc
    schema, table = warehouse_location(keys.RELEASED_STATISTICS)
    wh.write_table(schema, table, release.frame)
    report = {"report_json": MetadataValue.path(str(release.report_path))} if release.report_path else {}
    return MaterializeResult(metadata={
        **frame_metadata(release.frame, table=f"{schema}.{table}"), "warehouse_table": f"{schema}.{table}", **report, **release.as_metadata(),
        **versions_metadata(released_statistics=spec.version),
    })


ASSETS: list[AssetsDefinition] = [released_statistics]
CHECKS: list[AssetChecksDefinition] = [
    k_anonymity_gate(asset_key, table)
    for asset_key, table in POLICY_TABLE_OF.items()
    if table in load_policy().disclosure
]
