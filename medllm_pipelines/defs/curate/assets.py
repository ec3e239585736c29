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
from medllm_pipelines.resources.artifacts import ArtifactStoreResource
from medllm_pipelines.resources.warehouse import WarehouseResource

NEAR_DUPLICATE_KEY = "near_duplicate_key"
# Keys whose values must never be found in two splits, per split table.
LEAKAGE_KEYS = {
    keys.DIABETES_SPLITS: ("patient_pseudonym", NEAR_DUPLICATE_KEY),
    keys.LESION_SPLITS: ("patient_pseudonym", "study_key", NEAR_DUPLICATE_KEY, "image_id"),
}


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
            **frame_metadata(frame),
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


def _split_metadata(splits: pd.DataFrame, report, spec, records_in: int) -> dict:
    return {
        **frame_metadata(splits),
        "records_in": records_in,
        "records_out": len(splits),
        "reconciled": records_in == len(splits),
        "split_config": MetadataValue.json(spec.split_config.as_dict()),
        "split_ratios": MetadataValue.json(dict(zip(("train", "validation", "test"), spec.split_ratios, strict=True))),
        "split_seed": spec.split_seed,
        "rows_per_split": MetadataValue.json(report.rows_per_split),
        "positives_per_split": MetadataValue.json(report.positives_per_split),
        "label_balance_per_split": MetadataValue.json(report.label_share_per_split),
        "rows_per_fold": counts_by(splits[splits["fold"] >= 0], "fold"),
        "leakage_check": MetadataValue.json(report.as_dict()),
        **_spec_metadata(spec),
        **versions_metadata(),
    }


@asset(key=keys.DIABETES_SPLITS, deps=[keys.DIABETES_FEATURES], group_name=keys.CURATE, kinds={"python", "duckdb"})
def diabetes_splits(context: AssetExecutionContext, warehouse: WarehouseResource) -> MaterializeResult:
    """Patient-level, label-stratified 70/15/15 split (seeded), near-duplicate feature rows kept together, k folds."""
    from medllm_pipelines.lib.curate.splits import (
        assign_split_rows,
        check_leakage,
        tabular_near_duplicate_key,
    )

    wh = warehouse.get()
    spec = load_spec(keys.DIABETES_SPEC_ID)
    features = wh.read_table(*warehouse_location(keys.DIABETES_FEATURES))
    needs = spec.needs_met_by(len(features))
    if not needs.met:
        # the data stages still split what there is; training says it cannot train (train/diabetes_model)
        context.log.warning(f"{needs.reason}: splitting anyway, no model will be trained")
    persons = features[["patient_pseudonym", "label"]].copy()
    persons[NEAR_DUPLICATE_KEY] = tabular_near_duplicate_key(features, spec.feature_columns)
    assigned = assign_split_rows(persons, spec.split_config)
    splits = assigned[["patient_pseudonym", "split", "label", "fold", NEAR_DUPLICATE_KEY]].sort_values("patient_pseudonym").reset_index(drop=True)
    wh.write_table(*warehouse_location(keys.DIABETES_SPLITS), splits)
    report = check_leakage(splits, LEAKAGE_KEYS[keys.DIABETES_SPLITS])
    shared = splits.dropna(subset=[NEAR_DUPLICATE_KEY]).groupby(NEAR_DUPLICATE_KEY)["patient_pseudonym"].nunique()
    return MaterializeResult(
        metadata={
            **_split_metadata(splits, report, spec, len(features)),
            "dataset_version": join_features_with_splits(features, splits).version,
            "near_duplicate_groups": int((shared > 1).sum()),
            **needs.as_metadata(),
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
        label = "label" if "label" in splits.columns else "lesion"
        report = check_leakage(splits, LEAKAGE_KEYS[split_key], label=label)
        crossing = {k: v for k, v in report.crossing_by_key.items() if v}
        return AssetCheckResult(
            passed=report.passed,
            severity=AssetCheckSeverity.ERROR,
            description=(
                f"{report.persons_in_several_splits} of {report.persons} persons appear in more than one split"
                + (f"; crossing: {crossing}" if crossing else "")
                + (f"; {report.folds_crossing} persons in several folds" if report.folds_crossing else "")
            ),
            metadata={
                "persons": report.persons,
                "persons_in_several_splits": report.persons_in_several_splits,
                "crossing_by_key": MetadataValue.json(report.crossing_by_key),
                "folds_crossing": report.folds_crossing,
                "rows_per_split": MetadataValue.json(report.rows_per_split),
                "positives_per_split": MetadataValue.json(report.positives_per_split),
                "label_balance_per_split": MetadataValue.json(report.label_share_per_split),
            },
        )

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
    shapes = {s: list(fitted.transform_array(dataset.split(s)).shape) for s in ("train", "validation", "test")}
    described = fitted.describe()
    return MaterializeResult(
        metadata={
            "dataset_version": dataset.version,
            "fitted": True,
            **needs.as_metadata(),
            "fitted_on_split": "train",
            "fitted_rows": fitted.fitted_rows,
            "fitted_ids_sha256": fitted.fitted_ids_sha256,
            "fingerprint": fitted.fingerprint(),
            "output_features": MetadataValue.json(fitted.output_features),
            "selected_features": MetadataValue.json(described.get("feature_selection", {}).get("selected", fitted.output_features)),
            "missing_values": MetadataValue.json(fitted.missing_values),
            "transformed_shape_per_split": MetadataValue.json(shapes),
            "preprocessing": MetadataValue.json(spec.preprocessing.as_dict()),
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
    from medllm_pipelines.lib.curate.classification import (
        class_counts,
        classify_persons,
    )

    wh = warehouse.get()
    patients = wh.read_table(*warehouse_location(keys.DEID_PATIENTS))
    consent = wh.read_table(*warehouse_location(keys.CONSENT_REGISTRY))
    granted = set(consent.loc[consent["consent_status"] == "granted", "patient_pseudonym"])
    persons = patients[patients["patient_pseudonym"].isin(granted)]
    conditions = wh.read_table(*warehouse_location(keys.DEID_CONDITIONS))
    observations = wh.read_table(*warehouse_location(keys.DEID_OBSERVATIONS))
    human = wh.read_table(*warehouse_location(keys.TRIAGE_LABELS))
    frame, report = classify_persons(
        persons, conditions[conditions["patient_pseudonym"].isin(granted)],
        observations[observations["patient_pseudonym"].isin(granted)], human[["item_key", "patient_pseudonym", "label"]],
        seed=20240603,
    )
    wh.write_table(*warehouse_location(keys.DATA_CLASSIFICATION), frame)
    persons_in = patients["patient_pseudonym"].nunique()
    return MaterializeResult(
        metadata={
            **frame_metadata(frame),
            "records_in": int(persons_in),
            "records_out": len(frame),
            "removed[no_granted_consent]": int(persons_in - len(frame)),
            "reconciled": int(persons_in) == len(frame) + int(persons_in - len(frame)),
            "classes": MetadataValue.json(class_counts(frame)),
            "disease_type_source": counts_by(frame, "disease_type_source"),
            "classifier_vs_human": MetadataValue.json(report.as_dict()),
            "decision_tree_accuracy": report.decision_tree_accuracy,
            "random_forest_accuracy": report.random_forest_accuracy,
            "majority_class_accuracy": report.majority_class_accuracy,
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
    from medllm_pipelines.lib.curate.splits import image_near_duplicate_key

    wh = warehouse.get()
    spec = load_spec(keys.LESION_SPEC_ID)
    masks = wh.read_table(*warehouse_location(keys.LESION_MASKS))
    images = wh.read_table(*warehouse_location(keys.DEID_IMAGES))
    wanted = spec.dataset.get("modalities")
    joined = masks.merge(images[["image_id", "modality", "pixel_file"]], on="image_id", how="left")
    no_pixels = joined["pixel_file"].isna()
    other_modality = ~joined["modality"].isin(wanted) & ~no_pixels if wanted else pd.Series(False, index=joined.index)
    frame = joined[~no_pixels & ~other_modality].copy()
    folder = artifacts.folder("deidentified", "images")
    frame[NEAR_DUPLICATE_KEY] = [image_near_duplicate_key(np.load(folder / name)) for name in frame["pixel_file"]]
    frame = frame.sort_values("image_id").reset_index(drop=True)
    wh.write_table(*warehouse_location(keys.LESION_DATASET), frame)
    removed = {"no_released_pixels": int(no_pixels.sum()), "modality_not_in_spec": int(other_modality.sum())}
    if len(frame) < spec.min_rows:
        # No model trains on this spec yet: say so loudly rather than fail the whole lifecycle.
        context.log.warning(f"spec {spec.id} needs at least {spec.min_rows} images, got {len(frame)}")
    return MaterializeResult(
        metadata={
            **frame_metadata(frame),
            "records_in": len(masks),
            "records_out": len(frame),
            **{f"removed[{k}]": v for k, v in removed.items()},
            "reconciled": len(masks) == len(frame) + sum(removed.values()),
            "data_needs_met": len(frame) >= spec.min_rows,
            "rows_by_lesion": counts_by(frame, "lesion"),
            "rows_by_modality": counts_by(frame, "modality"),
            **_spec_metadata(spec),
            **versions_metadata(),
        }
    )


@asset(key=keys.LESION_SPLITS, deps=[keys.LESION_DATASET], group_name=keys.CURATE, kinds={"python", "duckdb"})
def lesion_segmentation_splits(context: AssetExecutionContext, warehouse: WarehouseResource) -> MaterializeResult:
    """Patient-grouped, lesion-stratified splits; slices of a study and near-identical images stay together."""
    from medllm_pipelines.lib.curate.splits import assign_split_rows, check_leakage

    wh = warehouse.get()
    spec = load_spec(keys.LESION_SPEC_ID)
    dataset = wh.read_table(*warehouse_location(keys.LESION_DATASET))
    assigned = assign_split_rows(dataset, spec.split_config)
    splits = assigned[["image_id", "patient_pseudonym", "study_key", NEAR_DUPLICATE_KEY, "institution", "lesion", "split", "fold"]]
    splits = splits.sort_values("image_id").reset_index(drop=True)
    wh.write_table(*warehouse_location(keys.LESION_SPLITS), splits)
    report = check_leakage(splits, LEAKAGE_KEYS[keys.LESION_SPLITS], label="lesion")
    return MaterializeResult(metadata=_split_metadata(splits, report, spec, len(dataset)))


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
    from medllm_pipelines.lib.curate.catalog import (
        CATALOG_SCHEMA,
        CATALOG_TABLE,
        catalog_frame,
    )

    wh = warehouse.get()
    tables = {asset_name(k): wh.read_table(*warehouse_location(k)) for k in CATALOG_DEPS}
    agreement = wh.read_table(keys.LABEL, keys.LABEL_AGREEMENT_TABLE) if wh.table_exists(keys.LABEL, keys.LABEL_AGREEMENT_TABLE) else pd.DataFrame()
    quarantine = wh.read_table(keys.AUDIT_SCHEMA, keys.QUARANTINE_TABLE) if wh.table_exists(keys.AUDIT_SCHEMA, keys.QUARANTINE_TABLE) else pd.DataFrame()
    cards = build_card_set(
        tables, agreement, quarantine,
        specs={asset_name(keys.DIABETES_SPLITS): load_spec(keys.DIABETES_SPEC_ID), asset_name(keys.LESION_SPLITS): load_spec(keys.LESION_SPEC_ID)},
        leakage_keys={asset_name(k): v for k, v in LEAKAGE_KEYS.items()},
    )
    folder = artifacts.folder("reports", "datasets")
    paths = {card["name"]: write_card(card, folder)["json"] for card in cards}
    frame = catalog_frame(cards)
    wh.write_table(CATALOG_SCHEMA, CATALOG_TABLE, frame)
    summary = {
        c["name"]: {
            "kind": c["kind"], "version": c["version_short"], "rows": c["counts"]["rows"],
            "per_split": c["counts"].get("per_split"), "agreement_passed": (c.get("agreement") or {}).get("passed"),
            "leakage_passed": (c.get("leakage_check") or {}).get("passed"),
        }
        for c in cards
    }
    return MaterializeResult(
        metadata={
            **frame_metadata(frame),
            "datasets": MetadataValue.json(summary),
            "card_paths": MetadataValue.json(paths),
            "all_leakage_checks_passed": all(c["leakage_check"]["passed"] for c in cards if c.get("leakage_check")),
            "all_agreement_passed": all(c["agreement"]["passed"] for c in cards if c.get("agreement") and "passed" in c["agreement"]),
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
