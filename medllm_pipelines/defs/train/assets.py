"""Train stage: a Lightning model per model spec, on the preprocessing the curate stage fitted, tracked in MLflow."""


import datetime as dt
from pathlib import Path

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
from medllm_pipelines.lib.curate.dataset import SplitDataset, read_split_dataset
from medllm_pipelines.lib.curate.spec import ModelSpec, load_spec
from medllm_pipelines.lib.deidentify.policy import load_policy
from medllm_pipelines.lib.deidentify.withdrawal import load_memberships, models_needing_retraining, save_membership
from medllm_pipelines.lib.security.governance import GovernanceStore
from medllm_pipelines.resources.artifacts import ArtifactStoreResource
from medllm_pipelines.resources.mlflow import MLflowResource
from medllm_pipelines.resources.run_settings import RunSettingsResource
from medllm_pipelines.resources.warehouse import WarehouseResource

NEEDS_RETRAINING_TAG = "medllm.needs_retraining"


def _curated_preprocessing(store, spec_id: str, dataset_version: str):
    """Never a new fit here: the pipeline curate/diabetes_preprocessing fitted for this dataset version."""
    try:
        return store.fitted_preprocessing(spec_id, dataset_version)
    except FileNotFoundError as missing:
        raise RuntimeError(f"{missing}: materialise {keys.asset_name(keys.DIABETES_PREPROCESSING)} first") from None




def _dataset_card(artifacts: ArtifactStoreResource, dataset: SplitDataset):
    """Where curate/dataset_catalog writes the card of this dataset version (lib/curate/cards.write_card's layout).

    Not a dependency: the catalog spans every labelled set, and a gate failing on an unrelated set (say, image
    agreement) must not stop this model; the card is linked, and logged to the run when it is already written.
    """
    name = keys.asset_name(keys.DIABETES_SPLITS).replace("/", "__")
    return artifacts.folder("reports", "datasets") / name / dataset.version[:16] / "card.md"


def _foundations(spec: ModelSpec, approval, run_settings: RunSettingsResource, artifacts: ArtifactStoreResource,
                 dataset: SplitDataset) -> dict:
    """What the model rests on, readable without walking the lineage: consent, policy, purpose, approval, card."""
    policy = load_policy(purpose=run_settings.purpose)
    return {
        "consent_basis": f"consent {spec.data_needs.get('consent', 'granted')} (deidentify/consent_registry)",
        "deidentification_policy_version": policy.version,
        "processing_purpose": policy.purpose_id,
        "ethics_approval": MetadataValue.json(approval.as_metadata()),
        "dataset_card": MetadataValue.path(str(_dataset_card(artifacts, dataset))),
    }


@asset(
    key=keys.DIABETES_MODEL,
    deps=[keys.DIABETES_FEATURES, keys.DIABETES_SPLITS, keys.DIABETES_PREPROCESSING],
    group_name=keys.TRAIN,
    kinds={"pytorch", "mlflow"},
    description="Checkpoint of the type 2 diabetes risk MLP (Lightning) on the preprocessing curate/diabetes_preprocessing "
    "fitted for the dataset version; one MLflow run per materialisation, the model registered as t2d_risk with alias "
    "challenger. Below the spec's min_rows nothing is trained: metadata trained=false with the reason, and the "
    "model_trained check warns.",
    check_specs=[
        AssetCheckSpec(
            keys.CHECK_MODEL_TRAINED,
            asset=keys.DIABETES_MODEL,
            blocking=True,  # as every check here; it fails with WARN severity, which blocks nothing downstream
            description="A model was trained: the dataset holds the spec's min_rows (warns, never stops the data stages).",
        )
    ],
)
def diabetes_model(
    context: AssetExecutionContext,
    warehouse: WarehouseResource,
    mlflow: MLflowResource,
    artifacts: ArtifactStoreResource,
    run_settings: RunSettingsResource,
) -> MaterializeResult:
    from medllm_pipelines.lib.train.runs import spec_run_tags, training_config

    spec = load_spec(keys.DIABETES_SPEC_ID)
    config = training_config(spec, run_settings.training_size)  # unknown optimiser/network: refused before any run
    # Clause 4.1.2 (row E1): no model is trained for a project without a valid ethics approval.
    approval = GovernanceStore(artifacts.folder("governance")).require_valid_approval(
        spec.project, spec.id, dt.date.today(), spec_version=spec.version
    )
    dataset = read_split_dataset(warehouse.get(), warehouse_location(keys.DIABETES_FEATURES),
                                 warehouse_location(keys.DIABETES_SPLITS))
    needs = spec.needs_met_by(len(dataset.frame))
    if not needs.met:  # data stages succeeded; trained=false and a WARN check, which `medllm run` prints
        context.log.warning(f"train/diabetes_model not trained: {needs.reason}")
        return MaterializeResult(
            metadata={"trained": False, "dataset_version": dataset.version, **needs.as_metadata(),
                      **spec.as_metadata(), **versions_metadata()},
            check_results=[model_trained_result(needs)],
        )
    store = artifacts.model_store()
    preprocessing = _curated_preprocessing(store, spec.id, dataset.version)  # missing: fails here, in either process
    save_membership(store.membership_folder(), dataset.version, dataset.frame["patient_pseudonym"])  # row S5
    tags = spec_run_tags(spec, run_id_of(context), keys.asset_name(keys.DIABETES_MODEL), ethics_approval=approval.id)
    attachments = [_dataset_card(artifacts, dataset)]
    with mlflow.start_run(spec.id, run_name=f"train-{run_id_of(context)[:8]}", tags=tags) as run:
        if run_settings.training_process == "subprocess":
            trained = _train_out_of_process(context, run, spec, dataset, store, tags, attachments, mlflow.tracking_uri,
                                            run_settings.training_size)
        else:
            trained = _train_in_process(context, run, spec, dataset, store, preprocessing, tags, attachments, config,
                                        run_settings.training_size)
    return MaterializeResult(
        check_results=[model_trained_result(needs)],
        metadata={
            **trained,
            **needs.as_metadata(),
            "mlflow_experiment_id": run.info.experiment_id,
            "mlflow_run": MetadataValue.url(mlflow.run_url(run.info.experiment_id, run.info.run_id)),
            **_foundations(spec, approval, run_settings, artifacts, dataset),
            **spec.as_metadata(),
            **versions_metadata(),
        },
    )


def _train_in_process(context, run, spec, dataset, store, preprocessing, tags, attachments, config, size) -> dict:
    from medllm_pipelines.lib.train.runs import train_spec_model

    trained = train_spec_model(dataset, preprocessing, spec, store.model_folder(spec.id, dataset.version),
                               run.info.run_id, tags, attachments=attachments, config=config, size=size)
    store.write_training_record(spec.id, dataset.version, trained.record(run.info.experiment_id, run_id_of(context)))
    context.log.info(trained.summary())
    return {**trained.as_metadata(), "training_process": "in process",
            "checkpoint_path": MetadataValue.path(str(trained.result.checkpoint_path)),
            "model_dir": MetadataValue.path(str(trained.result.model_dir))}


def _train_out_of_process(context, run, spec, dataset, store, tags, attachments, tracking_uri, size) -> dict:
    """The same training in a child process launched through Dagster Pipes (MEDLLM_TRAINING_PROCESS=subprocess);
    lib/train/out_of_process.py is the child's half. A PipesK8sClient runs the same command in a GPU pod."""
    import sys

    from dagster import PipesSubprocessClient

    from medllm_pipelines.lib.train.out_of_process import TrainingJob, write_job_dataset

    job_folder = store.model_folder(spec.id, dataset.version) / "pipes_job"
    job = TrainingJob(spec_id=spec.id, dataset_path=str(write_job_dataset(dataset.frame, job_folder)),
                      dataset_version=dataset.version, model_store=str(store.root), mlflow_tracking_uri=tracking_uri,
                      mlflow_run_id=run.info.run_id, experiment_id=run.info.experiment_id,
                      dagster_run_id=run_id_of(context), size=size, tags=tags,
                      attachments=[str(path) for path in attachments])
    try:
        completed = PipesSubprocessClient().run(
            command=[sys.executable, "-m", "medllm_pipelines.lib.train.out_of_process"], context=context,
            extras=job.as_extras())
    finally:  # the de-identified rows were a hand-over, not an artefact: the model store keeps no copy
        Path(job.dataset_path).unlink(missing_ok=True)
    return dict(completed.get_materialize_result().metadata or {})


@asset(
    key=keys.RETRAINING_REQUIRED,
    deps=[keys.CONSENT_REGISTRY, keys.DIABETES_MODEL],
    group_name=keys.TRAIN,
    kinds={"python", "mlflow"},
    description=(
        "Model versions of every spec trained on persons whose consent has since been withdrawn "
        "(clause 5.4.1.5-6): listed here and tagged in MLflow as needing retraining."
    ),
)
def retraining_required(
    context: AssetExecutionContext, warehouse: WarehouseResource, mlflow: MLflowResource, artifacts: ArtifactStoreResource
) -> MaterializeResult:
    from mlflow.tracking import MlflowClient

    registry = warehouse.get().read_table(*warehouse_location(keys.CONSENT_REGISTRY))
    store = artifacts.model_store()
    # every spec's and variant's model versions on record (imaging, text, sequences, the tabular zoo): a model
    # trained later in the same run is checked by the next materialisation
    records = store.all_training_records()
    needs = models_needing_retraining(
        registry, load_memberships(store.membership_folder()), {r["mlflow_run_id"]: r["dataset_version"] for r in records}
    )
    client = MlflowClient(tracking_uri=mlflow.tracking_uri)
    for need in needs:
        client.set_tag(need.model_version, NEEDS_RETRAINING_TAG, "true")
        client.set_tag(need.model_version, "medllm.withdrawn_members", str(need.withdrawn))
    context.log.info(f"{len(needs)} of {len(records)} model versions need retraining after consent withdrawals")
    return MaterializeResult(
        metadata={
            "model_versions_checked": len(records),
            "model_versions_needing_retraining": len(needs),
            "needing_retraining": MetadataValue.json([n.as_metadata() for n in needs]),
            "persons_withdrawn": int((registry["consent_status"] == "withdrawn").sum()),
        }
    )


ASSETS = [diabetes_model, retraining_required]
