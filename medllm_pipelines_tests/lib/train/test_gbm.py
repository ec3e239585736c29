"""LightGBM and the random forest of the tabular zoo: seeded, early-stopped, logged and registered (issue 11 item 2)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import mlflow
import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from medllm_pipelines.lib.curate.dataset import SplitDataset
from medllm_pipelines.lib.train.gbm import (
    GBM,
    RANDOM_FOREST,
    fit_gbm,
    fit_random_forest,
    fit_tree_family,
    train_tree_family,
)
from medllm_pipelines.lib.train.optim import UnknownComponentError
from medllm_pipelines.lib.train.registry import CHALLENGER
from medllm_pipelines.lib.train.tracking import FAILURE_REASON_TAG
from medllm_pipelines.lib.train.zoo import ZooData, load_model_dir, load_zoo_config
from medllm_pipelines_tests.lib.train.datasets import breast_cancer_frame, fitted_preprocessing

GBM_PARAMS = {"n_estimators": 300, "early_stopping_rounds": 10, "learning_rate": 0.1, "num_leaves": 7, "seed": 3}
FOREST_PARAMS = {"n_estimators": 30, "max_depth": 5, "seed": 3}


@pytest.fixture(scope="module")
def cancer():
    frame, features = breast_cancer_frame()
    preprocessing = fitted_preprocessing(frame, features)
    return frame, preprocessing, ZooData.from_frame(frame, preprocessing)


@pytest.fixture(scope="module")
def tracking_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
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
    if mlflow.active_run() is not None:
        mlflow.end_run()


def test_gbm_stops_early_on_validation_and_repeats_exactly(cancer) -> None:
    _, _, data = cancer
    first, second = fit_gbm(data, GBM_PARAMS), fit_gbm(data, GBM_PARAMS)
    assert first.stopped_early and first.iterations_run < 300
    assert first.best_iteration == int(np.argmin(first.curves["val_loss"]))  # the kept iteration is the best one
    assert first.iterations_run == first.best_iteration + 1 + 10  # patience rounds after it
    np.testing.assert_array_equal(first.probabilities["test"], second.probabilities["test"])
    from sklearn.metrics import roc_auc_score

    assert roc_auc_score(data.labels["validation"], first.probabilities["validation"]) > 0.95


def test_the_forest_is_seeded(cancer) -> None:
    _, _, data = cancer
    first, second = fit_random_forest(data, FOREST_PARAMS), fit_random_forest(data, FOREST_PARAMS)
    np.testing.assert_array_equal(first.probabilities["validation"], second.probabilities["validation"])
    other = fit_random_forest(data, {**FOREST_PARAMS, "seed": 4})
    assert not np.array_equal(first.probabilities["validation"], other.probabilities["validation"])


def test_unknown_hyper_parameters_and_families_name_the_spec(cancer) -> None:
    _, _, data = cancer
    with pytest.raises(ValueError, match=r"spec t2d_risk: unknown gbm hyper-parameters \['leaves'\]"):
        fit_gbm(data, {"leaves": 3}, spec_id="t2d_risk")
    with pytest.raises(UnknownComponentError, match="spec t2d_risk: unknown tabular family 'xgboost'"):
        fit_tree_family("xgboost", data, load_zoo_config("t2d_risk"))


def test_the_full_size_overrides_the_demo_defaults() -> None:
    demo, full = load_zoo_config("t2d_risk"), load_zoo_config("t2d_risk", "full")
    assert demo.family(GBM)["n_estimators"] == 300 and full.family(GBM)["n_estimators"] == 3000
    assert full.family(GBM)["min_child_samples"] == demo.family(GBM)["min_child_samples"]  # kept where not overridden
    assert full.study["n_trials"] > demo.study["n_trials"] and full.study["sampler"] == demo.study["sampler"]
    assert demo.as_metadata()["zoo_config_sha256"] == full.as_metadata()["zoo_config_sha256"]
    with pytest.raises(ValueError, match="training size"):
        load_zoo_config("t2d_risk", "huge")


@pytest.mark.parametrize("family", [GBM, RANDOM_FOREST])
def test_a_tree_model_is_logged_and_registered(cancer, experiment_id: str, tmp_path: Path, family: str) -> None:
    frame, preprocessing, data = cancer
    zoo = load_zoo_config("t2d_risk")
    zoo = dataclasses.replace(zoo, families={GBM: GBM_PARAMS, RANDOM_FOREST: FOREST_PARAMS})
    with mlflow.start_run(experiment_id=experiment_id) as run:
        trained = train_tree_family(family, SplitDataset(frame, "v" * 64), preprocessing, zoo, tmp_path,
                                    tags={"dagster_run_id": "run-1"})
    client = MlflowClient()
    logged = client.get_run(run.info.run_id)
    assert logged.data.tags["dagster_run_id"] == "run-1" and logged.data.params["family"] == family
    assert logged.data.params["best_epoch"] == str(trained.fit.best_iteration)
    assert logged.inputs.dataset_inputs, "the dataset is a run input"
    assert logged.data.metrics["best_val_roc_auc"] > 0.95 and "test_roc_auc" in logged.data.metrics
    if family == GBM:
        curve = client.get_metric_history(run.info.run_id, "val_loss")
        assert [point.step for point in curve] == list(range(trained.fit.iterations_run))
    version = client.get_model_version_by_alias(f"t2d_risk-{family}", CHALLENGER)
    assert version.tags["family"] == family and version.tags["dataset_version"] == "v" * 64
    assert float(version.tags["test_roc_auc"]) == pytest.approx(trained.metrics["test_roc_auc"])

    flavour = mlflow.lightgbm if family == GBM else mlflow.sklearn
    reloaded = flavour.load_model(trained.model_uri)
    np.testing.assert_allclose(reloaded.predict_proba(data.features["test"])[:, 1], trained.fit.probabilities["test"])
    model, description = load_model_dir(trained.saved.model_dir)
    assert description["preprocessing_fingerprint"] == preprocessing.fingerprint()
    np.testing.assert_allclose(model.predict_proba(data.features["test"])[:, 1], trained.fit.probabilities["test"])
    trained.saved.model_file.write_bytes(trained.saved.model_file.read_bytes() + b"tampered")
    with pytest.raises(ValueError, match="SHA-256"):
        load_model_dir(trained.saved.model_dir)


def test_a_failed_training_is_marked_and_nothing_is_registered(cancer, experiment_id: str, tmp_path: Path) -> None:
    frame, preprocessing, _ = cancer
    def versions() -> int:
        return len(MlflowClient().search_model_versions("name='t2d_risk-gbm'"))

    before = versions()
    one_class = frame.assign(label=np.where(frame["split"] == "train", 0, frame["label"]))
    with pytest.raises(ValueError, match="only one class"):
        with mlflow.start_run(experiment_id=experiment_id) as run:
            train_tree_family(GBM, SplitDataset(one_class, "w" * 64), preprocessing, load_zoo_config("t2d_risk"),
                              tmp_path)
    failed = MlflowClient().get_run(run.info.run_id)
    assert failed.info.status == "FAILED" and "only one class" in failed.data.tags[FAILURE_REASON_TAG]
    assert versions() == before
