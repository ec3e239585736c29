"""Evaluate stage (issue 12): one evaluation asset per spec, the public benchmarks, and the promotion gate.

Each asset reads the warehouse tables its family adapter needs, hands over to
``lib/evaluate/spec_evaluation.py`` (adapter -> engine -> report -> MLflow -> gate) inside one MLflow run of the
spec's experiment, and reports the gate as the ``promotion_gate`` check. The check is blocking and fails with WARN
severity: a model that misses its thresholds does not stop the lifecycle (the other models are still evaluated);
the gate's own effect is that ``champion`` does not move.
"""
# No `from __future__ import annotations` here, as in every defs module.

from collections.abc import Mapping

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetKey,
    MaterializeResult,
    MetadataValue,
    asset,
)

from medllm_pipelines.defs import keys
from medllm_pipelines.defs.keys import warehouse_location
from medllm_pipelines.defs.metadata import package_versions, run_id_of, versions_metadata
from medllm_pipelines.resources.artifacts import ArtifactStoreResource
from medllm_pipelines.resources.mlflow import MLflowResource
from medllm_pipelines.resources.run_settings import RunSettingsResource
from medllm_pipelines.resources.warehouse import WarehouseResource

PUBLIC_BENCHMARKS_FOLDER = ("reports", "public_benchmarks")
PUBLIC_BENCHMARKS_FILE = "section.json"
IMAGES_FOLDER = ("deidentified", "images")  # where deidentify/images releases the de-identified pixel arrays
PATIENTS = {"patients": keys.DEID_PATIENTS}


def _gate_check(asset_key: AssetKey) -> AssetCheckSpec:
    return AssetCheckSpec(keys.CHECK_PROMOTION_GATE, asset=asset_key, blocking=True,
                          description="The spec's declared thresholds hold (primary metric vs baseline, ECE, "
                          "subgroup gap, accuracy under attack, membership-inference AUC); only then is the version "
                          "aliased champion. Fails closed (WARN: the lifecycle goes on, champion stays).")


def _gate_result(passed: bool, metadata: Mapping) -> AssetCheckResult:
    return AssetCheckResult(check_name=keys.CHECK_PROMOTION_GATE, passed=passed,
                            severity=AssetCheckSeverity.WARN, metadata=dict(metadata))


def _evaluate(context: AssetExecutionContext, spec_id: str, asset_key: AssetKey, table_keys: Mapping[str, AssetKey],
              warehouse: WarehouseResource, mlflow: MLflowResource, artifacts: ArtifactStoreResource,
              run_settings: RunSettingsResource, extra_sections=None, given_sections=()) -> MaterializeResult:
    from medllm_pipelines.lib.evaluate.spec_evaluation import (
        SpecEvaluationResult,
        evaluate_prepared,
        log_and_gate,
        prepare,
    )
    from medllm_pipelines.lib.train.runs import spec_run_tags

    wh = warehouse.get()
    store = artifacts.model_store()
    prepared = prepare(spec_id, {name: wh.read_table(*warehouse_location(k)) for name, k in table_keys.items()},
                       store)
    name = keys.asset_name(asset_key)
    if not prepared.trained:
        reason = prepared.not_evaluated_reason()
        context.log.warning(f"{name}: nothing evaluated: {reason}")
        return MaterializeResult(
            metadata={"evaluated": False, "reason": reason, "dataset_version": prepared.dataset.version,
                      **versions_metadata()},
            check_results=[_gate_result(False, {"reason": reason})])
    record = prepared.record
    dagster_run = run_id_of(context)
    tags = spec_run_tags(prepared.spec, dagster_run, name, training_run_id=str(record.get("mlflow_run_id", "")),
                         dataset_version=prepared.dataset.version)
    folders = {"images": artifacts.folder(*IMAGES_FOLDER)}
    with mlflow.start_run(prepared.spec.id, run_name=f"evaluate-{dagster_run[:8]}", tags=tags) as run:
        trace = {"dataset_version": prepared.dataset.version, "spec_version": prepared.spec.version,
                 "code_version": tags["code_version"], "training_mlflow_run": record.get("mlflow_run_id"),
                 "evaluation_mlflow_run": run.info.run_id, "dagster_run": dagster_run,
                 "model_dir": record.get("model_dir"), "package_versions": package_versions()}
        evaluation, files, sections = evaluate_prepared(
            prepared, store, folders, artifacts.folder("reports", spec_id, dagster_run), trace,
            size=run_settings.training_size, extra_sections=extra_sections, given_sections=given_sections,
            seed=prepared.spec.split_seed)
        promoted = log_and_gate(evaluation, files, record, mlflow.tracking_uri)
    result = SpecEvaluationResult(evaluation, files, promoted, sections)
    context.log.info(evaluation.summary())
    gate = evaluation.gate.as_metadata()
    return MaterializeResult(
        metadata={
            **result.as_metadata(),
            "dataset_version": prepared.dataset.version,
            "report_html": MetadataValue.path(str(files.html_path)),
            "report_pdf": MetadataValue.path(str(files.pdf_path)),
            "report_json": MetadataValue.path(str(files.json_path)),
            "mlflow_run_id": run.info.run_id,
            "mlflow_run": MetadataValue.url(mlflow.run_url(run.info.experiment_id, run.info.run_id)),
            "training_mlflow_run": MetadataValue.url(mlflow.run_url(str(record.get("mlflow_experiment_id", "")),
                                                                    str(record.get("mlflow_run_id", "")))),
            **prepared.spec.as_metadata(),
            **versions_metadata(),
        },
        check_results=[_gate_result(evaluation.gate.passed, {
            "summary": evaluation.gate.summary(), "failed": gate["failed"],
            "criteria": MetadataValue.json(gate["criteria"]), "champion": promoted})],
    )


def evaluation_asset(spec_id: str, asset_key: AssetKey, model_key: AssetKey, table_keys: Mapping[str, AssetKey],
                     description: str, extra_deps=(), extra_sections=None, reads_public_benchmarks: bool = False):
    """The evaluation asset of one spec: reads ``table_keys`` (adapter table name -> asset key)."""

    @asset(key=asset_key, deps=[model_key, *table_keys.values(), *extra_deps], group_name=keys.EVALUATE,
           kinds={"html", "pdf", "mlflow"}, description=description, check_specs=[_gate_check(asset_key)])
    def _evaluation(context: AssetExecutionContext, warehouse: WarehouseResource, mlflow: MLflowResource,
                    artifacts: ArtifactStoreResource, run_settings: RunSettingsResource) -> MaterializeResult:
        given = ()
        if reads_public_benchmarks:
            from medllm_pipelines.lib.evaluate.spec_evaluation import read_section

            section = read_section(artifacts.folder(*PUBLIC_BENCHMARKS_FOLDER) / PUBLIC_BENCHMARKS_FILE)
            given = (section,) if section is not None else ()
        return _evaluate(context, spec_id, asset_key, table_keys, warehouse, mlflow, artifacts, run_settings,
                         extra_sections=extra_sections, given_sections=given)

    return _evaluation


@asset(
    key=keys.PUBLIC_BENCHMARKS,
    group_name=keys.EVALUATE,
    kinds={"python"},
    description="Public benchmarks through the project's training and evaluation code: Wisconsin Diagnostic Breast "
    "Cancer (10-fold accuracy vs 97.5 %, Street et al. 1993), diabetes progression (R^2 vs ~0.5, Efron et al. 2004), "
    "Pima Indians (Ripley's split, the T2D model path) and UCI heart disease across four sites (Detrano et al. "
    "1989); read into the T2D evaluation report. Demo size: fewer folds, seeds and epochs (the section says so).",
)
def public_benchmarks(context: AssetExecutionContext, artifacts: ArtifactStoreResource,
                      run_settings: RunSettingsResource) -> MaterializeResult:
    import json

    from medllm_pipelines.lib.common.files import write_private_atomic
    from medllm_pipelines.lib.evaluate.validation import public_benchmarks_section, run_public_benchmarks

    results = run_public_benchmarks(run_settings.training_size)
    section = public_benchmarks_section(run_settings.training_size, results)
    path = artifacts.folder(*PUBLIC_BENCHMARKS_FOLDER) / PUBLIC_BENCHMARKS_FILE
    write_private_atomic(path, json.dumps(section.as_dict(), indent=2, sort_keys=True))
    context.log.info(f"public benchmarks: {section.summary}")
    return MaterializeResult(metadata={"benchmarks": MetadataValue.json(results.as_metadata()),
                                       "summary": MetadataValue.json(section.as_dict()["summary"]),
                                       "section_json": MetadataValue.path(str(path)), **versions_metadata()})


def _tabular_sections(request):
    from medllm_pipelines.lib.evaluate.validation import cross_validation_section, external_validation_section

    return (cross_validation_section(request), external_validation_section(request))


diabetes_evaluation_report = evaluation_asset(
    keys.DIABETES_SPEC_ID, keys.DIABETES_EVALUATION, keys.DIABETES_MODEL,
    {"dataset": keys.DIABETES_FEATURES, "splits": keys.DIABETES_SPLITS, "observations": keys.DEID_OBSERVATIONS,
     **PATIENTS},
    "The T2D MLP on its test split next to the logistic-regression baseline: every metric with percentile and BCa "
    "intervals, curves, calibration, subgroups, attacks and defences, SHAP values, membership inference, k-fold "
    "cross-validation, institution-held-out validation and the public benchmarks; HTML + PDF report; gate.",
    extra_deps=[keys.DIABETES_PREPROCESSING, keys.PUBLIC_BENCHMARKS], extra_sections=_tabular_sections,
    reads_public_benchmarks=True)
lesion_classifier_evaluation = evaluation_asset(
    "lesion_classifier", keys.LESION_CLASSIFIER_EVALUATION, keys.LESION_CLASSIFIER_MODEL,
    {"dataset": keys.LESION_DATASET, "splits": keys.LESION_SPLITS, **PATIENTS},
    "The lesion-presence CNN next to the intensity-threshold baseline: metrics with intervals, curves, subgroups, "
    "FGSM/PGD with feature squeezing, image perturbations, Grad-CAM, membership inference; report; gate.",
    extra_deps=[keys.DEID_IMAGES])
lesion_segmentation_evaluation = evaluation_asset(
    keys.LESION_SPEC_ID, keys.LESION_SEGMENTATION_EVALUATION, keys.LESION_SEGMENTATION_MODEL,
    {"dataset": keys.LESION_DATASET, "splits": keys.LESION_SPLITS, **PATIENTS},
    "The lesion UNet: Dice, IoU, HD95 per image with intervals next to the threshold baseline, PGD on the Dice "
    "loss, image perturbations, subgroups, membership inference; report; gate.",
    extra_deps=[keys.DEID_IMAGES])
deterioration_evaluation = evaluation_asset(
    keys.DETERIORATION_SPEC_ID, keys.DETERIORATION_EVALUATION, keys.DETERIORATION_MODEL,
    {"dataset": keys.DETERIORATION_DATASET, "splits": keys.DETERIORATION_SPLITS, "vitals": keys.DEID_VITAL_SIGNS,
     **PATIENTS},
    "The deterioration early-warning LSTM/GRU next to NEWS2: metrics with intervals, curves, calibration, "
    "subgroups, vital-sign perturbations, early vs late windows, membership inference; report; gate.")
vitals_forecast_evaluation = evaluation_asset(
    keys.FORECAST_SPEC_ID, keys.FORECAST_EVALUATION, keys.FORECAST_MODEL,
    {"dataset": keys.FORECAST_DATASET, "splits": keys.DETERIORATION_SPLITS, "vitals": keys.DEID_VITAL_SIGNS,
     **PATIENTS},
    "The next-hour heart-rate forecast: MSE, MAE, RMSE, R^2 with intervals next to the training mean and the last "
    "value carried forward, perturbations, subgroups, membership inference; report; gate.")
triage_evaluation = evaluation_asset(
    "triage", keys.TRIAGE_EVALUATION, keys.TRIAGE_MODEL,
    {"dataset": keys.TRIAGE_DATASET, "splits": keys.TRIAGE_SPLITS, **PATIENTS},
    "The triage encoder: top-1/top-3 accuracy and macro-F1 with intervals next to the majority class, top-label "
    "calibration, subgroups, integrated gradients, hand-written dialogues, membership inference; report; gate.",
    extra_deps=[keys.TEXT_TOKENIZER])
entity_evaluation = evaluation_asset(
    "clinical_entities", keys.ENTITY_EVALUATION, keys.ENTITY_MODEL,
    {"dataset": keys.ENTITY_DATASET, "splits": keys.ENTITY_SPLITS, **PATIENTS},
    "The symptom/disease/drug tagger: span precision, recall and F1 with intervals next to the dictionary "
    "baseline, per entity type, subgroups, membership inference; report; gate.",
    extra_deps=[keys.TEXT_TOKENIZER])
note_generator_evaluation = evaluation_asset(
    "note_generator", keys.NOTE_EVALUATION, keys.NOTE_GENERATOR,
    {"dataset": keys.NOTE_PAIRS, "splits": keys.NOTE_SPLITS, **PATIENTS},
    "The note generator: field-level P/R/F1, ICD-10 exact match and ROUGE-L with intervals next to the retrieval "
    "baseline, canary exposure, leak scan of generated drafts, membership inference; report; gate.")

ASSETS = [public_benchmarks, diabetes_evaluation_report, lesion_classifier_evaluation, lesion_segmentation_evaluation,
          deterioration_evaluation, vitals_forecast_evaluation, triage_evaluation, entity_evaluation,
          note_generator_evaluation]
