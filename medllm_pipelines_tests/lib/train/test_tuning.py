"""The Optuna study on the MLP: samplers from the configuration, pruning, nested trial runs, the best retrained (M5)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import mlflow
import optuna
import pytest
from mlflow.tracking import MlflowClient

from medllm_pipelines.lib.curate.dataset import SplitDataset
from medllm_pipelines.lib.train.optim import UnknownComponentError
from medllm_pipelines.lib.train.registry import CHALLENGER
from medllm_pipelines.lib.train.tabular import TrainConfig
from medllm_pipelines.lib.train.tracking import FAILURE_REASON_TAG
from medllm_pipelines.lib.train.tuning import (
    PRUNED_TAG,
    StudyConfig,
    make_objective,
    make_sampler,
    run_study,
    suggest_config,
    tune_and_retrain,
)
from medllm_pipelines.lib.train.zoo import load_zoo_config
from medllm_pipelines_tests.lib.train.datasets import fitted_preprocessing

BASE = TrainConfig(hidden_sizes=(16,), dropout=0.0, lr=3e-3, batch_size=64, max_epochs=6, seed=7)
SMALL_STUDY = {"sampler": "tpe", "n_trials": 3, "max_epochs": 5, "early_stopping_patience": 2, "seed": 1,
               "search_space": {"lr": {"type": "float", "low": 0.001, "high": 0.02, "log": True, "grid": [0.003, 0.01]},
                                "hidden_sizes": {"type": "categorical", "choices": ["16", "8x8"], "grid": ["16"]}}}


@pytest.fixture(scope="module")
def cancer(cancer_frame):
    frame, features = cancer_frame
    return frame, fitted_preprocessing(frame, features)


@pytest.fixture(scope="module")
def tracking_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One SQLite store per module (creating its schema takes seconds); the global URI is restored."""
    import mlflow.tracking._tracking_service.utils as tracking_utils

    root = tmp_path_factory.mktemp("mlflow")
    previous_uri = tracking_utils._tracking_uri
    with pytest.MonkeyPatch.context() as patch:
        uri = f"sqlite:///{root}/mlflow.db"
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        mlflow.set_tracking_uri(uri)
        try:
            yield root
        finally:
            mlflow.set_tracking_uri(previous_uri)


@pytest.fixture()
def experiment_id(tracking_store: Path, request: pytest.FixtureRequest) -> Iterator[str]:
    name = request.node.name
    yield mlflow.create_experiment(name, artifact_location=(tracking_store / name).as_uri())
    while mlflow.active_run() is not None:
        mlflow.end_run()


def test_the_sampler_is_chosen_by_the_configuration() -> None:
    kinds = {name: type(make_sampler(StudyConfig.from_mapping("t2d_risk", {**SMALL_STUDY, "sampler": name})))
             for name in ("grid", "random", "tpe")}
    assert kinds == {"grid": optuna.samplers.GridSampler, "random": optuna.samplers.RandomSampler,
                     "tpe": optuna.samplers.TPESampler}
    assert StudyConfig.from_mapping("t2d_risk", load_zoo_config("t2d_risk").study).n_trials == 6  # the shipped demo study


@pytest.mark.parametrize(("change", "message"), [
    ({"sampler": "cmaes"}, "spec t2d_risk: unknown sampler 'cmaes'; choose one of grid, random, tpe"),
    ({"metric": "val_roc_auc"}, "must maximize"),
    ({"search_space": {"momentum_of_doom": {"type": "float", "low": 0, "high": 1}}}, "unknown tunable hyper-parameter"),
    ({"sampler": "grid", "search_space": {"lr": {"type": "float", "low": 0.001, "high": 0.01}}}, "grid sampler needs"),
    ({"trials": 3}, "unknown study keys"),
])
def test_a_bad_study_is_refused_naming_the_spec(change: dict, message: str) -> None:
    with pytest.raises((UnknownComponentError, ValueError), match=message):
        StudyConfig.from_mapping("t2d_risk", {**SMALL_STUDY, **change})


def test_a_trial_configuration_is_the_base_with_the_suggestions() -> None:
    study = StudyConfig.from_mapping("t2d_risk", SMALL_STUDY)
    config = suggest_config(optuna.trial.FixedTrial({"lr": 0.01, "hidden_sizes": "8x8"}), study, BASE)
    assert config.hidden_sizes == (8, 8) and config.lr == 0.01 and config.max_epochs == 5
    assert config.optimizer == BASE.optimizer and config.early_stopping_patience == 2


def test_the_grid_sampler_tries_every_grid_point_each_in_a_nested_run(cancer, experiment_id: str) -> None:
    frame, preprocessing = cancer
    study = StudyConfig.from_mapping("t2d_risk", {**SMALL_STUDY, "sampler": "grid", "n_trials": 2})
    with mlflow.start_run(experiment_id=experiment_id) as parent:
        finished = run_study(frame, preprocessing, BASE, study, "t2d_risk")
    assert sorted(t.params["lr"] for t in finished.trials) == [0.003, 0.01]
    children = MlflowClient().search_runs([experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert len(children) == 2 and {c.data.tags[PRUNED_TAG] for c in children} == {"COMPLETE"}
    child = children[0]
    curve = MlflowClient().get_metric_history(child.info.run_id, "val_loss")
    assert [p.step for p in curve] == list(range(int(child.data.params["epochs_run"])))


def test_a_hopeless_trial_is_pruned_by_the_lightning_callback(cancer, experiment_id: str) -> None:
    frame, preprocessing = cancer
    study = StudyConfig.from_mapping("t2d_risk", {**SMALL_STUDY, "sampler": "random",
                                                  "search_space": {"lr": SMALL_STUDY["search_space"]["lr"]}})
    pruned_study = optuna.create_study(direction="minimize",
                                       pruner=optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=0))
    pruned_study.enqueue_trial({"lr": 0.02})
    pruned_study.enqueue_trial({"lr": 0.001 + 1e-9})  # ten times slower: behind the first trial at every epoch
    with mlflow.start_run(experiment_id=experiment_id):
        pruned_study.optimize(make_objective(frame, preprocessing, BASE, study, "t2d_risk", {}), n_trials=2)
    states = [t.state for t in pruned_study.trials]
    assert states == [optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED]
    pruned_run = MlflowClient().get_run(pruned_study.trials[1].user_attrs["mlflow_run_id"])
    assert pruned_run.data.tags[PRUNED_TAG] == "PRUNED"


def test_the_best_configuration_is_retrained_and_registered(cancer, experiment_id: str, tmp_path: Path) -> None:
    frame, preprocessing = cancer
    zoo = dataclasses.replace(load_zoo_config("t2d_risk"), study=SMALL_STUDY)
    with mlflow.start_run(experiment_id=experiment_id) as parent:
        result = tune_and_retrain(SplitDataset(frame, "t" * 64), preprocessing, BASE, zoo, tmp_path / "tuned",
                                  tags={"dagster_run_id": "r"})
    client = MlflowClient()
    best = result.trials.set_index("number").loc[result.best_trial]
    assert result.best_config.lr == pytest.approx(best["params_lr"])
    logged = client.get_run(parent.info.run_id).data
    assert logged.params["study.sampler"] == "tpe" and logged.params["best_trial"] == str(result.best_trial)
    assert logged.params["best_epoch"] == str(result.retrained.best_epoch)  # the early-stopping epoch is recorded
    assert logged.params["lr"] == str(result.best_config.lr)
    version = client.get_model_version_by_alias("t2d_risk-tuned", CHALLENGER)
    assert version.tags["family"] == "mlp" and version.run_id == parent.info.run_id
    assert result.as_metadata()["n_trials"] == 3 and result.metrics["test_roc_auc"] > 0.9


def test_a_failed_study_is_marked_and_registers_nothing(cancer, experiment_id: str, tmp_path: Path) -> None:
    frame, preprocessing = cancer
    zoo = dataclasses.replace(load_zoo_config("t2d_risk"), study={**SMALL_STUDY, "sampler": "annealing"})
    registered_before = len(MlflowClient().search_model_versions("name='t2d_risk-tuned'"))
    with pytest.raises(UnknownComponentError, match="unknown sampler 'annealing'"):
        with mlflow.start_run(experiment_id=experiment_id) as parent:
            tune_and_retrain(SplitDataset(frame, "t" * 64), preprocessing, BASE, zoo, tmp_path)
    run = MlflowClient().get_run(parent.info.run_id)
    assert run.info.status == "FAILED" and "annealing" in run.data.tags[FAILURE_REASON_TAG]
    assert len(MlflowClient().search_model_versions("name='t2d_risk-tuned'")) == registered_before
