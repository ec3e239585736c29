"""Train stage: the trained t2d_risk MLP, lesion classifier CNN and deterioration LSTM compressed (pruned, int8, ONNX),
the MLP, the CNN and the triage encoder distilled, each one MLflow run (rows M7-M8).

What is built and the tolerance a variant must meet are declared in lib/train/configs/compression.yaml;
a variant is registered (``t2d_risk-<variant>``, alias challenger) only when within it.
"""
# No `from __future__ import annotations` here: Dagster reads the asset functions' annotations.

from dataclasses import dataclass

from dagster import AssetExecutionContext, MaterializeResult, MetadataValue, asset

from medllm_pipelines.defs import keys
from medllm_pipelines.defs.checks import model_trained_result
from medllm_pipelines.defs.keys import warehouse_location
from medllm_pipelines.defs.metadata import run_id_of, versions_metadata
from medllm_pipelines.defs.train.spec_assets import model_trained_check_spec
from medllm_pipelines.defs.train.text import TOKENIZER_FOLDER
from medllm_pipelines.lib.curate.dataset import read_split_dataset
from medllm_pipelines.lib.curate.datasets_text import TRIAGE_SPEC_ID
from medllm_pipelines.lib.curate.spec import load_spec
from medllm_pipelines.resources.artifacts import ArtifactStoreResource
from medllm_pipelines.resources.mlflow import MLflowResource
from medllm_pipelines.resources.warehouse import WarehouseResource

READS = [keys.DIABETES_MODEL, keys.DIABETES_FEATURES, keys.DIABETES_SPLITS, keys.DIABETES_PREPROCESSING, keys.DEID_PATIENTS]


def _teacher(warehouse: WarehouseResource, artifacts: ArtifactStoreResource):
    """The spec, its dataset, the trained MLP's record (None when it was not trained) and the de-identified patients."""
    spec = load_spec(keys.DIABETES_SPEC_ID)
    dataset = read_split_dataset(warehouse.get(), warehouse_location(keys.DIABETES_FEATURES),
                                 warehouse_location(keys.DIABETES_SPLITS))
    record = artifacts.model_store().training_record(spec.id, dataset.version)
    patients = warehouse.get().read_table(*warehouse_location(keys.DEID_PATIENTS)) if record else None
    return spec, dataset, record, patients


@dataclass(frozen=True)
class _TeacherTrained:
    """Whether a compression or distillation had a trained teacher: what the model_trained check reports."""

    reason: str = ""

    @property
    def met(self) -> bool:
        return not self.reason

    def as_metadata(self) -> dict:
        return {"teacher_trained": self.met, **({"reason": self.reason} if self.reason else {})}


def _not_trained(context: AssetExecutionContext, spec, dataset, asset_key, *, checked: bool = False) -> MaterializeResult:
    """trained=false and why; with ``checked`` (the asset declares model_trained) the check warns with the reason."""
    needs = spec.needs_met_by(len(dataset.frame))
    reason = needs.reason or f"no trained {spec.id} model for dataset version {dataset.version[:16]}"
    context.log.warning(f"{keys.asset_name(asset_key)}: nothing to compress: {reason}")
    return MaterializeResult(metadata={"trained": False, "reason": reason, "dataset_version": dataset.version,
                                       **spec.as_metadata(), **versions_metadata()},
                             check_results=[model_trained_result(_TeacherTrained(reason))] if checked else None)


def _run_metadata(mlflow: MLflowResource, run, spec, dataset, record) -> dict:
    return {"dataset_version": dataset.version, "teacher_mlflow_run_id": record["mlflow_run_id"],
            "mlflow_run_id": run.info.run_id,
            "mlflow_run": MetadataValue.url(mlflow.run_url(run.info.experiment_id, run.info.run_id)),
            **spec.as_metadata(), **versions_metadata()}


def _compressed(context: AssetExecutionContext, mlflow: MLflowResource, artifacts: ArtifactStoreResource, asset_key,
                spec, dataset, record, compress) -> MaterializeResult:
    """One compression run of a trained model: ``compress(config, out_dir)`` builds the suite of variants; those
    within the spec's tolerance are registered. The same for the MLP, the CNN and the LSTM."""
    from medllm_pipelines.lib.train.compression import failure_recorded, load_compression_config, log_compression
    from medllm_pipelines.lib.train.compression_metrics import markdown_table
    from medllm_pipelines.lib.train.runs import spec_run_tags

    config = load_compression_config(spec.id)
    out_dir = artifacts.model_store().model_folder(spec.id, dataset.version) / "compressed"
    tags = spec_run_tags(spec, run_id_of(context), keys.asset_name(asset_key), stage="compression")
    with mlflow.start_run(spec.id, run_name=f"compress-{run_id_of(context)[:8]}", tags=tags) as run:
        with failure_recorded(spec.id, "compression"):
            suite = compress(config, out_dir)
            registered = log_compression(suite, dataset_version=dataset.version, tracking_uri=mlflow.tracking_uri)
    context.log.info(suite.summary())
    return MaterializeResult(metadata={
        **suite.as_metadata(),
        "registered": MetadataValue.json(registered),
        "comparison": MetadataValue.md(markdown_table(suite.table())),
        "variants_dir": MetadataValue.path(str(out_dir)),
        **_run_metadata(mlflow, run, spec, dataset, record),
    })


def _distilled(context: AssetExecutionContext, mlflow: MLflowResource, artifacts: ArtifactStoreResource, asset_key,
               spec, dataset, record, distil, *, log_student=None, after=None, checked: bool = False) -> MaterializeResult:
    """One distillation run of a trained teacher: ``distil(config, out_dir, epoch_hook)`` trains the student and
    returns its DistillationReport; ``log_student`` logs it (default: the MLP's), registered only within tolerance;
    ``after(config, report)`` adds work inside the same run and returns extra metadata. The same for the MLP, the
    CNN and the triage encoder; ``checked``: the asset declares the model_trained check."""
    from medllm_pipelines.lib.train.compression import failure_recorded, load_compression_config
    from medllm_pipelines.lib.train.compression_metrics import markdown_table
    from medllm_pipelines.lib.train.distillation import log_distillation
    from medllm_pipelines.lib.train.runs import spec_run_tags
    from medllm_pipelines.lib.train.tracking import make_mlflow_epoch_logger

    config = load_compression_config(spec.id)
    out_dir = artifacts.model_store().model_folder(spec.id, dataset.version) / "distilled"
    tags = spec_run_tags(spec, run_id_of(context), keys.asset_name(asset_key), stage="distillation")
    with mlflow.start_run(spec.id, run_name=f"distil-{run_id_of(context)[:8]}", tags=tags) as run:
        with failure_recorded(spec.id, "distillation"):
            report = distil(config, out_dir, make_mlflow_epoch_logger(run.info.run_id))
            registered = log_distillation(report, dataset_version=dataset.version, tracking_uri=mlflow.tracking_uri,
                                          log_student=log_student)
            extra = after(config, report) if after is not None else {}
    context.log.info(report.summary())
    return MaterializeResult(metadata={
        **report.as_metadata(),
        "registered": MetadataValue.json(registered),
        "comparison": MetadataValue.md(markdown_table(report.table())),
        **extra,
        **_run_metadata(mlflow, run, spec, dataset, record),
    }, check_results=[model_trained_result(_TeacherTrained())] if checked else None)


@asset(
    key=keys.DIABETES_COMPRESSED,
    deps=READS,
    group_name=keys.TRAIN,
    kinds={"pytorch", "onnx", "mlflow"},
    description="The t2d_risk MLP pruned (L1, structured), int8-quantised and exported to ONNX (onnxruntime): size, "
    "single-thread CPU latency p50/p95 and test metrics overall and per sex, age band and institution against fp32. "
    "Variants within the tolerance of lib/train/configs/compression.yaml are registered; one MLflow run.",
)
def diabetes_model_compressed(context: AssetExecutionContext, warehouse: WarehouseResource, mlflow: MLflowResource,
                              artifacts: ArtifactStoreResource) -> MaterializeResult:
    from medllm_pipelines.lib.train.compression import compress_tabular_model

    spec, dataset, record, patients = _teacher(warehouse, artifacts)
    if record is None:
        return _not_trained(context, spec, dataset, keys.DIABETES_COMPRESSED)
    return _compressed(context, mlflow, artifacts, keys.DIABETES_COMPRESSED, spec, dataset, record,
                       lambda config, out_dir: compress_tabular_model(record["model_dir"], dataset.frame, config,
                                                                      out_dir, patients=patients))


@asset(
    key=keys.DIABETES_DISTILLED,
    deps=READS,
    group_name=keys.TRAIN,
    kinds={"pytorch", "mlflow"},
    description="A smaller MLP distilled from the trained t2d_risk MLP (Hinton soft labels, temperature and alpha in "
    "lib/train/configs/compression.yaml): student vs teacher test metrics, parameters, size and latency. Registered as "
    "t2d_risk-distilled when within the declared tolerance; one MLflow run with per-epoch curves.",
)
def diabetes_model_distilled(context: AssetExecutionContext, warehouse: WarehouseResource, mlflow: MLflowResource,
                             artifacts: ArtifactStoreResource) -> MaterializeResult:
    from medllm_pipelines.lib.train.distillation import distil_tabular

    spec, dataset, record, patients = _teacher(warehouse, artifacts)
    if record is None:
        return _not_trained(context, spec, dataset, keys.DIABETES_DISTILLED)
    return _distilled(context, mlflow, artifacts, keys.DIABETES_DISTILLED, spec, dataset, record,
                      lambda config, out_dir, hook: distil_tabular(record["model_dir"], dataset.frame, config, out_dir,
                                                                   patients=patients, on_epoch_metrics=hook))


LESION_CLASSIFIER_SPEC_ID = "lesion_classifier"  # lib/curate/specs/lesion_classifier.yaml, train/lesion_classifier_model
LESION_READS = [keys.LESION_CLASSIFIER_MODEL, keys.LESION_DATASET, keys.LESION_SPLITS, keys.DEID_PATIENTS]


def _lesion_teacher(warehouse: WarehouseResource, artifacts: ArtifactStoreResource):
    """The classifier spec, the lesion dataset, the trained classifier's record (None when not trained), patients."""
    from medllm_pipelines.lib.curate.dataset import join_features_with_splits

    spec, wh = load_spec(LESION_CLASSIFIER_SPEC_ID), warehouse.get()
    dataset = join_features_with_splits(wh.read_table(*warehouse_location(keys.LESION_DATASET)),
                                        wh.read_table(*warehouse_location(keys.LESION_SPLITS)), id_column="image_id")
    record = artifacts.model_store().training_record(spec.id, dataset.version)
    patients = wh.read_table(*warehouse_location(keys.DEID_PATIENTS)) if record else None
    return spec, dataset, record, patients


@asset(
    key=keys.LESION_CLASSIFIER_COMPRESSED,
    deps=LESION_READS,
    group_name=keys.TRAIN,
    kinds={"pytorch", "onnx", "mlflow"},
    description="The trained lesion classifier CNN structurally pruned, static int8-quantised (FX graph mode, "
    "calibrated on training slices) and exported to ONNX (onnxruntime): size, single-thread CPU latency p50/p95 and "
    "test metrics overall and per sex, age band and institution against fp32. Variants within the tolerance of "
    "lib/train/configs/compression.yaml are registered as lesion_classifier-<variant>; one MLflow run.",
)
def lesion_classifier_compressed(context: AssetExecutionContext, warehouse: WarehouseResource, mlflow: MLflowResource,
                                 artifacts: ArtifactStoreResource) -> MaterializeResult:
    from medllm_pipelines.lib.train.compression import compress_imaging_model

    spec, dataset, record, patients = _lesion_teacher(warehouse, artifacts)
    if record is None:
        return _not_trained(context, spec, dataset, keys.LESION_CLASSIFIER_COMPRESSED)
    images = artifacts.folder("deidentified", "images")
    return _compressed(context, mlflow, artifacts, keys.LESION_CLASSIFIER_COMPRESSED, spec, dataset, record,
                       lambda config, out_dir: compress_imaging_model(record["model_dir"], dataset.frame, images,
                                                                      config, out_dir, patients=patients))


@asset(
    key=keys.LESION_CLASSIFIER_DISTILLED,
    deps=LESION_READS,
    group_name=keys.TRAIN,
    kinds={"pytorch", "mlflow"},
    description="A smaller MONAI DenseNet distilled from the trained lesion classifier (soft labels at the temperature "
    "and alpha of lib/train/configs/compression.yaml): student vs teacher test metrics, parameters, size and latency. "
    "Registered as lesion_classifier-distilled when within the declared tolerance; one MLflow run with curves. "
    "Also the averaging ensemble of teacher and student (mean probability) against each member on the test split.",
)
def lesion_classifier_distilled(context: AssetExecutionContext, warehouse: WarehouseResource, mlflow: MLflowResource,
                                artifacts: ArtifactStoreResource) -> MaterializeResult:
    from medllm_pipelines.lib.train.compression_metrics import markdown_table
    from medllm_pipelines.lib.train.distillation import distil_imaging, log_imaging_student
    from medllm_pipelines.lib.train.imaging.ensemble import average_imaging_models, log_averaging

    spec, dataset, record, patients = _lesion_teacher(warehouse, artifacts)
    if record is None:
        return _not_trained(context, spec, dataset, keys.LESION_CLASSIFIER_DISTILLED)
    images = artifacts.folder("deidentified", "images")

    def averaged(config, report) -> dict:  # row M9: the averaging ensemble of teacher and student, in the same run
        averaging = average_imaging_models({"teacher": record["model_dir"], "student": report.student_dir},
                                           dataset.frame, images, config, patients=patients)
        log_averaging(averaging)
        return {"averaging_ensemble": MetadataValue.json(averaging.as_metadata()),
                "averaging_comparison": MetadataValue.md(markdown_table(averaging.table()))}

    return _distilled(context, mlflow, artifacts, keys.LESION_CLASSIFIER_DISTILLED, spec, dataset, record,
                      lambda config, out_dir, hook: distil_imaging(record["model_dir"], dataset.frame, images, config,
                                                                   out_dir, patients=patients, on_epoch_metrics=hook),
                      log_student=log_imaging_student, after=averaged)


DETERIORATION_READS = [keys.DETERIORATION_MODEL, keys.DETERIORATION_DATASET, keys.DETERIORATION_SPLITS,
                       keys.DEID_VITAL_SIGNS, keys.DEID_PATIENTS]


def _deterioration_teacher(warehouse: WarehouseResource, artifacts: ArtifactStoreResource):
    """The deterioration spec, its windows with splits (versioned as train/deterioration_model versions them), the
    trained network's record (None when not trained), the de-identified vitals and patients."""
    from medllm_pipelines.lib.common.records import frame_content_hash
    from medllm_pipelines.lib.curate.dataset import SplitDataset
    from medllm_pipelines.lib.curate.sequences import windows_with_splits

    spec, wh = load_spec(keys.DETERIORATION_SPEC_ID), warehouse.get()
    frame = windows_with_splits(wh.read_table(*warehouse_location(keys.DETERIORATION_DATASET)),
                                wh.read_table(*warehouse_location(keys.DETERIORATION_SPLITS)))
    dataset = SplitDataset(frame, frame_content_hash(frame))
    record = artifacts.model_store().training_record(spec.id, dataset.version)
    vitals = wh.read_table(*warehouse_location(keys.DEID_VITAL_SIGNS)) if record else None
    patients = wh.read_table(*warehouse_location(keys.DEID_PATIENTS)) if record else None
    return spec, dataset, record, vitals, patients


@asset(
    key=keys.DETERIORATION_COMPRESSED,
    deps=DETERIORATION_READS,
    group_name=keys.TRAIN,
    kinds={"pytorch", "onnx", "mlflow"},
    description="The trained deterioration LSTM int8-quantised (dynamic: nn.LSTM/nn.GRU and nn.Linear) and exported "
    "to ONNX (onnxruntime): size, single-thread CPU latency p50/p95 and test ROC-AUC overall and per sex, age band "
    "and institution against fp32. Variants within the tolerance of lib/train/configs/compression.yaml are "
    "registered as deterioration-<variant>; one MLflow run.",
)
def deterioration_model_compressed(context: AssetExecutionContext, warehouse: WarehouseResource,
                                   mlflow: MLflowResource, artifacts: ArtifactStoreResource) -> MaterializeResult:
    from medllm_pipelines.lib.train.sequence.compression import compress_sequence_model

    spec, dataset, record, vitals, patients = _deterioration_teacher(warehouse, artifacts)
    if record is None:
        return _not_trained(context, spec, dataset, keys.DETERIORATION_COMPRESSED)
    return _compressed(context, mlflow, artifacts, keys.DETERIORATION_COMPRESSED, spec, dataset, record,
                       lambda config, out_dir: compress_sequence_model(record["model_dir"], vitals, dataset.frame,
                                                                       config, out_dir, patients=patients))


TRIAGE_READS = [keys.TRIAGE_MODEL, keys.TRIAGE_DATASET, keys.TRIAGE_SPLITS, keys.TEXT_TOKENIZER]


def _triage_teacher(warehouse: WarehouseResource, artifacts: ArtifactStoreResource):
    """The triage spec, its split dialogues (versioned as train/triage_model versions them) and the trained
    encoder's record (None when not trained)."""
    from medllm_pipelines.lib.curate.dataset import join_features_with_splits

    spec, wh = load_spec(TRIAGE_SPEC_ID), warehouse.get()
    dataset = join_features_with_splits(wh.read_table(*warehouse_location(keys.TRIAGE_DATASET)),
                                        wh.read_table(*warehouse_location(keys.TRIAGE_SPLITS)), id_column="text_id")
    return spec, dataset, artifacts.model_store().training_record(spec.id, dataset.version)


@asset(
    key=keys.TRIAGE_DISTILLED,
    deps=TRIAGE_READS,
    group_name=keys.TRAIN,
    kinds={"pytorch", "mlflow"},
    description="A smaller Transformer encoder (shape in lib/train/configs/compression.yaml) distilled from the "
    "trained triage encoder with the same tokenizer (Hinton soft labels at the declared temperature and alpha): "
    "student vs teacher test accuracy, macro-F1 and top-3 accuracy overall and per language, parameters, size and "
    "CPU latency. Registered as triage-distilled (the triage pyfunc) when within the declared tolerance; one MLflow "
    "run with per-epoch curves. Not trained (the model_trained check warns) while the teacher is not.",
    check_specs=[model_trained_check_spec(keys.TRIAGE_DISTILLED)],
)
def triage_model_distilled(context: AssetExecutionContext, warehouse: WarehouseResource, mlflow: MLflowResource,
                           artifacts: ArtifactStoreResource) -> MaterializeResult:
    from medllm_pipelines.lib.train.text.distillation import distil_text, log_text_student
    from medllm_pipelines.lib.train.text.tokenizer import load_tokenizer

    spec, dataset, record = _triage_teacher(warehouse, artifacts)
    if record is None:
        return _not_trained(context, spec, dataset, keys.TRIAGE_DISTILLED, checked=True)
    tokenizer = load_tokenizer(artifacts.folder("models", *TOKENIZER_FOLDER))  # refused unless it is the teacher's
    return _distilled(context, mlflow, artifacts, keys.TRIAGE_DISTILLED, spec, dataset, record,
                      lambda config, out_dir, hook: distil_text(record["model_dir"], dataset.frame, tokenizer, config,
                                                                out_dir, on_epoch_metrics=hook),
                      log_student=log_text_student, checked=True)


ASSETS = [diabetes_model_compressed, diabetes_model_distilled, lesion_classifier_compressed, lesion_classifier_distilled,
          deterioration_model_compressed, triage_model_distilled]
