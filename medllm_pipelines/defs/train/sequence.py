"""Train stage, sequences: the LSTM/GRU early-warning model of the deterioration spec, next to NEWS2 and the
synthetic generator's optimum, and the next-hour heart-rate forecast (row V2) on the same stays; one MLflow run per
materialisation each, registered under the spec id @challenger."""
# No `from __future__ import annotations` here: Dagster reads the asset functions' annotations.

import datetime as dt

from dagster import (
    AssetCheckSpec,
    AssetExecutionContext,
    MaterializeResult,
    MetadataValue,
    asset,
)

from medllm_pipelines.defs import keys
from medllm_pipelines.defs.checks import model_trained_result
from medllm_pipelines.defs.keys import warehouse_location
from medllm_pipelines.defs.metadata import run_id_of, versions_metadata
from medllm_pipelines.lib.curate.spec import load_spec
from medllm_pipelines.resources.artifacts import ArtifactStoreResource
from medllm_pipelines.resources.mlflow import MLflowResource
from medllm_pipelines.resources.run_settings import RunSettingsResource
from medllm_pipelines.resources.warehouse import WarehouseResource




def _train(context: AssetExecutionContext, spec_id: str, asset_key, dataset_key, warehouse: WarehouseResource,
           mlflow: MLflowResource, artifacts: ArtifactStoreResource,
           run_settings: RunSettingsResource) -> MaterializeResult:
    """The body both sequence models share: refuse a bad spec before any run, approval, min_rows, one MLflow run."""
    from medllm_pipelines.lib.common.records import frame_content_hash
    from medllm_pipelines.lib.curate.dataset import SplitDataset
    from medllm_pipelines.lib.curate.sequences import windows_with_splits
    from medllm_pipelines.lib.deidentify.withdrawal import save_membership
    from medllm_pipelines.lib.security.governance import GovernanceStore
    from medllm_pipelines.lib.train.runs import spec_run_tags
    from medllm_pipelines.lib.train.sequence.runs import sequence_training_config, train_sequence_spec_model

    spec = load_spec(spec_id)
    config = sequence_training_config(spec, run_settings.training_size)  # a bad spec is refused before any run
    approval = GovernanceStore(artifacts.folder("governance")).require_valid_approval(
        spec.project, spec.id, dt.date.today(), spec_version=spec.version)
    wh = warehouse.get()
    frame = windows_with_splits(wh.read_table(*warehouse_location(dataset_key)),
                                wh.read_table(*warehouse_location(keys.DETERIORATION_SPLITS)))
    dataset = SplitDataset(frame, frame_content_hash(frame))
    needs = spec.needs_met_by(len(frame))
    if not needs.met:
        context.log.warning(f"{keys.asset_name(asset_key)} not trained: {needs.reason}")
        return MaterializeResult(metadata={"trained": False, "dataset_version": dataset.version, **needs.as_metadata(),
                                           **spec.as_metadata(), **versions_metadata()},
                                 check_results=[model_trained_result(needs)])
    store = artifacts.model_store()
    save_membership(store.membership_folder(), dataset.version, frame["patient_pseudonym"])  # row S5
    tags = spec_run_tags(spec, run_id_of(context), keys.asset_name(asset_key), ethics_approval=approval.id)
    with mlflow.start_run(spec.id, run_name=f"train-{run_id_of(context)[:8]}", tags=tags) as run:
        trained = train_sequence_spec_model(wh.read_table(*warehouse_location(keys.DEID_VITAL_SIGNS)), dataset, spec,
                                            store.model_folder(spec.id, dataset.version), run.info.run_id,
                                            config=config, size=run_settings.training_size)
    store.write_training_record(spec.id, dataset.version, trained.record(run.info.experiment_id, run_id_of(context)))
    context.log.info(trained.summary())
    return MaterializeResult(
        check_results=[model_trained_result(needs)],
        metadata={
            **trained.as_metadata(), **needs.as_metadata(),
            "model_dir": MetadataValue.path(str(trained.result.model_dir)),
            "mlflow_experiment_id": run.info.experiment_id,
            "mlflow_run": MetadataValue.url(mlflow.run_url(run.info.experiment_id, run.info.run_id)),
            "ethics_approval": approval.id,
            **spec.as_metadata(), **versions_metadata(),
        },
    )


@asset(
    key=keys.DETERIORATION_MODEL,
    deps=[keys.DEID_VITAL_SIGNS, keys.DETERIORATION_DATASET, keys.DETERIORATION_SPLITS],
    group_name=keys.TRAIN,
    kinds={"pytorch", "mlflow"},
    description="LSTM (or GRU, per the spec) over the last hours of de-identified vitals: risk of ICU admission "
    "within the spec's horizon. Test ROC-AUC next to NEWS2 and the synthetic generator's Bayes-optimal risk; one "
    "MLflow run, registered as deterioration with alias challenger.",
    check_specs=[AssetCheckSpec(keys.CHECK_MODEL_TRAINED, asset=keys.DETERIORATION_MODEL, blocking=True,
                                description="A model was trained: the dataset holds min_rows (warns only).")],
)
def deterioration_model(context: AssetExecutionContext, warehouse: WarehouseResource, mlflow: MLflowResource,
                        artifacts: ArtifactStoreResource, run_settings: RunSettingsResource) -> MaterializeResult:
    return _train(context, keys.DETERIORATION_SPEC_ID, keys.DETERIORATION_MODEL, keys.DETERIORATION_DATASET,
                  warehouse, mlflow, artifacts, run_settings)


@asset(
    key=keys.FORECAST_MODEL,
    deps=[keys.DEID_VITAL_SIGNS, keys.FORECAST_DATASET, keys.DETERIORATION_SPLITS],
    group_name=keys.TRAIN,
    kinds={"pytorch", "mlflow"},
    description="Row V2: LSTM forecast of the next hour's heart rate from the same windows and stays; test MSE, MAE, "
    "RMSE and R^2 against the training mean and the last value carried forward; one MLflow run, registered as "
    "vitals_forecast with alias challenger.",
    check_specs=[AssetCheckSpec(keys.CHECK_MODEL_TRAINED, asset=keys.FORECAST_MODEL, blocking=True,
                                description="A model was trained: the dataset holds min_rows (warns only).")],
)
def vitals_forecast_model(context: AssetExecutionContext, warehouse: WarehouseResource, mlflow: MLflowResource,
                          artifacts: ArtifactStoreResource, run_settings: RunSettingsResource) -> MaterializeResult:
    return _train(context, keys.FORECAST_SPEC_ID, keys.FORECAST_MODEL, keys.FORECAST_DATASET, warehouse, mlflow,
                  artifacts, run_settings)


ASSETS = [deterioration_model, vitals_forecast_model]
