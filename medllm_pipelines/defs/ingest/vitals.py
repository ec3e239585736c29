"""Ingest: bedside vital signs (FHIR Bulk NDJSON under <institution>/vitals/) into one raw-zone table of
stay-hours, one encrypted partition per institution as every ingest asset."""
# No `from __future__ import annotations` here: Dagster reads the asset functions' annotations.

from collections.abc import Iterator

from dagster import AssetExecutionContext, BackfillPolicy, MaterializeResult, asset

from medllm_pipelines.defs import keys
from medllm_pipelines.defs.audit_tables import record_file_outcomes, record_quarantine
from medllm_pipelines.defs.ingest.partitions import INSTITUTION_PARTITIONS
from medllm_pipelines.defs.ingest.results import partition_results
from medllm_pipelines.defs.keys import asset_name, raw_table_name
from medllm_pipelines.defs.metadata import versions_metadata
from medllm_pipelines.lib.ingest.intake import stored_objects
from medllm_pipelines.lib.ingest.landing import FHIR_VITALS
from medllm_pipelines.lib.ingest.vitals import VitalsFeed, parse_vitals_object, stay_hours
from medllm_pipelines.resources.raw_zone import RawZoneResource
from medllm_pipelines.resources.warehouse import WarehouseResource


@asset(
    key=keys.RAW_VITAL_SIGNS,
    deps=[keys.LANDED_FILES, keys.RAW_ENCOUNTERS],
    group_name=keys.INGEST,
    kinds={"python", "fhir"},
    partitions_def=INSTITUTION_PARTITIONS,
    backfill_policy=BackfillPolicy.single_run(),
    description=(
        "Hourly vital signs of inpatient stays (heart and respiratory rate, SpO2, temperature, systolic BP, ACVPU) "
        "and ICU admissions, from the institution's vitals NDJSON (FHIR R4, validated as the main feed is): one "
        "row per stay and hour since admission, in the encrypted raw zone (identifiable: keys and instants)."
    ),
)
def raw_vital_signs(context: AssetExecutionContext, raw_zone: RawZoneResource,
                    warehouse: WarehouseResource) -> Iterator[MaterializeResult]:
    zone, wh = raw_zone.get(), warehouse.get()
    name, encounters = raw_table_name(keys.RAW_VITAL_SIGNS), raw_table_name(keys.RAW_ENCOUNTERS)
    by_partition = {}
    for partition in context.partition_keys:
        feed = VitalsFeed(asset=asset_name(keys.RAW_VITAL_SIGNS))
        objects = stored_objects(wh, (FHIR_VITALS,), institution=partition)
        for row in objects.itertuples(index=False):
            with zone.stream_object(row.content_sha256) as chunks:
                parse_vitals_object(feed, chunks, institution=row.institution, source_object=row.content_sha256)
        hours = stay_hours(feed, zone.read_partition(encounters, partition)
                           if partition in zone.partitions(encounters) else None)
        zone.write_partition(name, partition, hours)
        held = record_quarantine(wh, keys.RAW_VITAL_SIGNS, feed.quarantine, partition)
        record_file_outcomes(wh, feed.outcomes, partition)
        by_partition[partition] = {"files": len(objects), **feed.as_metadata(hours), **held}
    yield from partition_results(context, {keys.RAW_VITAL_SIGNS: by_partition}, {
        "partitions_in_run": list(context.partition_keys),
        "storage": "raw zone (envelope-encrypted Parquet, one file per institution)", **versions_metadata()})


ASSETS = [raw_vital_signs]
