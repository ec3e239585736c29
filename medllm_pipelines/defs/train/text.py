"""Train stage, text: the tokenizer trained on the de-identified notes and dialogues, and the triage encoder.

Both read de-identified tables only (deidentify/notes, deidentify/dialogues,
curate/triage_*). The triage model is one MLflow run per materialisation,
registered as ``triage`` with alias ``challenger``; below the spec's min_rows
nothing is trained (metadata trained=false with the reason, the model_trained
check warns).
"""
# No `from __future__ import annotations` here: Dagster reads the asset functions' annotations.

from dagster import (
    AssetExecutionContext,
    MaterializeResult,
    MetadataValue,
    asset,
)

from medllm_pipelines.defs import keys
from medllm_pipelines.defs.keys import warehouse_location
from medllm_pipelines.defs.metadata import versions_metadata
from medllm_pipelines.defs.train.spec_assets import model_trained_check_spec, train_text_spec_asset
from medllm_pipelines.lib.curate.datasets_text import TRIAGE_SPEC_ID
from medllm_pipelines.lib.curate.spec import load_spec
from medllm_pipelines.resources.artifacts import ArtifactStoreResource
from medllm_pipelines.resources.mlflow import MLflowResource
from medllm_pipelines.resources.run_settings import RunSettingsResource
from medllm_pipelines.resources.warehouse import WarehouseResource

TOKENIZER_FOLDER = ("text_tokenizer",)  # under the artifact store's models folder




@asset(
    key=keys.TEXT_TOKENIZER,
    deps=[keys.DEID_NOTES, keys.DEID_DIALOGUES, keys.TRIAGE_SPLITS],
    group_name=keys.TRAIN,
    kinds={"python"},
    description="Sub-word tokenizer (Unigram, NFKC, one token per CJK character) trained locally on the de-identified "
    "notes and dialogues, Chinese and English, without the texts of the triage validation and test persons; "
    "tokenizer.json with vocabulary size, corpus size and the unknown-token rate on held-out persons' texts.",
)
def text_tokenizer(context: AssetExecutionContext, warehouse: WarehouseResource,
                   artifacts: ArtifactStoreResource) -> MaterializeResult:
    from medllm_pipelines.lib.common.records import frame_content_hash
    from medllm_pipelines.lib.train.text.tokenizer import held_out_persons, tokenizer_corpus, train_tokenizer

    wh = warehouse.get()
    corpus = tokenizer_corpus(wh.read_table(*warehouse_location(keys.DEID_NOTES)),
                              wh.read_table(*warehouse_location(keys.DEID_DIALOGUES)))
    trained = train_tokenizer(corpus, excluded_persons=held_out_persons(
        wh.read_table(*warehouse_location(keys.TRIAGE_SPLITS))))
    path = trained.save(artifacts.folder("models", *TOKENIZER_FOLDER))
    return MaterializeResult(metadata={
        **trained.report.as_metadata(),
        "corpus_version": frame_content_hash(corpus),
        "tokenizer_config": MetadataValue.json(trained.config.as_dict()),
        "tokenizer_path": MetadataValue.path(str(path)),
        **versions_metadata(),
    })


@asset(
    key=keys.TRIAGE_MODEL,
    deps=[keys.TRIAGE_DATASET, keys.TRIAGE_SPLITS, keys.TEXT_TOKENIZER],
    group_name=keys.TRAIN,
    kinds={"pytorch", "mlflow"},
    description="Transformer encoder trained from scratch (Lightning) on the triage splits with train/text_tokenizer: "
    "dialogue -> department. Test accuracy, macro-F1 and top-3 accuracy against the majority class, and on "
    "hand-written dialogues; one MLflow run, registered as triage with alias challenger.",
    check_specs=[model_trained_check_spec(keys.TRIAGE_MODEL)],
)
def triage_model(context: AssetExecutionContext, warehouse: WarehouseResource, mlflow: MLflowResource,
                 artifacts: ArtifactStoreResource, run_settings: RunSettingsResource) -> MaterializeResult:
    from medllm_pipelines.lib.train.text.runs import text_training_config, train_text_spec_model
    from medllm_pipelines.lib.train.text.tokenizer import load_tokenizer

    spec = load_spec(TRIAGE_SPEC_ID)
    config = text_training_config(spec, run_settings.training_size)  # a bad spec is refused before any run

    def train(dataset, model_dir, mlflow_run_id):
        tokenizer = load_tokenizer(artifacts.folder("models", *TOKENIZER_FOLDER))
        return train_text_spec_model(dataset, tokenizer, spec, model_dir, mlflow_run_id, config=config,
                                     size=run_settings.training_size)

    return train_text_spec_asset(context, spec, keys.TRIAGE_MODEL, keys.TRIAGE_DATASET, keys.TRIAGE_SPLITS,
                                 warehouse, mlflow, artifacts, train)


ASSETS = [text_tokenizer, triage_model]
