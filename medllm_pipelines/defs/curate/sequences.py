"""Curate stage, sequences: the deterioration spec's windows (one per stay-hour, NEWS2 beside) and their
patient-grouped splits (clauses 5.2.1.1-2, rows M1-M2). The splits carry a blocking leakage check."""
# No `from __future__ import annotations` here: Dagster reads the asset functions' annotations.

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    MaterializeResult,
    MetadataValue,
    asset,
)

from medllm_pipelines.defs import keys
from medllm_pipelines.defs.keys import warehouse_location
from medllm_pipelines.defs.metadata import counts_by, frame_metadata, versions_metadata
from medllm_pipelines.lib.curate.spec import load_spec
from medllm_pipelines.resources.warehouse import WarehouseResource


def _spec_metadata(spec) -> dict:
    return {**spec.as_metadata(), "model_spec_declaration": MetadataValue.json(spec.describe())}


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
    wh.write_table(*warehouse_location(keys.DETERIORATION_DATASET), dataset.frame)
    needs = spec.needs_met_by(len(dataset.frame))
    if not needs.met:
        context.log.warning(f"{needs.reason}: the dataset is built, no model will be trained")
    return MaterializeResult(metadata={
        **frame_metadata(dataset.frame, table=".".join(warehouse_location(keys.DETERIORATION_DATASET))),
        **dataset.as_metadata(), **needs.as_metadata(),
        "windows_by_news2": counts_by(dataset.frame, "news2"),
        **_spec_metadata(spec), **versions_metadata(),
    })


@asset(
    key=keys.DETERIORATION_SPLITS,
    deps=[keys.DETERIORATION_DATASET],
    group_name=keys.CURATE,
    kinds={"python", "duckdb"},
    description="Stay-level 70/15/15 split (seeded), grouped by person and stratified by ICU admission. Blocking "
    "check: no person in two splits.",
    check_specs=[AssetCheckSpec(keys.CHECK_NO_LEAKAGE, asset=keys.DETERIORATION_SPLITS, blocking=True,
                                description="No person (pseudonym) is in more than one split.")],
)
def deterioration_splits(context: AssetExecutionContext, warehouse: WarehouseResource) -> MaterializeResult:
    from medllm_pipelines.lib.curate.sequences import split_stays
    from medllm_pipelines.lib.curate.splits import check_leakage

    wh, spec = warehouse.get(), load_spec(keys.DETERIORATION_SPEC_ID)
    outcome = split_stays(wh.read_table(*warehouse_location(keys.DETERIORATION_DATASET)), spec.split_config)
    wh.write_table(*warehouse_location(keys.DETERIORATION_SPLITS), outcome.splits)
    report = check_leakage(wh.read_table(*warehouse_location(keys.DETERIORATION_SPLITS)), ("patient_pseudonym",))
    return MaterializeResult(
        metadata={**frame_metadata(outcome.splits, table=".".join(warehouse_location(keys.DETERIORATION_SPLITS))),
                  **outcome.as_metadata(), **_spec_metadata(spec), **versions_metadata()},
        check_results=[AssetCheckResult(check_name=keys.CHECK_NO_LEAKAGE, passed=report.passed,
                                        severity=AssetCheckSeverity.ERROR, description=report.verdict,
                                        metadata=report.check_metadata())],
    )


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
    wh.write_table(*warehouse_location(keys.FORECAST_DATASET), dataset.frame)
    needs = spec.needs_met_by(len(dataset.frame))
    return MaterializeResult(metadata={
        **frame_metadata(dataset.frame, table=".".join(warehouse_location(keys.FORECAST_DATASET))),
        **dataset.as_metadata(), **needs.as_metadata(), **_spec_metadata(spec), **versions_metadata(),
    })


ASSETS = [deterioration_dataset, deterioration_splits, vitals_forecast_dataset]
