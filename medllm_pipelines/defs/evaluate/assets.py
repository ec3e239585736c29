"""Evaluate stage: held-out metrics next to a declared baseline, as a report asset."""


import datetime as dt
import json

from dagster import AssetExecutionContext, MaterializeResult, MetadataValue, asset

from medllm_pipelines.defs import keys
from medllm_pipelines.defs.metadata import package_versions, run_id_of, versions_metadata
from medllm_pipelines.lib.common.versions import code_version
from medllm_pipelines.defs.train.assets import TRAINING_RECORD, impute_declared, model_folder, training_frame
from medllm_pipelines.lib.curate.spec import load_spec
from medllm_pipelines.resources.artifacts import ArtifactStoreResource
from medllm_pipelines.resources.mlflow import MLflowResource
from medllm_pipelines.resources.warehouse import WarehouseResource

EVALUATION_SPLIT = "test"


@asset(
    key=keys.DIABETES_EVALUATION,
    deps=[keys.DIABETES_MODEL, keys.DIABETES_SPLITS],
    group_name=keys.EVALUATE,
    kinds={"html", "mlflow"},
    description=(
        "Accuracy, sensitivity, specificity, precision, F1 and ROC-AUC (bootstrap CI) on the held-out test split, "
        "model vs logistic-regression baseline; HTML + JSON report, logged to MLflow."
    ),
)
def diabetes_evaluation_report(
    context: AssetExecutionContext,
    warehouse: WarehouseResource,
    mlflow: MLflowResource,
    artifacts: ArtifactStoreResource,
) -> MaterializeResult:
    import mlflow as mlflow_api

    from medllm_pipelines.lib.evaluate.metrics import evaluate_against_baseline, fit_logistic_baseline
    from medllm_pipelines.lib.evaluate.report import build_evaluation_report, write_report
    from medllm_pipelines.lib.train.predictor import TabularPredictor

    spec = load_spec(keys.DIABETES_SPEC_ID)
    frame, dataset_version = training_frame(warehouse, spec)
    needs = spec.needs_met_by(len(frame))
    if not needs.met:  # train/diabetes_model trained nothing on this dataset version: nothing to evaluate
        context.log.warning(f"evaluate/diabetes_evaluation_report: no model to evaluate ({needs.reason})")
        return MaterializeResult(
            metadata={"evaluated": False, "dataset_version": dataset_version, **needs.as_metadata(), **versions_metadata()}
        )
    frame, _ = impute_declared(frame)  # the same declared, train-fitted imputation the model was trained with
    record = model_folder(artifacts, spec, dataset_version) / TRAINING_RECORD
    if not record.exists():
        raise RuntimeError(
            f"no model trained on dataset version {dataset_version[:16]}; materialise train/diabetes_model first"
        )
    model_meta = json.loads(record.read_text())
    train = frame[frame["split"] == "train"]
    test = frame[frame["split"] == EVALUATION_SPLIT]
    predictor = TabularPredictor.load(model_meta["model_dir"])
    baseline = fit_logistic_baseline(
        train.drop(columns=["split"]), spec.feature_columns, spec.categorical_features, "label"
    )
    evaluation = evaluate_against_baseline(
        test["label"].to_numpy(),
        predictor.predict_proba(test),
        baseline.predict_proba(test),
        threshold=predictor.threshold,
        seed=spec.split_seed,
    )
    tags = {
        "dagster_run_id": run_id_of(context),
        "dagster_asset": "/".join(keys.DIABETES_EVALUATION.path),
        "training_run_id": str(model_meta["mlflow_run_id"]),
        "model_spec": f"{spec.id}@{spec.version}",
        "dataset_version": dataset_version,
        "code_version": code_version(),
    }
    with mlflow.start_run(spec.id, run_name=f"evaluate-{run_id_of(context)[:8]}", tags=tags) as run:
        report = build_evaluation_report(
            evaluation["model_metrics"],
            evaluation["baseline_metrics"],
            evaluation["roc_points_model"],
            evaluation["roc_points_baseline"],
            {
                "generated_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                "dataset_version": dataset_version,
                "title": f"Evaluation of {spec.id} v{spec.version}",
                "model_name": f"{spec.id} (Lightning MLP)",
                "model_uri": str(model_meta["mlflow_model_uri"]),
                "run_ids": {
                    "training": str(model_meta["mlflow_run_id"]),
                    "evaluation": run.info.run_id,
                    "dagster": run_id_of(context),
                },
                "evaluation_split": EVALUATION_SPLIT,
                "split_sizes": {s: int((frame["split"] == s).sum()) for s in ("train", "validation", "test")},
                "code_version": code_version(),
                "package_versions": package_versions(),
                "threshold": predictor.threshold,
                "confidence_intervals": evaluation["confidence_intervals"],
                "baseline_description": "logistic regression (scikit-learn, C=1) on the same preprocessing, fitted on the training split",
            },
        )
        out_dir = artifacts.folder("reports", spec.id, run_id_of(context))
        json_path, html_path = write_report(report, out_dir)
        model_metrics, baseline_metrics = evaluation["model_metrics"], evaluation["baseline_metrics"]
        numeric = {
            **{f"test_{k}": float(v) for k, v in model_metrics.items() if isinstance(v, (int, float)) and v is not None},
            **{f"baseline_test_{k}": float(v) for k, v in baseline_metrics.items() if isinstance(v, (int, float)) and v is not None},
        }
        mlflow_api.log_metrics(numeric)
        mlflow_api.log_artifact(str(json_path), artifact_path="report")
        mlflow_api.log_artifact(str(html_path), artifact_path="report")
        experiment_id, run_id = run.info.experiment_id, run.info.run_id
    context.log.info(
        f"test ROC-AUC model {model_metrics.get('roc_auc')} vs baseline {baseline_metrics.get('roc_auc')}; report {html_path}"
    )
    return MaterializeResult(
        metadata={
            "report_html": MetadataValue.path(str(html_path)),
            "report_json": MetadataValue.path(str(json_path)),
            "model_roc_auc": model_metrics.get("roc_auc"),
            "baseline_roc_auc": baseline_metrics.get("roc_auc"),
            "model_metrics": MetadataValue.json(model_metrics),
            "baseline_metrics": MetadataValue.json(baseline_metrics),
            "roc_auc_ci95": MetadataValue.json(evaluation["confidence_intervals"]["model"]["roc_auc"]),
            "evaluation_split": EVALUATION_SPLIT,
            "n_test": len(test),
            "dataset_version": dataset_version,
            "training_mlflow_run": MetadataValue.url(mlflow.run_url(str(model_meta["mlflow_experiment_id"]), str(model_meta["mlflow_run_id"]))),
            "mlflow_run_id": run_id,
            "mlflow_run": MetadataValue.url(mlflow.run_url(experiment_id, run_id)),
            **spec.as_metadata(),
            **versions_metadata(),
        }
    )


ASSETS = [diabetes_evaluation_report]
