"""Train stage, generative EHR: the note generator (transcript -> structured note) on the note splits.

A causal language model (the project's GPT, trained from scratch on the de-identified pairs; LoRA on an
operator's local checkpoint when ``MEDLLM_BASE_MODEL_PATH`` is set) in one MLflow run per materialisation,
scored on the test split (field P/R/F1, ICD-10 exact match, ROUGE-L) against a retrieval baseline, logged as a
pyfunc that writes notes and registered as ``note_generator`` with alias ``challenger``; below the spec's
min_rows nothing is trained (trained=false with the reason, the model_trained check warns).
"""
# No `from __future__ import annotations` here: Dagster reads the asset functions' annotations.

from dagster import AssetExecutionContext, MaterializeResult, asset

from medllm_pipelines.defs import keys
from medllm_pipelines.defs.train.spec_assets import model_trained_check_spec, train_text_spec_asset
from medllm_pipelines.lib.curate.datasets_notes import NOTE_SPEC_ID
from medllm_pipelines.lib.curate.spec import load_spec
from medllm_pipelines.resources.artifacts import ArtifactStoreResource
from medllm_pipelines.resources.mlflow import MLflowResource
from medllm_pipelines.resources.run_settings import RunSettingsResource
from medllm_pipelines.resources.warehouse import WarehouseResource


@asset(
    key=keys.NOTE_GENERATOR,
    deps=[keys.NOTE_PAIRS, keys.NOTE_SPLITS],
    group_name=keys.TRAIN,
    kinds={"pytorch", "mlflow"},
    description="Causal language model writing the structured note of a recorded visit from its de-identified "
    "transcript (GPT from scratch with a lossless word-level tokenizer; LoRA on MEDLLM_BASE_MODEL_PATH when set). "
    "Test-split field F1, ICD-10 exact match and ROUGE-L against a retrieval baseline; one MLflow run, registered "
    "as note_generator with alias challenger.",
    check_specs=[model_trained_check_spec(keys.NOTE_GENERATOR)],
)
def note_generator(context: AssetExecutionContext, warehouse: WarehouseResource, mlflow: MLflowResource,
                   artifacts: ArtifactStoreResource, run_settings: RunSettingsResource) -> MaterializeResult:
    from medllm_pipelines.lib.train.generative.base_model import base_model_path_from_env
    from medllm_pipelines.lib.train.generative.note_runs import note_generator_config, train_note_spec_model

    spec = load_spec(NOTE_SPEC_ID)
    config = note_generator_config(spec, run_settings.training_size)  # a bad spec is refused before any run

    def train(dataset, model_dir, mlflow_run_id):
        return train_note_spec_model(dataset, spec, model_dir, mlflow_run_id, config=config,
                                     size=run_settings.training_size, base_model_path=base_model_path_from_env())

    return train_text_spec_asset(context, spec, keys.NOTE_GENERATOR, keys.NOTE_PAIRS, keys.NOTE_SPLITS,
                                 warehouse, mlflow, artifacts, train)


ASSETS = [note_generator]
