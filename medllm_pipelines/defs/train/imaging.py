"""Train stage, imaging (issue 11 item 2): lesion segmentation (MONAI UNet/SegResNet) and lesion presence (MONAI
ResNet/DenseNet) on the curate stage's lesion images and leak-proof splits. Each materialisation is one MLflow run
in the spec's experiment; the model is registered under the spec id with alias challenger."""


import datetime as dt

from dagster import (
    AssetCheckSpec,
    AssetExecutionContext,
    AssetKey,
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

LESION_CLASSIFIER_SPEC_ID = "lesion_classifier"  # lib/curate/specs/lesion_classifier.yaml
CURATED_IMAGES = [keys.LESION_DATASET, keys.LESION_SPLITS]
IMAGES_FOLDER = ("deidentified", "images")  # where deidentify/images releases the de-identified pixel arrays




def _trained_check_spec(asset_key: AssetKey) -> AssetCheckSpec:
    return AssetCheckSpec(keys.CHECK_MODEL_TRAINED, asset=asset_key, blocking=True,  # fails with WARN: blocks nothing
                          description="A model was trained: the spec's min_rows images, and splits the task can fit "
                          "on (warns only).")


def _train_imaging(spec_id: str, asset_key: AssetKey, context: AssetExecutionContext, warehouse: WarehouseResource,
                   mlflow: MLflowResource, artifacts: ArtifactStoreResource,
                   run_settings: RunSettingsResource) -> MaterializeResult:
    from medllm_pipelines.lib.curate.dataset import join_features_with_splits
    from medllm_pipelines.lib.deidentify.withdrawal import save_membership
    from medllm_pipelines.lib.security.governance import GovernanceStore
    from medllm_pipelines.lib.train.imaging.runs import (
        imaging_data_needs,
        imaging_training_config,
        train_imaging_spec_model,
    )
    from medllm_pipelines.lib.train.runs import spec_run_tags

    spec = load_spec(spec_id)
    config = imaging_training_config(spec, run_settings.training_size)  # a bad spec is refused before any run
    # Clause 4.1.2 (row E1): no model is trained for a project without a valid ethics approval.
    approval = GovernanceStore(artifacts.folder("governance")).require_valid_approval(
        spec.project, spec.id, dt.date.today(), spec_version=spec.version)
    wh = warehouse.get()
    dataset = join_features_with_splits(wh.read_table(*warehouse_location(keys.LESION_DATASET)),
                                        wh.read_table(*warehouse_location(keys.LESION_SPLITS)), id_column="image_id")
    needs = imaging_data_needs(spec, dataset.frame, config.task)
    if not needs.met:  # the data stages succeeded: trained=false and a WARN check, which `medllm run` prints
        context.log.warning(f"{keys.asset_name(asset_key)} not trained: {needs.reason}")
        return MaterializeResult(metadata={"trained": False, "dataset_version": dataset.version, **needs.as_metadata(),
                                           **spec.as_metadata(), **versions_metadata()},
                                 check_results=[model_trained_result(needs)])
    store = artifacts.model_store()
    save_membership(store.membership_folder(), dataset.version, dataset.frame["patient_pseudonym"])  # row S5
    tags = spec_run_tags(spec, run_id_of(context), keys.asset_name(asset_key), ethics_approval=approval.id)
    with mlflow.start_run(spec.id, run_name=f"train-{run_id_of(context)[:8]}", tags=tags) as run:
        trained = train_imaging_spec_model(dataset, artifacts.folder(*IMAGES_FOLDER), spec,
                                           store.model_folder(spec.id, dataset.version), run.info.run_id,
                                           config=config, size=run_settings.training_size)
    store.write_training_record(spec.id, dataset.version, trained.record(run.info.experiment_id, run_id_of(context)))
    context.log.info(trained.summary())
    return MaterializeResult(check_results=[model_trained_result(needs)], metadata={
        **trained.as_metadata(), **needs.as_metadata(),
        "model_dir": MetadataValue.path(str(trained.result.model_dir)),
        "mlflow_experiment_id": run.info.experiment_id,
        "mlflow_run": MetadataValue.url(mlflow.run_url(run.info.experiment_id, run.info.run_id)),
        "ethics_approval": approval.id,
        **spec.as_metadata(), **versions_metadata(),
    })


@asset(
    key=keys.LESION_SEGMENTATION_MODEL,
    deps=CURATED_IMAGES,
    group_name=keys.TRAIN,
    kinds={"pytorch", "mlflow"},
    description="MONAI UNet (Lightning, Dice + cross-entropy, dictionary-transform augmentation, pos/neg crops, "
    "sliding-window inference) outlining lesions on the de-identified CT/MR slices of curate/lesion_segmentation_*; "
    "test Dice/IoU beside an intensity-threshold baseline; one MLflow run, registered as lesion_segmentation with "
    "alias challenger. Too few images or a split it cannot fit on: trained=false with the reason.",
    check_specs=[_trained_check_spec(keys.LESION_SEGMENTATION_MODEL)],
)
def lesion_segmentation_model(context: AssetExecutionContext, warehouse: WarehouseResource, mlflow: MLflowResource,
                              artifacts: ArtifactStoreResource, run_settings: RunSettingsResource) -> MaterializeResult:
    return _train_imaging(keys.LESION_SPEC_ID, keys.LESION_SEGMENTATION_MODEL, context, warehouse, mlflow, artifacts,
                          run_settings)


@asset(
    key=keys.LESION_CLASSIFIER_MODEL,
    deps=CURATED_IMAGES,
    group_name=keys.TRAIN,
    kinds={"pytorch", "mlflow"},
    description="MONAI DenseNet 2D (Lightning, augmented whole slices) scoring whether a de-identified CT/MR slice "
    "shows a lesion, on the lesion_segmentation splits; test ROC-AUC, accuracy, sensitivity, specificity beside an "
    "intensity-threshold baseline; one MLflow run, registered as lesion_classifier with alias challenger.",
    check_specs=[_trained_check_spec(keys.LESION_CLASSIFIER_MODEL)],
)
def lesion_classifier_model(context: AssetExecutionContext, warehouse: WarehouseResource, mlflow: MLflowResource,
                            artifacts: ArtifactStoreResource, run_settings: RunSettingsResource) -> MaterializeResult:
    return _train_imaging(LESION_CLASSIFIER_SPEC_ID, keys.LESION_CLASSIFIER_MODEL, context, warehouse, mlflow,
                          artifacts, run_settings)


ASSETS = [lesion_segmentation_model, lesion_classifier_model]
