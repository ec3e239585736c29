"""Train stage, tabular zoo of the t2d_risk spec (issue 11 items 2, 3, 6): LightGBM, a random forest, their
ensembles with the MLP, and an Optuna study on the MLP. Every one trains on the dataset version, splits and
fitted preprocessing the MLP trains on; each materialisation is one MLflow run and registers its model(s)."""


import datetime as dt

from dagster import AssetExecutionContext, AssetKey, MaterializeResult, MetadataValue, asset

from medllm_pipelines.defs import keys
from medllm_pipelines.defs.keys import warehouse_location
from medllm_pipelines.defs.metadata import run_id_of, versions_metadata
from medllm_pipelines.lib.curate.dataset import read_split_dataset
from medllm_pipelines.lib.curate.spec import load_spec
from medllm_pipelines.lib.security.governance import GovernanceStore
from medllm_pipelines.resources.artifacts import ArtifactStoreResource
from medllm_pipelines.resources.mlflow import MLflowResource
from medllm_pipelines.resources.run_settings import RunSettingsResource
from medllm_pipelines.resources.warehouse import WarehouseResource

CURATED = [keys.DIABETES_FEATURES, keys.DIABETES_SPLITS, keys.DIABETES_PREPROCESSING]
MLP_MODEL_DIRNAME = "model"  # lib/train/tabular.MODEL_DIRNAME: where train/diabetes_model writes its model


class ZooInputs:
    """What every zoo asset reads first: the spec, its approval, the dataset version and whether it may train."""

    def __init__(self, context: AssetExecutionContext, asset_key: AssetKey, warehouse: WarehouseResource,
                 artifacts: ArtifactStoreResource, run_settings: RunSettingsResource) -> None:
        from medllm_pipelines.lib.train.zoo import load_zoo_config

        self.spec = load_spec(keys.DIABETES_SPEC_ID)
        self.zoo = load_zoo_config(self.spec.id, run_settings.training_size)  # a bad configuration fails before a run
        # Clause 4.1.2 (row E1): no model is trained for a project without a valid ethics approval.
        self.approval = GovernanceStore(artifacts.folder("governance")).require_valid_approval(
            self.spec.project, self.spec.id, dt.date.today(), spec_version=self.spec.version)
        self.dataset = read_split_dataset(warehouse.get(), warehouse_location(keys.DIABETES_FEATURES),
                                          warehouse_location(keys.DIABETES_SPLITS))
        self.needs = self.spec.needs_met_by(len(self.dataset.frame))
        self.store = artifacts.model_store()
        self.asset_name = keys.asset_name(asset_key)
        self.tags = self.spec_tags(context)
        self.run_name = f"{self.asset_name.split('/')[-1]}-{run_id_of(context)[:8]}"

    def spec_tags(self, context: AssetExecutionContext) -> dict[str, str]:
        from medllm_pipelines.lib.train.runs import spec_run_tags

        return spec_run_tags(self.spec, run_id_of(context), self.asset_name, ethics_approval=self.approval.id)

    def preprocessing(self):
        """Never a new fit here: the pipeline curate/diabetes_preprocessing fitted for this dataset version."""
        try:
            return self.store.fitted_preprocessing(self.spec.id, self.dataset.version)
        except FileNotFoundError as missing:
            raise RuntimeError(f"{missing}: materialise {keys.asset_name(keys.DIABETES_PREPROCESSING)} first") from None

    def not_trained(self, context: AssetExecutionContext) -> MaterializeResult:
        context.log.warning(f"{self.asset_name} not trained: {self.needs.reason}")
        return MaterializeResult(metadata={"trained": False, "dataset_version": self.dataset.version,
                                           **self.needs.as_metadata(), **self.zoo.as_metadata(),
                                           **self.spec.as_metadata(), **versions_metadata()})

    def result(self, trained, mlflow: MLflowResource, run) -> MaterializeResult:
        return MaterializeResult(metadata={
            **trained.as_metadata(), **self.needs.as_metadata(),
            "mlflow_experiment_id": run.info.experiment_id,
            "mlflow_run": MetadataValue.url(mlflow.run_url(run.info.experiment_id, run.info.run_id)),
            "training_size": self.zoo.size, **self.spec.as_metadata(), **versions_metadata(),
        })


def _train_tree(family: str, asset_key: AssetKey, context: AssetExecutionContext, warehouse: WarehouseResource,
                mlflow: MLflowResource, artifacts: ArtifactStoreResource,
                run_settings: RunSettingsResource) -> MaterializeResult:
    from medllm_pipelines.lib.train.gbm import train_tree_family

    inputs = ZooInputs(context, asset_key, warehouse, artifacts, run_settings)
    if not inputs.needs.met:
        return inputs.not_trained(context)
    preprocessing, variant = inputs.preprocessing(), f"{inputs.spec.id}-{family}"
    with mlflow.start_run(inputs.spec.id, run_name=inputs.run_name, tags=inputs.tags) as run:
        trained = train_tree_family(family, inputs.dataset, preprocessing, inputs.zoo,
                                    inputs.store.model_folder(variant, inputs.dataset.version), tags=inputs.tags)
    inputs.store.write_training_record(variant, inputs.dataset.version,
                                       trained.record(run.info.experiment_id, run_id_of(context)))
    context.log.info(trained.summary())
    return inputs.result(trained, mlflow, run)


@asset(
    key=keys.DIABETES_GBM_MODEL,
    deps=CURATED,
    group_name=keys.TRAIN,
    kinds={"lightgbm", "mlflow"},
    description="LightGBM gradient boosting for t2d_risk on the MLP's dataset version and fitted preprocessing, "
    "early-stopped on the validation log-loss; one MLflow run, registered as t2d_risk-gbm (alias challenger). "
    "Below the spec's min_rows: trained=false with the reason.",
)
def diabetes_gbm_model(context: AssetExecutionContext, warehouse: WarehouseResource, mlflow: MLflowResource,
                       artifacts: ArtifactStoreResource, run_settings: RunSettingsResource) -> MaterializeResult:
    return _train_tree("gbm", keys.DIABETES_GBM_MODEL, context, warehouse, mlflow, artifacts, run_settings)


@asset(
    key=keys.DIABETES_FOREST_MODEL,
    deps=CURATED,
    group_name=keys.TRAIN,
    kinds={"scikitlearn", "mlflow"},
    description="Random forest for t2d_risk on the MLP's dataset version and fitted preprocessing; one MLflow run, "
    "registered as t2d_risk-random_forest (alias challenger). Below the spec's min_rows: trained=false.",
)
def diabetes_forest_model(context: AssetExecutionContext, warehouse: WarehouseResource, mlflow: MLflowResource,
                          artifacts: ArtifactStoreResource, run_settings: RunSettingsResource) -> MaterializeResult:
    return _train_tree("random_forest", keys.DIABETES_FOREST_MODEL, context, warehouse, mlflow, artifacts, run_settings)


@asset(
    key=keys.DIABETES_ENSEMBLES,
    deps=[*CURATED, keys.DIABETES_MODEL, keys.DIABETES_GBM_MODEL, keys.DIABETES_FOREST_MODEL],
    group_name=keys.TRAIN,
    kinds={"scikitlearn", "mlflow"},
    description="Soft voting, bagging, boosting and stacking over the t2d_risk MLP, LightGBM and forest, each compared "
    "with each member on validation and test (ROC-AUC, accuracy, sensitivity, specificity, precision, F1) in one "
    "table logged to MLflow; each ensemble registered as t2d_risk-<kind> (family ensemble, alias challenger).",
)
def diabetes_ensembles(context: AssetExecutionContext, warehouse: WarehouseResource, mlflow: MLflowResource,
                       artifacts: ArtifactStoreResource, run_settings: RunSettingsResource) -> MaterializeResult:
    from medllm_pipelines.lib.train.ensembles import train_ensembles

    inputs = ZooInputs(context, keys.DIABETES_ENSEMBLES, warehouse, artifacts, run_settings)
    if not inputs.needs.met:
        return inputs.not_trained(context)
    spec_id, version = inputs.spec.id, inputs.dataset.version
    members = {"mlp": inputs.store.model_folder(spec_id, version) / MLP_MODEL_DIRNAME,
               **{family: inputs.store.model_folder(f"{spec_id}-{family}", version) / "model"
                  for family in ("gbm", "random_forest")}}
    missing = [name for name, folder in members.items() if not folder.is_dir()]
    if missing:
        raise RuntimeError(f"spec {spec_id}: no trained {', '.join(missing)} for dataset version {version[:16]}: "
                           "materialise the member models first")
    with mlflow.start_run(spec_id, run_name=inputs.run_name, tags=inputs.tags) as run:
        trained = train_ensembles(inputs.dataset, inputs.preprocessing(), inputs.zoo, members, tags=inputs.tags)
    context.log.info(trained.summary())
    return inputs.result(trained, mlflow, run)


@asset(
    key=keys.DIABETES_TUNING,
    deps=CURATED,
    group_name=keys.TRAIN,
    kinds={"optuna", "pytorch", "mlflow"},
    description="Optuna study on the t2d_risk MLP (sampler, trials and search space in lib/train/configs/"
    "t2d_risk_zoo.yaml), pruned through a Lightning callback, each trial a nested MLflow run; the best configuration "
    "retrained with its early-stopping epoch recorded and registered as t2d_risk-tuned (alias challenger).",
)
def diabetes_tuning_study(context: AssetExecutionContext, warehouse: WarehouseResource, mlflow: MLflowResource,
                          artifacts: ArtifactStoreResource, run_settings: RunSettingsResource) -> MaterializeResult:
    from medllm_pipelines.lib.train.runs import training_config
    from medllm_pipelines.lib.train.tuning import TUNED_VARIANT, tune_and_retrain

    inputs = ZooInputs(context, keys.DIABETES_TUNING, warehouse, artifacts, run_settings)
    base = training_config(inputs.spec, run_settings.training_size)  # unknown optimiser/network: before any run
    if not inputs.needs.met:
        return inputs.not_trained(context)
    variant = f"{inputs.spec.id}-{TUNED_VARIANT}"
    with mlflow.start_run(inputs.spec.id, run_name=inputs.run_name, tags=inputs.tags) as run:
        tuned = tune_and_retrain(inputs.dataset, inputs.preprocessing(), base, inputs.zoo,
                                 inputs.store.model_folder(variant, inputs.dataset.version), tags=inputs.tags)
    inputs.store.write_training_record(variant, inputs.dataset.version,
                                       tuned.record(run.info.experiment_id, run_id_of(context)))
    context.log.info(tuned.summary())
    return inputs.result(tuned, mlflow, run)


ASSETS = [diabetes_gbm_model, diabetes_forest_model, diabetes_ensembles, diabetes_tuning_study]
