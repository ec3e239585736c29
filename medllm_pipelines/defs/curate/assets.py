"""Curate stage: the dataset a model spec asks for, and leak-proof splits."""


from dagster import (
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetCheckSeverity,
    AssetExecutionContext,
    MaterializeResult,
    MetadataValue,
    asset,
    asset_check,
)

from medllm_pipelines.defs import keys
from medllm_pipelines.defs.common import counts_by, frame_metadata, versions_metadata, warehouse_location
from medllm_pipelines.defs.label.assets import SPEC_ID
from medllm_pipelines.lib.curate.features import build_features
from medllm_pipelines.lib.curate.spec import load_spec
from medllm_pipelines.lib.curate.splits import assign_splits, check_no_patient_leakage
from medllm_pipelines.resources.warehouse import WarehouseResource


@asset(
    key=keys.DIABETES_FEATURES,
    deps=[keys.DIABETES_LABELS, keys.DEID_PATIENTS, keys.DEID_OBSERVATIONS],
    group_name=keys.CURATE,
    kinds={"python", "duckdb"},
)
def diabetes_features(context: AssetExecutionContext, warehouse: WarehouseResource) -> MaterializeResult:
    """One row per labelled person: age (band midpoint), sex, median vitals and labs in canonical units."""
    wh = warehouse.get()
    spec = load_spec(SPEC_ID)
    labels = wh.read_table(*warehouse_location(keys.DIABETES_LABELS))
    frame = build_features(
        labels,
        wh.read_table(*warehouse_location(keys.DEID_PATIENTS)),
        wh.read_table(*warehouse_location(keys.DEID_OBSERVATIONS)),
        spec,
    )
    wh.write_table(*warehouse_location(keys.DIABETES_FEATURES), frame)
    missing = {c: int(frame[c].isna().sum()) for c in spec.numeric_features}
    return MaterializeResult(
        metadata={
            **frame_metadata(frame),
            "records_in": len(labels),
            "records_out": len(frame),
            "reconciled": len(labels) == len(frame),
            "missing_values_per_feature": MetadataValue.json(missing),
            "missing_value_policy": "median imputation fitted on the training split only (in the model pipeline)",
            "rows_by_label": counts_by(frame, "label"),
            **spec.as_metadata(),
            **versions_metadata(),
        }
    )


@asset(key=keys.DIABETES_SPLITS, deps=[keys.DIABETES_FEATURES], group_name=keys.CURATE, kinds={"python", "duckdb"})
def diabetes_splits(context: AssetExecutionContext, warehouse: WarehouseResource) -> MaterializeResult:
    """Patient-level, label-stratified train/validation/test split (70/15/15 by default, seeded)."""
    wh = warehouse.get()
    spec = load_spec(SPEC_ID)
    features = wh.read_table(*warehouse_location(keys.DIABETES_FEATURES))
    if len(features) < spec.min_rows:
        raise ValueError(f"spec {spec.id} needs at least {spec.min_rows} labelled persons, got {len(features)}")
    splits = assign_splits(features, spec.split_ratios, spec.split_seed)
    wh.write_table(*warehouse_location(keys.DIABETES_SPLITS), splits)
    report = check_no_patient_leakage(splits)
    return MaterializeResult(
        metadata={
            **frame_metadata(splits),
            "records_in": len(features),
            "records_out": len(splits),
            "reconciled": len(features) == len(splits),
            "split_ratios": MetadataValue.json(dict(zip(("train", "validation", "test"), spec.split_ratios, strict=True))),
            "split_seed": spec.split_seed,
            "rows_per_split": MetadataValue.json(report.rows_per_split),
            "positives_per_split": MetadataValue.json(report.positives_per_split),
            **spec.as_metadata(),
            **versions_metadata(),
        }
    )


@asset_check(
    asset=keys.DIABETES_SPLITS,
    name=keys.CHECK_NO_LEAKAGE,
    blocking=True,
    description="Every person (pseudonym, linked across institutions) is in exactly one split.",
)
def no_patient_in_two_splits(context: AssetCheckExecutionContext, warehouse: WarehouseResource) -> AssetCheckResult:
    splits = warehouse.get().read_table(*warehouse_location(keys.DIABETES_SPLITS))
    report = check_no_patient_leakage(splits)
    return AssetCheckResult(
        passed=report.passed,
        severity=AssetCheckSeverity.ERROR,
        description=f"{report.persons_in_several_splits} of {report.persons} persons appear in more than one split",
        metadata={
            "persons": report.persons,
            "persons_in_several_splits": report.persons_in_several_splits,
            "rows_per_split": MetadataValue.json(report.rows_per_split),
            "positives_per_split": MetadataValue.json(report.positives_per_split),
        },
    )


ASSETS = [diabetes_features, diabetes_splits]
CHECKS = [no_patient_in_two_splits]
