"""Train stage, text: the tokenizer trained on the de-identified notes and dialogues, and the triage encoder.

Both read de-identified tables only (deidentify/notes, deidentify/dialogues,
curate/triage_*). The triage model is one MLflow run per materialisation,
registered as ``triage`` with alias ``challenger``; below the spec's min_rows
nothing is trained (metadata trained=false with the reason, the model_trained
check warns).
"""
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
    check_specs=[AssetCheckSpec(keys.CHECK_MODEL_TRAINED, asset=keys.TRIAGE_MODEL, blocking=True,
                                description="A model was trained: the dataset holds the spec's min_rows (warns only).")],
)
def triage_model(context: AssetExecutionContext, warehouse: WarehouseResource, mlflow: MLflowResource,
                 artifacts: ArtifactStoreResource, run_settings: RunSettingsResource) -> MaterializeResult:
    from medllm_pipelines.lib.curate.dataset import join_features_with_splits
    from medllm_pipelines.lib.deidentify.withdrawal import save_membership
    from medllm_pipelines.lib.security.governance import GovernanceStore
    from medllm_pipelines.lib.train.runs import spec_run_tags
    from medllm_pipelines.lib.train.text.runs import text_training_config, train_text_spec_model
    from medllm_pipelines.lib.train.text.tokenizer import load_tokenizer

    spec = load_spec(TRIAGE_SPEC_ID)
    config = text_training_config(spec, run_settings.training_size)  # a bad spec is refused before any run
    approval = GovernanceStore(artifacts.folder("governance")).require_valid_approval(
        spec.project, spec.id, dt.date.today(), spec_version=spec.version)
    wh = warehouse.get()
    dataset = join_features_with_splits(wh.read_table(*warehouse_location(keys.TRIAGE_DATASET)),
                                        wh.read_table(*warehouse_location(keys.TRIAGE_SPLITS)), id_column="text_id")
    needs = spec.needs_met_by(len(dataset.frame))
    if not needs.met:
        context.log.warning(f"{keys.asset_name(keys.TRIAGE_MODEL)} not trained: {needs.reason}")
        return MaterializeResult(metadata={"trained": False, "dataset_version": dataset.version, **needs.as_metadata(),
                                           **spec.as_metadata(), **versions_metadata()},
                                 check_results=[model_trained_result(needs)])
    tokenizer = load_tokenizer(artifacts.folder("models", *TOKENIZER_FOLDER))
    store = artifacts.model_store()
    save_membership(store.membership_folder(), dataset.version, dataset.frame["patient_pseudonym"])  # row S5
    tags = spec_run_tags(spec, run_id_of(context), keys.asset_name(keys.TRIAGE_MODEL), ethics_approval=approval.id)
    with mlflow.start_run(spec.id, run_name=f"train-{run_id_of(context)[:8]}", tags=tags) as run:
        trained = train_text_spec_model(dataset, tokenizer, spec, store.model_folder(spec.id, dataset.version),
                                        run.info.run_id, config=config, size=run_settings.training_size)
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


ASSETS = [text_tokenizer, triage_model]
