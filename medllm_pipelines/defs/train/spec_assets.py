"""What every spec-trained text asset does around its training: ethics approval, data needs, membership, one
MLflow run, the training record, the metadata. The assets (``text.triage_model``, ``entities.entity_model``,
``notes.note_generator``) differ only in their dataset keys and the training function they pass.
"""
# No `from __future__ import annotations` here, as in every defs module.

import datetime as dt
from collections.abc import Callable
from typing import Any

from dagster import AssetCheckSpec, AssetExecutionContext, AssetKey, MaterializeResult, MetadataValue

from medllm_pipelines.defs import keys
from medllm_pipelines.defs.checks import model_trained_result
from medllm_pipelines.defs.keys import warehouse_location
from medllm_pipelines.defs.metadata import run_id_of, versions_metadata
from medllm_pipelines.resources.artifacts import ArtifactStoreResource
from medllm_pipelines.resources.mlflow import MLflowResource
from medllm_pipelines.resources.warehouse import WarehouseResource

# train(dataset, model_dir, mlflow_run_id) -> a trained result with record(), summary(), as_metadata(), result.model_dir
TrainFunction = Callable[[Any, Any, str], Any]


def model_trained_check_spec(asset_key: AssetKey) -> AssetCheckSpec:
    return AssetCheckSpec(keys.CHECK_MODEL_TRAINED, asset=asset_key, blocking=True,
                          description="A model was trained: the dataset holds the spec's min_rows (warns only).")


def train_text_spec_asset(context: AssetExecutionContext, spec, asset_key: AssetKey, dataset_key: AssetKey,
                          splits_key: AssetKey, warehouse: WarehouseResource, mlflow: MLflowResource,
                          artifacts: ArtifactStoreResource, train: TrainFunction) -> MaterializeResult:
    """Approval (row E1) -> dataset of ``dataset_key`` joined with ``splits_key`` -> ``train`` in one MLflow run."""
    from medllm_pipelines.lib.curate.dataset import join_features_with_splits
    from medllm_pipelines.lib.deidentify.withdrawal import save_membership
    from medllm_pipelines.lib.security.governance import GovernanceStore
    from medllm_pipelines.lib.train.runs import spec_run_tags

    approval = GovernanceStore(artifacts.folder("governance")).require_valid_approval(
        spec.project, spec.id, dt.date.today(), spec_version=spec.version)
    wh = warehouse.get()
    dataset = join_features_with_splits(wh.read_table(*warehouse_location(dataset_key)),
                                        wh.read_table(*warehouse_location(splits_key)), id_column="text_id")
    needs = spec.needs_met_by(len(dataset.frame))
    if not needs.met:
        context.log.warning(f"{keys.asset_name(asset_key)} not trained: {needs.reason}")
        return MaterializeResult(metadata={"trained": False, "dataset_version": dataset.version, **needs.as_metadata(),
                                           **spec.as_metadata(), **versions_metadata()},
                                 check_results=[model_trained_result(needs)])
    store = artifacts.model_store()
    save_membership(store.membership_folder(), dataset.version, dataset.frame["patient_pseudonym"])  # row S5
    tags = spec_run_tags(spec, run_id_of(context), keys.asset_name(asset_key), ethics_approval=approval.id)
    with mlflow.start_run(spec.id, run_name=f"train-{run_id_of(context)[:8]}", tags=tags) as run:
        trained = train(dataset, store.model_folder(spec.id, dataset.version), run.info.run_id)
    store.write_training_record(spec.id, dataset.version, trained.record(run.info.experiment_id, run_id_of(context)))
    context.log.info(trained.summary())
    return MaterializeResult(
        check_results=[model_trained_result(needs)],
        metadata={**trained.as_metadata(), **needs.as_metadata(),
                  "model_dir": MetadataValue.path(str(trained.result.model_dir)),
                  "mlflow_experiment_id": run.info.experiment_id,
                  "mlflow_run": MetadataValue.url(mlflow.run_url(run.info.experiment_id, run.info.run_id)),
                  "ethics_approval": approval.id, **spec.as_metadata(), **versions_metadata()},
    )
