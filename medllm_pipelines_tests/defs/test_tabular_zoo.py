"""The tabular zoo materialised through Dagster (issue 11 items 2, 3, 6): LightGBM, the forest, their ensembles with
the MLP and the Optuna study, on the small hospital, each one MLflow run in experiment t2d_risk and registered.

The part of the graph the zoo rests on (ingestion through curation, the MLP) is materialised once in its own
MEDLLM_HOME (conftest_lifecycle.run_lifecycle_in with a selection); every test reads that run.
"""

from __future__ import annotations

import pytest

from medllm_pipelines.defs import keys
from medllm_pipelines_tests.conftest_lifecycle import run_lifecycle_in, stop_services, through

pytestmark = pytest.mark.slow

ZOO = through(keys.DIABETES_ENSEMBLES, keys.DIABETES_TUNING)
ENSEMBLE_KINDS = {"soft_voting", "bagging", "boosting", "stacking"}


@pytest.fixture(scope="module")
def zoo_run(tmp_path_factory, small_hospital):
    home = tmp_path_factory.mktemp("zoo_home")
    try:
        yield run_lifecycle_in(home, small_hospital, bad_input=False, selection=ZOO, log_level="WARNING")
    finally:
        stop_services(home)


@pytest.fixture(scope="module")
def client(zoo_run):
    from mlflow.tracking import MlflowClient

    uri = zoo_run.settings.mlflow_tracking_uri
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def test_every_zoo_asset_materialises(zoo_run) -> None:
    assert zoo_run.result.success, zoo_run.result.failed_checks()
    zoo = {keys.DIABETES_GBM_MODEL, keys.DIABETES_FOREST_MODEL, keys.DIABETES_ENSEMBLES, keys.DIABETES_TUNING}
    assert zoo | {keys.DIABETES_MODEL} <= zoo_run.expected_keys
    for key in zoo:
        assert zoo_run.materialization(key)["trained"] is True, key.to_user_string()


@pytest.mark.parametrize(("key", "family"), [(keys.DIABETES_GBM_MODEL, "gbm"),
                                              (keys.DIABETES_FOREST_MODEL, "random_forest")])
def test_the_tree_models_share_the_mlps_dataset_and_are_registered(zoo_run, client, key, family: str) -> None:
    meta = zoo_run.materialization(key)
    mlp = zoo_run.materialization(keys.DIABETES_MODEL)
    assert meta["dataset_version"] == mlp["dataset_version"]
    assert meta["registered_model"] == f"t2d_risk-{family}" and meta["aliases"] == ["challenger"]
    run = client.get_run(meta["mlflow_run_id"])
    assert client.get_experiment(run.info.experiment_id).name.endswith("t2d_risk")
    assert run.data.tags["dagster_asset"] == key.to_user_string() and run.data.tags["dataset_version"] == meta["dataset_version"]
    assert {d.dataset.name for d in run.inputs.dataset_inputs} == {"t2d_risk-train", "t2d_risk-validation"}
    version = client.get_model_version_by_alias(f"t2d_risk-{family}", "challenger")
    assert version.tags["family"] == family and version.run_id == run.info.run_id
    assert meta["metrics"]["val_roc_auc"] > 0.6


def test_the_ensembles_are_compared_with_each_member_and_registered(zoo_run, client) -> None:
    meta = zoo_run.materialization(keys.DIABETES_ENSEMBLES)
    rows = {row["model"]: row for row in meta["comparison"]}
    assert {"mlp", "gbm", "random_forest"} <= set(rows) and set(meta["ensemble_kinds"]) | set(meta["skipped_kinds"]) == ENSEMBLE_KINDS
    for row in rows.values():
        assert {"val_roc_auc", "test_roc_auc", "test_sensitivity", "test_specificity", "test_precision", "test_f1"} <= set(row)
    run = client.get_run(meta["mlflow_run_id"])
    assert "mlp.test_roc_auc" in run.data.metrics
    assert "ensemble_comparison.json" in {a.path for a in client.list_artifacts(run.info.run_id)}
    for kind in meta["ensemble_kinds"]:
        assert client.get_model_version_by_alias(f"t2d_risk-{kind}", "challenger").tags["family"] == "ensemble"


def test_the_study_nests_its_trials_and_registers_the_retrained_best(zoo_run, client) -> None:
    meta = zoo_run.materialization(keys.DIABETES_TUNING)
    assert meta["n_trials"] == 6 and meta["trials_complete"] + meta["trials_pruned"] == 6
    run = client.get_run(meta["mlflow_run_id"])
    trials = client.search_runs([run.info.experiment_id], f"tags.`mlflow.parentRunId` = '{run.info.run_id}'")
    assert len(trials) == 6
    assert run.data.params["best_epoch"] == str(meta["retrained_best_epoch"])  # the early-stopping epoch
    version = client.get_model_version_by_alias("t2d_risk-tuned", "challenger")
    assert version.tags["family"] == "mlp" and version.run_id == run.info.run_id
