"""Train stage, text: the clinical_entities tagger (symptom/disease/drug BIO tags) on the realigned entity splits.

One MLflow run per materialisation, registered as ``clinical_entities`` with
alias ``challenger``; below the spec's min_rows nothing is trained (trained=false
with the reason, the model_trained check warns).
"""
# No `from __future__ import annotations` here: Dagster reads the asset functions' annotations.

from dagster import (
    AssetExecutionContext,
    MaterializeResult,
    asset,
)

from medllm_pipelines.defs import keys
from medllm_pipelines.defs.train.spec_assets import model_trained_check_spec, train_text_spec_asset
from medllm_pipelines.defs.train.text import TOKENIZER_FOLDER
from medllm_pipelines.lib.curate.datasets_entities import ENTITY_SPEC_ID
from medllm_pipelines.lib.curate.spec import load_spec
from medllm_pipelines.resources.artifacts import ArtifactStoreResource
from medllm_pipelines.resources.mlflow import MLflowResource
from medllm_pipelines.resources.run_settings import RunSettingsResource
from medllm_pipelines.resources.warehouse import WarehouseResource




@asset(
    key=keys.ENTITY_MODEL,
    deps=[keys.ENTITY_DATASET, keys.ENTITY_SPLITS, keys.TEXT_TOKENIZER],
    group_name=keys.TRAIN,
    kinds={"pytorch", "mlflow"},
    description="Transformer encoder with a per-token head (BIO over SYMPTOM/DISEASE/DRUG) trained from scratch on the "
    "entity splits with train/text_tokenizer; exact-span P/R/F1 per type and micro against a dictionary of the "
    "training spans; one MLflow run, registered as clinical_entities with alias challenger.",
    check_specs=[model_trained_check_spec(keys.ENTITY_MODEL)],
)
def entity_model(context: AssetExecutionContext, warehouse: WarehouseResource, mlflow: MLflowResource,
                 artifacts: ArtifactStoreResource, run_settings: RunSettingsResource) -> MaterializeResult:
    from medllm_pipelines.lib.train.text.entity_runs import entity_training_config, train_entity_spec_model
    from medllm_pipelines.lib.train.text.tokenizer import load_tokenizer

    spec = load_spec(ENTITY_SPEC_ID)
    config = entity_training_config(spec, run_settings.training_size)  # a bad spec is refused before any run

    def train(dataset, model_dir, mlflow_run_id):
        tokenizer = load_tokenizer(artifacts.folder("models", *TOKENIZER_FOLDER))
        return train_entity_spec_model(dataset, tokenizer, spec, model_dir, mlflow_run_id, config=config,
                                       size=run_settings.training_size)

    return train_text_spec_asset(context, spec, keys.ENTITY_MODEL, keys.ENTITY_DATASET, keys.ENTITY_SPLITS,
                                 warehouse, mlflow, artifacts, train)


ASSETS = [entity_model]
