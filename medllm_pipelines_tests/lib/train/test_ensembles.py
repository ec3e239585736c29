"""Ensembles over the Lightning MLP, LightGBM and the random forest, each compared with each member (row M9)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from medllm_pipelines.lib.curate.dataset import SplitDataset
from medllm_pipelines.lib.train.ensembles import (
    COMPARISON_ARTIFACT,
    ENSEMBLE_KINDS,
    compare_ensembles,
    load_members,
    train_ensembles,
)
from medllm_pipelines.lib.train.gbm import fit_gbm, fit_random_forest
from medllm_pipelines.lib.train.optim import UnknownComponentError
from medllm_pipelines.lib.train.registry import CHALLENGER
from medllm_pipelines.lib.train.tabular import TrainResult
from medllm_pipelines.lib.train.zoo import REPORTED_METRICS, ZooData, load_zoo_config, save_model_dir
from medllm_pipelines_tests.lib.train.datasets import fitted_preprocessing

MEMBER_PARAMS = ({"n_estimators": 200, "early_stopping_rounds": 10, "learning_rate": 0.1, "num_leaves": 7, "seed": 3},
                 {"n_estimators": 30, "max_depth": 5, "seed": 3})


@pytest.fixture(scope="module")
def zoo_inputs(cancer_frame, trained: TrainResult, tmp_path_factory: pytest.TempPathFactory):
    """The breast-cancer frame, its preprocessing, its arrays and the three members' model directories."""
    frame, features = cancer_frame
    preprocessing = fitted_preprocessing(frame, features)
    data = ZooData.from_frame(frame, preprocessing)
    root = tmp_path_factory.mktemp("members")
    dirs = {"mlp": trained.model_dir}
    for name, fit in (("gbm", fit_gbm(data, MEMBER_PARAMS[0])), ("random_forest", fit_random_forest(data, MEMBER_PARAMS[1]))):
        dirs[name] = save_model_dir(fit.model, root / name, {"preprocessing_fingerprint": preprocessing.fingerprint()}).model_dir
    zoo = load_zoo_config("t2d_risk")
    zoo = dataclasses.replace(zoo, ensembles={**zoo.ensembles, "bagging": {"n_estimators": 10, "max_depth": 4},
                                              "boosting": {"n_estimators": 20}})
    return frame, preprocessing, data, dirs, zoo


@pytest.fixture(scope="module")
def comparison(zoo_inputs):
    _, preprocessing, data, dirs, zoo = zoo_inputs
    return compare_ensembles(load_members(dirs, preprocessing), data, zoo)


def test_every_ensemble_is_compared_with_every_member(comparison) -> None:
    table = comparison.table.set_index("model")
    assert list(table.index) == ["mlp", "gbm", "random_forest", *ENSEMBLE_KINDS]
    assert set(table.loc[list(ENSEMBLE_KINDS), "role"]) == {"ensemble"}
    for split in ("val", "test"):
        assert {f"{split}_{metric}" for metric in REPORTED_METRICS} <= set(table.columns)
    assert (table["test_roc_auc"] > 0.9).all(), table["test_roc_auc"]
    assert comparison.best_on_validation() in table.index


def test_soft_voting_is_the_weighted_mean_of_the_members(zoo_inputs, comparison) -> None:
    _, preprocessing, data, dirs, _ = zoo_inputs
    members = load_members(dirs, preprocessing)
    mean = np.mean([m.predict_proba(data.features["test"])[:, 1] for m in members.values()], axis=0)
    np.testing.assert_allclose(comparison.ensembles["soft_voting"].probabilities["test"], mean, rtol=1e-6)


def test_stacking_reports_out_of_fold_validation_scores(zoo_inputs, comparison) -> None:
    _, _, data, _, _ = zoo_inputs
    stacking = comparison.ensembles["stacking"]
    in_sample = stacking.model.predict_proba(data.features["validation"])[:, 1]
    assert not np.allclose(stacking.probabilities["validation"], in_sample)  # the meta-learner never scores its own rows
    assert stacking.fitted_on.startswith("validation")


def test_members_are_not_refit(zoo_inputs, comparison) -> None:
    _, preprocessing, data, dirs, _ = zoo_inputs
    fresh = load_members(dirs, preprocessing)["gbm"].predict_proba(data.features["test"])[:, 1]
    voting = comparison.ensembles["soft_voting"].model
    np.testing.assert_array_equal(voting.named_estimators_["gbm"].predict_proba(data.features["test"])[:, 1], fresh)


def test_stacking_is_skipped_with_its_reason_on_a_validation_split_without_cases(zoo_inputs) -> None:
    _, preprocessing, data, dirs, zoo = zoo_inputs
    labels = dict(data.labels)
    keep = np.flatnonzero(labels["validation"] == 0).tolist() + np.flatnonzero(labels["validation"] == 1)[:1].tolist()
    features = {**data.features, "validation": data.features["validation"][keep]}
    labels["validation"] = labels["validation"][keep]
    thin = dataclasses.replace(data, features=features, labels=labels)
    result = compare_ensembles(load_members(dirs, preprocessing), thin, zoo)
    assert "stacking" not in result.ensembles and "2 positives" in result.skipped["stacking"]
    assert set(result.ensembles) == {"soft_voting", "bagging", "boosting"}


def test_unknown_kinds_and_foreign_members_are_refused(zoo_inputs, cancer_frame) -> None:
    frame, preprocessing, data, dirs, zoo = zoo_inputs
    with pytest.raises(UnknownComponentError, match="spec t2d_risk: unknown ensemble kind 'blending'"):
        compare_ensembles(load_members(dirs, preprocessing), data,
                          dataclasses.replace(zoo, ensembles={"kinds": ["blending"]}))
    other = fitted_preprocessing(frame, cancer_frame[1], scaling="minmax")
    with pytest.raises(ValueError, match="another preprocessing"):
        load_members(dirs, other, spec_id="t2d_risk")


@pytest.fixture()
def tracking_store(tmp_path: Path) -> Iterator[Path]:
    import mlflow.tracking._tracking_service.utils as tracking_utils

    previous_uri = tracking_utils._tracking_uri
    with pytest.MonkeyPatch.context() as patch:
        uri = f"sqlite:///{tmp_path}/mlflow.db"
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        mlflow.set_tracking_uri(uri)
        try:
            yield tmp_path
        finally:
            if mlflow.active_run() is not None:
                mlflow.end_run()
            mlflow.set_tracking_uri(previous_uri)


def test_the_comparison_is_logged_and_each_ensemble_registered(zoo_inputs, tracking_store: Path) -> None:
    frame, preprocessing, data, dirs, zoo = zoo_inputs
    experiment = mlflow.create_experiment("ensembles", artifact_location=(tracking_store / "artifacts").as_uri())
    with mlflow.start_run(experiment_id=experiment) as run:
        result = train_ensembles(SplitDataset(frame, "e" * 64), preprocessing, zoo, dirs, tags={"dagster_run_id": "r"})
    client = MlflowClient()
    logged = client.get_run(run.info.run_id)
    assert logged.data.metrics["soft_voting.test_roc_auc"] == pytest.approx(result.comparison.metrics_of("soft_voting")["test_roc_auc"])
    assert "mlp.val_f1" in logged.data.metrics
    table = pd.read_json(mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path=COMPARISON_ARTIFACT),
                         orient="split")
    assert set(table["model"]) == {"mlp", "gbm", "random_forest", *ENSEMBLE_KINDS}
    for kind in ENSEMBLE_KINDS:
        version = client.get_model_version_by_alias(f"t2d_risk-{kind}", CHALLENGER)
        assert version.tags["family"] == "ensemble" and version.run_id == run.info.run_id
    reloaded = mlflow.sklearn.load_model(result.model_uris["boosting"])
    np.testing.assert_allclose(reloaded.predict_proba(data.features["test"])[:, 1],
                               result.comparison.ensembles["boosting"].probabilities["test"])
