"""Train stage: a Lightning model per model spec, tracked in MLflow."""


import datetime as dt
import json
from pathlib import Path

import pandas as pd
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
from medllm_pipelines.defs.metadata import run_id_of, versions_metadata
from medllm_pipelines.lib.common.versions import code_version
from medllm_pipelines.lib.common.records import frame_content_hash
from medllm_pipelines.lib.curate.spec import ModelSpec, load_spec
from medllm_pipelines.lib.deidentify.withdrawal import load_memberships, models_needing_retraining, save_membership
from medllm_pipelines.lib.security.governance import GovernanceStore
from medllm_pipelines.resources.artifacts import ArtifactStoreResource
from medllm_pipelines.resources.mlflow import MLflowResource
from medllm_pipelines.resources.warehouse import WarehouseResource


TRAINING_RECORD = "training_run.json"
NEEDS_RETRAINING_TAG = "medllm.needs_retraining"


def membership_folder(artifacts: ArtifactStoreResource) -> Path:
    return artifacts.folder("models", "memberships")


def training_records(artifacts: ArtifactStoreResource, spec: ModelSpec) -> list[dict]:
    """Every model version trained for ``spec`` (one record per dataset version)."""
    folder = artifacts.folder("models", spec.id)
    return [json.loads(p.read_text()) for p in sorted(folder.glob(f"*/{TRAINING_RECORD}"))]


def model_folder(artifacts: ArtifactStoreResource, spec: ModelSpec, dataset_version: str) -> Path:
    """Models are filed by dataset version: the evaluation finds the model trained on exactly its data."""
    return artifacts.folder("models", spec.id, dataset_version[:16])


def training_frame(warehouse: WarehouseResource, spec: ModelSpec) -> tuple[pd.DataFrame, str]:
    """Features joined with their split; the dataset version is the content hash of exactly this frame."""
    wh = warehouse.get()
    features = wh.read_table(*warehouse_location(keys.DIABETES_FEATURES))
    splits = wh.read_table(*warehouse_location(keys.DIABETES_SPLITS))
    frame = features.merge(splits[["patient_pseudonym", "split"]], on="patient_pseudonym", how="inner")
    frame = frame.sort_values("patient_pseudonym").reset_index(drop=True)
    return frame, frame_content_hash(frame)


def impute_declared(frame: pd.DataFrame) -> tuple[pd.DataFrame, dict]:
    """Missing values per the declared per-column policy (lib/quality/missing_values.yaml, row D5),
    with statistics and imputation models fitted on the training split only."""
    from medllm_pipelines.lib.quality.imputation import apply_missing_value_policy

    result = apply_missing_value_policy(frame, reference=frame[frame["split"] == "train"])
    return result.frame, result.report()


def _trained_check(needs) -> AssetCheckResult:
    return AssetCheckResult(
        check_name=keys.CHECK_MODEL_TRAINED,
        passed=needs.met,
        severity=AssetCheckSeverity.WARN,
        description="trained" if needs.met else f"not trained: {needs.reason}",
        metadata=needs.as_metadata(),
    )


@asset(
    key=keys.DIABETES_MODEL,
    deps=[keys.DIABETES_FEATURES, keys.DIABETES_SPLITS],
    group_name=keys.TRAIN,
    kinds={"pytorch", "mlflow"},
    description="Checkpoint of the type 2 diabetes risk MLP (Lightning), with its fitted preprocessing; one MLflow run per "
    "materialisation. Below the spec's min_rows nothing is trained: metadata trained=false with the reason, and "
    "the model_trained check warns.",
    check_specs=[
        AssetCheckSpec(
            keys.CHECK_MODEL_TRAINED,
            asset=keys.DIABETES_MODEL,
            blocking=True,  # as every check here; it fails with WARN severity, which blocks nothing downstream
            description="A model was trained: the dataset holds the spec's min_rows (warns, never stops the data stages).",
        )
    ],
)
def diabetes_model(
    context: AssetExecutionContext,
    warehouse: WarehouseResource,
    mlflow: MLflowResource,
    artifacts: ArtifactStoreResource,
) -> MaterializeResult:
    from medllm_pipelines.lib.train.tabular import TrainConfig, train_tabular_classifier
    from medllm_pipelines.lib.train.tracking import log_training, make_mlflow_epoch_logger

    spec = load_spec(keys.DIABETES_SPEC_ID)
    # Clause 4.1.2 (row E1): no model is trained for a project without a valid ethics approval.
    approval = GovernanceStore(artifacts.folder("governance")).require_valid_approval(
        spec.project, spec.id, dt.date.today(), spec_version=spec.version
    )
    frame, dataset_version = training_frame(warehouse, spec)
    needs = spec.needs_met_by(len(frame))
    if not needs.met:
        # The data stages succeeded; the model could not be trained. Not a green model: trained=false, and the
        # model_trained check fails (WARN) with the reason, which `medllm run` prints. Earlier models stay on disk.
        context.log.warning(f"train/diabetes_model not trained: {needs.reason}")
        return MaterializeResult(
            metadata={"trained": False, "dataset_version": dataset_version, **needs.as_metadata(),
                      **spec.as_metadata(), **versions_metadata()},
            check_results=[_trained_check(needs)],
        )
    # Who is in this dataset version: what a later consent withdrawal is checked against (row S5).
    save_membership(membership_folder(artifacts), dataset_version, frame["patient_pseudonym"])
    frame, imputation = impute_declared(frame)
    config = TrainConfig.from_dict(spec.training)
    output_dir = model_folder(artifacts, spec, dataset_version)
    tags = {
        "ethics_approval": approval.id,
        "dagster_run_id": run_id_of(context),
        "dagster_asset": "/".join(keys.DIABETES_MODEL.path),
        "model_spec": f"{spec.id}@{spec.version}",
        "scenario": spec.scenario,
        "code_version": code_version(),
    }
    with mlflow.start_run(spec.id, run_name=f"train-{run_id_of(context)[:8]}", tags=tags) as run:
        result = train_tabular_classifier(
            frame,
            spec.feature_columns,
            spec.categorical_features,
            "label",
            config,
            output_dir,
            on_epoch_metrics=make_mlflow_epoch_logger(run.info.run_id),
        )
        logged = log_training(result, config, dataset_version, tags=tags, log_history=False)
        experiment_id = run.info.experiment_id
    record = {
        "mlflow_run_id": logged.run_id,
        "mlflow_experiment_id": experiment_id,
        "mlflow_model_uri": logged.model_uri,
        "dataset_version": dataset_version,
        "model_dir": str(result.model_dir),
        "dagster_run_id": run_id_of(context),
    }
    (output_dir / TRAINING_RECORD).write_text(json.dumps(record, indent=2))
    context.log.info(
        f"trained {spec.id}: best epoch {result.best_epoch} of {result.epochs_run}, "
        f"val ROC-AUC {result.val_metrics.get('val_roc_auc')}"
    )
    return MaterializeResult(
        check_results=[_trained_check(needs)],
        metadata={
            "trained": True,
            **needs.as_metadata(),
            "checkpoint_path": str(result.checkpoint_path),
            "model_dir": str(result.model_dir),
            "dataset_version": dataset_version,
            "mlflow_run_id": logged.run_id,
            "mlflow_experiment_id": experiment_id,
            "mlflow_run": MetadataValue.url(mlflow.run_url(experiment_id, logged.run_id)),
            "mlflow_model_uri": logged.model_uri,
            "best_epoch": result.best_epoch,
            "epochs_run": result.epochs_run,
            "stopped_early": result.stopped_early,
            "train_seconds": round(result.train_seconds, 2),
            "n_train": result.n_train,
            "n_validation": result.n_val,
            "validation_metrics": MetadataValue.json(result.val_metrics),
            "training_config": MetadataValue.json(config.to_dict()),
            "ethics_approval": MetadataValue.json(approval.as_metadata()),
            "missing_value_policy": MetadataValue.json(imputation),
            "missing_values": MetadataValue.json(result.missing_values),
            **spec.as_metadata(),
            **versions_metadata(),
        }
    )


@asset(
    key=keys.RETRAINING_REQUIRED,
    deps=[keys.CONSENT_REGISTRY, keys.DIABETES_MODEL],
    group_name=keys.TRAIN,
    kinds={"python", "mlflow"},
    description=(
        "Model versions trained on persons whose consent has since been withdrawn (clause 5.4.1.5-6): "
        "listed here and tagged in MLflow as needing retraining."
    ),
)
def retraining_required(
    context: AssetExecutionContext, warehouse: WarehouseResource, mlflow: MLflowResource, artifacts: ArtifactStoreResource
) -> MaterializeResult:
    from mlflow.tracking import MlflowClient

    spec = load_spec(keys.DIABETES_SPEC_ID)
    registry = warehouse.get().read_table(*warehouse_location(keys.CONSENT_REGISTRY))
    records = training_records(artifacts, spec)
    needs = models_needing_retraining(
        registry,
        load_memberships(membership_folder(artifacts)),
        {r["mlflow_run_id"]: r["dataset_version"] for r in records},
    )
    client = MlflowClient(tracking_uri=mlflow.tracking_uri)
    for need in needs:
        client.set_tag(need.model_version, NEEDS_RETRAINING_TAG, "true")
        client.set_tag(need.model_version, "medllm.withdrawn_members", str(need.withdrawn))
    context.log.info(f"{len(needs)} of {len(records)} model versions need retraining after consent withdrawals")
    return MaterializeResult(
        metadata={
            "model_versions_checked": len(records),
            "model_versions_needing_retraining": len(needs),
            "needing_retraining": MetadataValue.json([n.as_metadata() for n in needs]),
            "persons_withdrawn": int((registry["consent_status"] == "withdrawn").sum()),
        }
    )


ASSETS = [diabetes_model, retraining_required]
