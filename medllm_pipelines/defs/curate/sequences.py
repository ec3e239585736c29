"""Curate stage, sequences: the deterioration spec's windows (one per stay-hour, NEWS2 beside) and their
patient-grouped splits (clauses 5.2.1.1-2, rows M1-M2). The splits carry a blocking leakage check."""
# No `from __future__ import annotations` here: Dagster reads the asset functions' annotations.

from dagster import AssetExecutionContext, MaterializeResult, asset

from medllm_pipelines.defs import keys
from medllm_pipelines.defs.curate.spec_datasets import dataset_result, leakage_check_spec, splits_result
from medllm_pipelines.defs.keys import warehouse_location
from medllm_pipelines.defs.metadata import counts_by
from medllm_pipelines.lib.curate.spec import load_spec
from medllm_pipelines.resources.warehouse import WarehouseResource


@asset(
    key=keys.DETERIORATION_DATASET,
    deps=[keys.DEID_VITAL_SIGNS, keys.CONSENT_REGISTRY],
    group_name=keys.CURATE,
    kinds={"python", "duckdb"},
    description="What the deterioration spec asks for: one window per hour of each consented person's stay, "
    "labelled 'ICU admission within the horizon', kept when its future is observed; NEWS2 of the hour beside it.",
)
def deterioration_dataset(context: AssetExecutionContext, warehouse: WarehouseResource) -> MaterializeResult:
    from medllm_pipelines.lib.curate.sequences import build_windows, consented

    wh, spec = warehouse.get(), load_spec(keys.DETERIORATION_SPEC_ID)
    vitals = consented(wh.read_table(*warehouse_location(keys.DEID_VITAL_SIGNS)),
                       wh.read_table(*warehouse_location(keys.CONSENT_REGISTRY)),
                       spec.data_needs.get("consent", "granted"))
    dataset = build_windows(vitals, int(spec.target["horizon_hours"]))
    return dataset_result(context, wh, spec, keys.DETERIORATION_DATASET, dataset.frame, {
        **dataset.as_metadata(), "windows_by_news2": counts_by(dataset.frame, "news2")})


@asset(
    key=keys.DETERIORATION_SPLITS,
    deps=[keys.DETERIORATION_DATASET],
    group_name=keys.CURATE,
    kinds={"python", "duckdb"},
    description="Stay-level 70/15/15 split (seeded), grouped by person and stratified by ICU admission. Blocking "
    "check: no person in two splits.",
    check_specs=[leakage_check_spec(keys.DETERIORATION_SPLITS, "No person (pseudonym) is in more than one split.")],
)
def deterioration_splits(context: AssetExecutionContext, warehouse: WarehouseResource) -> MaterializeResult:
    from medllm_pipelines.lib.curate.sequences import split_stays

    wh, spec = warehouse.get(), load_spec(keys.DETERIORATION_SPEC_ID)
    outcome = split_stays(wh.read_table(*warehouse_location(keys.DETERIORATION_DATASET)), spec.split_config)
    return splits_result(wh, spec, keys.DETERIORATION_SPLITS, outcome, ("patient_pseudonym",))


@asset(
    key=keys.FORECAST_DATASET,
    deps=[keys.DEID_VITAL_SIGNS, keys.CONSENT_REGISTRY],
    group_name=keys.CURATE,
    kinds={"python", "duckdb"},
    description="Row V2's regression data: one window per hour of each consented person's stay whose next hour "
    "holds a reading of the spec's vital (the target), with the value carried forward as the naive forecast. "
    "Split by curate/deterioration_splits (the same stays).",
)
def vitals_forecast_dataset(context: AssetExecutionContext, warehouse: WarehouseResource) -> MaterializeResult:
    from medllm_pipelines.lib.curate.sequences import build_forecast_windows, consented

    wh, spec = warehouse.get(), load_spec(keys.FORECAST_SPEC_ID)
    vitals = consented(wh.read_table(*warehouse_location(keys.DEID_VITAL_SIGNS)),
                       wh.read_table(*warehouse_location(keys.CONSENT_REGISTRY)),
                       spec.data_needs.get("consent", "granted"))
    dataset = build_forecast_windows(vitals, str(spec.target["vital"]))
    return dataset_result(context, wh, spec, keys.FORECAST_DATASET, dataset.frame, dataset.as_metadata())


ASSETS = [deterioration_dataset, deterioration_splits, vitals_forecast_dataset]
