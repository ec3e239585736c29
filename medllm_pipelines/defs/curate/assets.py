"""Curate stage: the dataset a model spec asks for, leak-proof splits, preprocessing, classification, cards.

Clauses 5.1.3.2, 5.1.4.3, 5.2.1.1-2 (rows D9, D11, M1, M2). Every split has a
blocking check that no patient, study or near-duplicate record crosses
splits; preprocessing is fitted on the training split only and saved with
the dataset version; every labelled set and split gets a versioned card,
collected in ``curate.dataset_catalog`` (``medllm datasets``).
"""


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
from medllm_pipelines.defs.keys import asset_name, warehouse_location
from medllm_pipelines.defs.metadata import counts_by, frame_metadata, versions_metadata
from medllm_pipelines.lib.curate.dataset import join_features_with_splits, read_split_dataset
from medllm_pipelines.lib.curate.features import build_features
from medllm_pipelines.lib.curate.spec import load_spec
from medllm_pipelines.lib.curate.splits import NEAR_DUPLICATE_KEY
from medllm_pipelines.resources.artifacts import ArtifactStoreResource
from medllm_pipelines.resources.warehouse import WarehouseResource

CLASSIFICATION_SEED = 20240603
# Keys whose values must never be found in two splits, per split table.
LEAKAGE_KEYS = {
    keys.DIABETES_SPLITS: ("patient_pseudonym", NEAR_DUPLICATE_KEY),
    keys.LESION_SPLITS: ("patient_pseudonym", "study_key", NEAR_DUPLICATE_KEY, "image_id"),
}


def _table(key: AssetKey) -> str:
    """``<schema>.<table>`` of an asset: the data dictionary's per-table meanings apply."""
    return ".".join(warehouse_location(key))


def _spec_metadata(spec) -> dict:
    return {**spec.as_metadata(), "model_spec_declaration": MetadataValue.json(spec.describe())}


@asset(
    key=keys.DIABETES_FEATURES,
    deps=[keys.DIABETES_LABELS, keys.DEID_PATIENTS, keys.DEID_OBSERVATIONS],
    group_name=keys.CURATE,
    kinds={"python", "duckdb"},
)
def diabetes_features(context: AssetExecutionContext, warehouse: WarehouseResource) -> MaterializeResult:
    """One row per labelled person: age (band midpoint), sex, median vitals and labs in canonical units."""
    wh = warehouse.get()
    spec = load_spec(keys.DIABETES_SPEC_ID)
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
            **frame_metadata(frame, table=_table(keys.DIABETES_FEATURES)),
            "records_in": len(labels),
            "records_out": len(frame),
            "reconciled": len(labels) == len(frame),
            "missing_values_per_feature": MetadataValue.json(missing),
            "missing_value_policy": "declared policy (lib/quality/missing_values.yaml) then the spec's median, fitted on "
            "the training split only (curate/diabetes_preprocessing)",
            "rows_by_label": counts_by(frame, "label"),
            **_spec_metadata(spec),
            **versions_metadata(),
        }
    )


@asset(key=keys.DIABETES_SPLITS, deps=[keys.DIABETES_FEATURES], group_name=keys.CURATE, kinds={"python", "duckdb"})
def diabetes_splits(context: AssetExecutionContext, warehouse: WarehouseResource) -> MaterializeResult:
    """Patient-level, label-stratified 70/15/15 split (seeded), near-duplicate feature rows kept together, k folds."""
    from medllm_pipelines.lib.curate.splits import split_persons

    wh = warehouse.get()
    spec = load_spec(keys.DIABETES_SPEC_ID)
    features = wh.read_table(*warehouse_location(keys.DIABETES_FEATURES))
    needs = spec.needs_met_by(len(features))
    if not needs.met:  # the data stages still split what there is; train/diabetes_model says it cannot train
        context.log.warning(f"{needs.reason}: splitting anyway, no model will be trained")
    outcome = split_persons(features, spec.split_config, spec.feature_columns, LEAKAGE_KEYS[keys.DIABETES_SPLITS])
    wh.write_table(*warehouse_location(keys.DIABETES_SPLITS), outcome.splits)
    return MaterializeResult(
        metadata={
            **frame_metadata(outcome.splits, table=_table(keys.DIABETES_SPLITS)),
            **outcome.as_metadata(),
            "dataset_version": join_features_with_splits(features, outcome.splits).version,
            **needs.as_metadata(),
            **_spec_metadata(spec),
            **versions_metadata(),
        }
    )


def leakage_gate(split_key: AssetKey):
    @asset_check(
        asset=split_key,
        name=keys.CHECK_NO_LEAKAGE,
        blocking=True,
        description="No patient (pseudonym, linked across institutions), study or near-duplicate record is in more "
        "than one split or fold; reports label balance per split.",
    )
    def _leakage_gate(context: AssetCheckExecutionContext, warehouse: WarehouseResource) -> AssetCheckResult:
        from medllm_pipelines.lib.curate.splits import check_leakage

        splits = warehouse.get().read_table(*warehouse_location(split_key))
        report = check_leakage(splits, LEAKAGE_KEYS[split_key], label="label" if "label" in splits.columns else "lesion")
        return AssetCheckResult(passed=report.passed, severity=AssetCheckSeverity.ERROR, description=report.verdict,
                                metadata=report.check_metadata())

    return _leakage_gate


@asset(
    key=keys.DIABETES_PREPROCESSING,
    deps=[keys.DIABETES_FEATURES, keys.DIABETES_SPLITS],
    group_name=keys.CURATE,
    kinds={"python", "sklearn"},
    description="The spec's preprocessing (declared missing-value policy, imputation, z-score/min-max, one-hot, feature "
    "selection, PCA) fitted on the training split only, saved with the dataset version; training, the baseline, "
    "evaluation and serving load it and apply it unchanged.",
)
def diabetes_preprocessing(
    context: AssetExecutionContext, warehouse: WarehouseResource, artifacts: ArtifactStoreResource
) -> MaterializeResult:
    from medllm_pipelines.lib.curate.preprocessing import fit_preprocessing, save_preprocessing

    spec = load_spec(keys.DIABETES_SPEC_ID)
    dataset = read_split_dataset(warehouse.get(), warehouse_location(keys.DIABETES_FEATURES),
                                 warehouse_location(keys.DIABETES_SPLITS))
    needs = spec.needs_met_by(len(dataset.frame))
    if not needs.met:
        context.log.warning(f"{needs.reason}: no preprocessing fitted")
        return MaterializeResult(
            metadata={"dataset_version": dataset.version, "fitted": False, **needs.as_metadata(), **_spec_metadata(spec),
                      **versions_metadata()}
        )
    fitted = fit_preprocessing(dataset.frame, spec.preprocessing, dataset_version=dataset.version)
    paths = save_preprocessing(fitted, artifacts.model_store().preprocessing_folder(spec.id, dataset.version))
    return MaterializeResult(
        metadata={
            **fitted.as_metadata(dataset),
            **needs.as_metadata(),
            "pipeline_path": MetadataValue.path(paths["pipeline"]),
            "description_path": MetadataValue.path(paths["description"]),
            **_spec_metadata(spec),
            **versions_metadata(),
        }
    )


@asset_check(
    asset=keys.DIABETES_PREPROCESSING,
    name=keys.CHECK_PREPROCESSING_TRAIN_ONLY,
    blocking=True,
    description="The saved preprocessing was fitted on exactly the training split's rows: refitting on them "
    "reproduces every fitted statistic, and the fitted-row digest is that of the training persons.",
)
def preprocessing_fitted_on_train_only(
    context: AssetCheckExecutionContext, warehouse: WarehouseResource, artifacts: ArtifactStoreResource
) -> AssetCheckResult:
    from medllm_pipelines.lib.curate.preprocessing import fit_preprocessing, ids_digest

    spec = load_spec(keys.DIABETES_SPEC_ID)
    dataset = read_split_dataset(warehouse.get(), warehouse_location(keys.DIABETES_FEATURES),
                                 warehouse_location(keys.DIABETES_SPLITS))
    needs = spec.needs_met_by(len(dataset.frame))
    if not needs.met:  # nothing was fitted or saved, so nothing can have seen a validation or test row
        return AssetCheckResult(passed=True, severity=AssetCheckSeverity.ERROR,
                                description=f"no preprocessing fitted ({needs.reason})", metadata=needs.as_metadata())
    saved = artifacts.model_store().fitted_preprocessing(spec.id, dataset.version)
    refit = fit_preprocessing(dataset.frame, spec.preprocessing, dataset_version=dataset.version)
    everything = fit_preprocessing(dataset.frame.assign(split="train"), spec.preprocessing)
    same_rows = saved.fitted_ids_sha256 == ids_digest(dataset.split("train")["patient_pseudonym"].tolist())
    same_stats = saved.fingerprint() == refit.fingerprint()
    return AssetCheckResult(
        passed=bool(same_rows and same_stats),
        severity=AssetCheckSeverity.ERROR,
        description="fitted on the training split only" if same_rows and same_stats else "saved preprocessing was not fitted on the training rows",
        metadata={
            "fitted_rows": saved.fitted_rows,
            "train_rows": len(dataset.split("train")),
            "fitted_ids_match_train": bool(same_rows),
            "refit_on_train_reproduces_statistics": bool(same_stats),
            "fit_on_all_rows_would_differ": everything.fingerprint() != refit.fingerprint(),
        },
    )


@asset(
    key=keys.DATA_CLASSIFICATION,
    deps=[keys.DEID_PATIENTS, keys.DEID_CONDITIONS, keys.DEID_OBSERVATIONS, keys.CONSENT_REGISTRY, keys.TRIAGE_LABELS],
    group_name=keys.CURATE,
    kinds={"python", "sklearn"},
    description="Every consented person classified by disease type, age band and sex; disease type from the human "
    "(accepted triage) classification, else a random forest; decision tree and random forest accuracy vs human.",
)
def data_classification(context: AssetExecutionContext, warehouse: WarehouseResource) -> MaterializeResult:
    from medllm_pipelines.lib.curate.classification import classify_consented_persons

    wh = warehouse.get()
    read = lambda key: wh.read_table(*warehouse_location(key))  # noqa: E731
    outcome = classify_consented_persons(read(keys.DEID_PATIENTS), read(keys.CONSENT_REGISTRY), read(keys.DEID_CONDITIONS),
                                         read(keys.DEID_OBSERVATIONS), read(keys.TRIAGE_LABELS), seed=CLASSIFICATION_SEED)
    wh.write_table(*warehouse_location(keys.DATA_CLASSIFICATION), outcome.frame)
    return MaterializeResult(
        metadata={
            **frame_metadata(outcome.frame, table=_table(keys.DATA_CLASSIFICATION)),
            **outcome.as_metadata(),
            "disease_type_source": counts_by(outcome.frame, "disease_type_source"),
            **versions_metadata(),
        }
    )


@asset(
    key=keys.LESION_DATASET,
    deps=[keys.LESION_MASKS, keys.DEID_IMAGES],
    group_name=keys.CURATE,
    kinds={"python", "duckdb"},
    description="What the lesion_segmentation spec asks for: de-identified pixel arrays joined to accepted masks.",
)
def lesion_segmentation_dataset(
    context: AssetExecutionContext, warehouse: WarehouseResource, artifacts: ArtifactStoreResource
) -> MaterializeResult:
    from medllm_pipelines.lib.curate.datasets_imaging import build_lesion_dataset

    wh = warehouse.get()
    spec = load_spec(keys.LESION_SPEC_ID)
    folder = artifacts.folder("deidentified", "images")
    dataset = build_lesion_dataset(wh.read_table(*warehouse_location(keys.LESION_MASKS)),
                                   wh.read_table(*warehouse_location(keys.DEID_IMAGES)),
                                   spec.dataset.get("modalities"), lambda name: np.load(folder / name))
    wh.write_table(*warehouse_location(keys.LESION_DATASET), dataset.frame)
    if len(dataset.frame) < spec.min_rows:  # the lesion models then warn (trained=false): say so, do not fail
        context.log.warning(f"spec {spec.id} needs at least {spec.min_rows} images, got {len(dataset.frame)}")
    return MaterializeResult(
        metadata={
            **frame_metadata(dataset.frame, table=_table(keys.LESION_DATASET)),
            **dataset.as_metadata(),
            "data_needs_met": len(dataset.frame) >= spec.min_rows,
            "rows_by_lesion": counts_by(dataset.frame, "lesion"),
            "rows_by_modality": counts_by(dataset.frame, "modality"),
            **_spec_metadata(spec),
            **versions_metadata(),
        }
    )


@asset(key=keys.LESION_SPLITS, deps=[keys.LESION_DATASET], group_name=keys.CURATE, kinds={"python", "duckdb"})
def lesion_segmentation_splits(context: AssetExecutionContext, warehouse: WarehouseResource) -> MaterializeResult:
    """Patient-grouped, lesion-stratified splits; slices of a study and near-identical images stay together."""
    from medllm_pipelines.lib.curate.splits import split_images

    wh = warehouse.get()
    spec = load_spec(keys.LESION_SPEC_ID)
    outcome = split_images(wh.read_table(*warehouse_location(keys.LESION_DATASET)), spec.split_config,
                           LEAKAGE_KEYS[keys.LESION_SPLITS])
    wh.write_table(*warehouse_location(keys.LESION_SPLITS), outcome.splits)
    return MaterializeResult(
        metadata={**frame_metadata(outcome.splits, table=_table(keys.LESION_SPLITS)), **outcome.as_metadata(), **_spec_metadata(spec), **versions_metadata()}
    )


# --- the catalog --------------------------------------------------------------------------------------
CATALOG_DEPS = [
    keys.DIABETES_LABELS, keys.TRIAGE_LABELS, keys.CLINICAL_ENTITIES, keys.LESION_MASKS, keys.LESION_BOXES,
    keys.DIABETES_FEATURES, keys.DIABETES_SPLITS, keys.LESION_SPLITS, keys.ADJUDICATION_QUEUE, keys.LABEL_AUDIT,
    keys.WEAK_LABEL_COMPARISON, keys.DEID_PATIENTS,
]


@asset(
    key=keys.DATASET_CATALOG,
    deps=CATALOG_DEPS,
    group_name=keys.CURATE,
    kinds={"python", "duckdb"},
    description="Every labelled set and split with its content-hash version and card (sources, consent basis, "
    "counts per class/site/sex/age band, agreement, leakage check, known defects); `medllm datasets`.",
)
def dataset_catalog(context: AssetExecutionContext, warehouse: WarehouseResource, artifacts: ArtifactStoreResource) -> MaterializeResult:
    from medllm_pipelines.lib.curate.cards import build_card_set, write_card
    from medllm_pipelines.lib.curate.catalog import CATALOG_SCHEMA, CATALOG_TABLE, catalog_frame, catalog_metadata

    wh = warehouse.get()
    optional = lambda schema, table: wh.read_table(schema, table) if wh.table_exists(schema, table) else pd.DataFrame()  # noqa: E731
    cards = build_card_set(
        {asset_name(k): wh.read_table(*warehouse_location(k)) for k in CATALOG_DEPS},
        optional(keys.LABEL, keys.LABEL_AGREEMENT_TABLE),
        optional(keys.AUDIT_SCHEMA, keys.QUARANTINE_TABLE),
        specs={asset_name(keys.DIABETES_SPLITS): load_spec(keys.DIABETES_SPEC_ID),
               asset_name(keys.LESION_SPLITS): load_spec(keys.LESION_SPEC_ID)},
        leakage_keys={asset_name(k): v for k, v in LEAKAGE_KEYS.items()},
    )
    folder = artifacts.folder("reports", "datasets")
    written = {card["name"]: write_card(card, folder) for card in cards}
    frame = catalog_frame(cards)
    wh.write_table(CATALOG_SCHEMA, CATALOG_TABLE, frame)
    return MaterializeResult(
        metadata={
            **frame_metadata(frame, table=f"{CATALOG_SCHEMA}.{CATALOG_TABLE}"),
            **catalog_metadata(cards),
            "card_paths": MetadataValue.json({name: files["json"] for name, files in written.items()}),
            **{f"card[{name}]": MetadataValue.path(files["markdown"]) for name, files in written.items()},
            **versions_metadata(),
        }
    )


ASSETS = [
    diabetes_features,
    diabetes_splits,
    diabetes_preprocessing,
    data_classification,
    lesion_segmentation_dataset,
    lesion_segmentation_splits,
    dataset_catalog,
]
CHECKS = [leakage_gate(keys.DIABETES_SPLITS), leakage_gate(keys.LESION_SPLITS), preprocessing_fitted_on_train_only]
