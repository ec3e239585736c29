"""De-identification of the hourly vital signs: pseudonym, stay number and hours since admission, no dates."""
# No `from __future__ import annotations` here: Dagster reads the asset functions' annotations.

from dagster import AssetExecutionContext, MaterializeResult, asset

from medllm_pipelines.defs import keys
from medllm_pipelines.defs.checks import identifier_leak_gate
from medllm_pipelines.defs.deidentify.storage import read_person_index, read_withheld_registrations, write_deidentified
from medllm_pipelines.defs.keys import raw_table_name
from medllm_pipelines.defs.metadata import counts_by, versions_metadata
from medllm_pipelines.lib.deidentify.policy import load_policy
from medllm_pipelines.lib.deidentify.tables import deidentify_person_table
from medllm_pipelines.resources.raw_zone import RawZoneResource
from medllm_pipelines.resources.run_settings import RunSettingsResource
from medllm_pipelines.resources.warehouse import WarehouseResource


@asset(
    key=keys.DEID_VITAL_SIGNS,
    deps=[keys.RAW_VITAL_SIGNS, keys.PSEUDONYM_MAP, keys.DEID_PATIENTS],
    group_name=keys.DEIDENTIFY,
    kinds={"python", "duckdb"},
)
def deidentified_vital_signs(context: AssetExecutionContext, raw_zone: RawZoneResource, warehouse: WarehouseResource,
                             run_settings: RunSettingsResource) -> MaterializeResult:
    """Hourly vitals keyed by pseudonym and stay number, timed by hours since admission (policy table
    ``vital_signs``): the encounter key and every instant stay behind in the raw zone."""
    zone = raw_zone.get()
    hours = zone.read_partitions(raw_table_name(keys.RAW_VITAL_SIGNS))
    released = deidentify_person_table(
        "vital_signs", hours, read_person_index(zone), load_policy(purpose=run_settings.purpose),
        read_withheld_registrations(zone), k=run_settings.k_anonymity_k, l=run_settings.l_diversity_l)
    stays = released.frame.drop_duplicates(["patient_pseudonym", "institution", "stay_number"])
    return MaterializeResult(metadata={
        **write_deidentified(warehouse, keys.DEID_VITAL_SIGNS, released.frame),
        **released.as_metadata(),
        "stays": len(stays),
        "rows_by_institution": counts_by(released.frame, "institution"),
        **versions_metadata(),
    })


ASSETS = [deidentified_vital_signs]
CHECKS = [identifier_leak_gate(keys.DEID_VITAL_SIGNS)]
