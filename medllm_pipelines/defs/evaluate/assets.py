"""Evaluate stage: held-out metrics next to a declared baseline, as a report asset."""


from dagster import AssetExecutionContext, MaterializeResult, MetadataValue, asset

from medllm_pipelines.defs import keys
from medllm_pipelines.defs.keys import warehouse_location
from medllm_pipelines.defs.metadata import package_versions, run_id_of, versions_metadata
from medllm_pipelines.lib.curate.dataset import read_split_dataset
from medllm_pipelines.lib.curate.spec import load_spec
from medllm_pipelines.resources.artifacts import ArtifactStoreResource
from medllm_pipelines.resources.mlflow import MLflowResource
from medllm_pipelines.resources.warehouse import WarehouseResource


@asset(
    key=keys.DIABETES_EVALUATION,
    deps=[keys.DIABETES_MODEL, keys.DIABETES_SPLITS],
    group_name=keys.EVALUATE,
    kinds={"html", "mlflow"},
    description=(
        "Accuracy, sensitivity, specificity, precision, F1 and ROC-AUC (bootstrap CI) on the held-out test split, "
        "model vs logistic-regression baseline on the same (curate-stage) preprocessing; HTML + JSON report, "
        "logged to MLflow with the report as artifacts."
    ),
)
def diabetes_evaluation_report(
    context: AssetExecutionContext,
    warehouse: WarehouseResource,
    mlflow: MLflowResource,
    artifacts: ArtifactStoreResource,
) -> MaterializeResult:
    from medllm_pipelines.lib.evaluate.runs import evaluate_spec_model, log_evaluation
    from medllm_pipelines.lib.train.runs import spec_run_tags

    spec = load_spec(keys.DIABETES_SPEC_ID)
    dataset = read_split_dataset(warehouse.get(), warehouse_location(keys.DIABETES_FEATURES),
                                 warehouse_location(keys.DIABETES_SPLITS))
    needs = spec.needs_met_by(len(dataset.frame))
    if not needs.met:  # train/diabetes_model trained nothing on this dataset version: nothing to evaluate
        context.log.warning(f"evaluate/diabetes_evaluation_report: no model to evaluate ({needs.reason})")
        return MaterializeResult(
            metadata={"evaluated": False, "dataset_version": dataset.version, **needs.as_metadata(), **versions_metadata()}
        )
    store = artifacts.model_store()
    record = store.training_record(spec.id, dataset.version)
    if record is None:
        raise RuntimeError(f"no model trained on dataset version {dataset.version[:16]}; materialise train/diabetes_model first")
    dagster_run = run_id_of(context)
    tags = spec_run_tags(spec, dagster_run, keys.asset_name(keys.DIABETES_EVALUATION),
                         training_run_id=str(record["mlflow_run_id"]), dataset_version=dataset.version)
    with mlflow.start_run(spec.id, run_name=f"evaluate-{dagster_run[:8]}", tags=tags) as run:
        trace = {"run_ids": {"training": str(record["mlflow_run_id"]), "evaluation": run.info.run_id, "dagster": dagster_run},
                 "code_version": tags["code_version"], "package_versions": package_versions()}
        result = evaluate_spec_model(dataset, store.fitted_preprocessing(spec.id, dataset.version), record, spec,
                                     artifacts.folder("reports", spec.id, dagster_run), trace)
        log_evaluation(result)
    context.log.info(result.summary())
    training_run = mlflow.run_url(str(record["mlflow_experiment_id"]), str(record["mlflow_run_id"]))
    return MaterializeResult(
        metadata={
            **result.as_metadata(),
            "report_html": MetadataValue.path(str(result.html_path)),
            "report_json": MetadataValue.path(str(result.json_path)),
            "training_mlflow_run": MetadataValue.url(training_run),
            "mlflow_run_id": run.info.run_id,
            "mlflow_run": MetadataValue.url(mlflow.run_url(run.info.experiment_id, run.info.run_id)),
            **spec.as_metadata(),
            **versions_metadata(),
        }
    )


ASSETS = [diabetes_evaluation_report]
