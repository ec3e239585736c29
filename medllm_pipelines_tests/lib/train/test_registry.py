"""The model registry: every training registered under its spec id as challenger; champion only through the gate."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from medllm_pipelines.lib.train.registry import (
    CHALLENGER,
    CHAMPION,
    TRAINING_EXPERIMENT_TAGS,
    PromotionRefused,
    list_registered,
    promote_to_champion,
    register_model,
)
from medllm_pipelines.resources.mlflow import MLflowResource


@pytest.fixture(scope="module")
def tracking_uri(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    import mlflow.tracking._tracking_service.utils as tracking_utils

    root = tmp_path_factory.mktemp("registry")
    previous = tracking_utils._tracking_uri
    uri = f"sqlite:///{root}/mlflow.db"
    mlflow.set_tracking_uri(uri)
    try:
        yield uri
    finally:
        mlflow.set_tracking_uri(previous)


@pytest.fixture(scope="module")
def logged_model(tracking_uri: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """One small model logged once (model URI, run id); each test registers it again as a new version."""
    root = tmp_path_factory.mktemp("artifacts")
    experiment_id = mlflow.create_experiment("registry", artifact_location=root.as_uri())
    with mlflow.start_run(experiment_id=experiment_id) as run:
        info = mlflow.pytorch.log_model(torch.nn.Linear(2, 1), name="model", serialization_format="pickle",
                                        pip_requirements=["torch"], input_example=np.zeros((1, 2), np.float32))
    return info.model_uri, run.info.run_id


def test_a_training_is_registered_under_its_spec_id_as_challenger(tracking_uri: str, logged_model) -> None:
    model_uri, run_id = logged_model
    first = register_model(model_uri, "spec_a", family="mlp", dataset_version="ds1",
                           metrics={"val_roc_auc": 0.894, "test_roc_auc": 0.88, "accuracy": 0.8})
    assert first.as_metadata() == {"registered_model": "spec_a", "registered_version": "1",
                                   "aliases": [CHALLENGER], "family": "mlp"}
    version = MlflowClient().get_model_version("spec_a", "1")
    assert version.tags["family"] == "mlp" and version.tags["dataset_version"] == "ds1"
    assert version.tags["val_roc_auc"] == "0.894" and version.tags["test_roc_auc"] == "0.88"
    assert version.tags["val_accuracy"] == "0.8"  # an unprefixed metric is a validation value
    assert version.run_id == run_id

    second = register_model(model_uri, "spec_a", family="mlp", dataset_version="ds2")
    assert (second.version, second.aliases) == ("2", (CHALLENGER,))
    aliases = MlflowClient().get_registered_model("spec_a").aliases
    assert {alias: str(v) for alias, v in aliases.items()} == {CHALLENGER: "2"}  # challenger moved; champion never set by a training


def test_variants_register_under_their_own_name(tracking_uri: str, logged_model) -> None:
    registered = register_model(logged_model[0], "spec_b", family="quantised", dataset_version="ds1",
                                name="spec_b-int8")
    assert (registered.name, registered.family) == ("spec_b-int8", "quantised")
    assert MlflowClient().get_registered_model("spec_b-int8").tags["model_spec_id"] == "spec_b"


def test_an_unknown_family_is_refused(tracking_uri: str, logged_model) -> None:
    with pytest.raises(ValueError, match="spec spec_c: unknown model family 'svm'"):
        register_model(logged_model[0], "spec_c", family="svm", dataset_version="ds1")
    assert not [e for e in list_registered() if e.name == "spec_c"]


def test_each_recurrent_cell_registers_under_its_own_family(tracking_uri: str, logged_model) -> None:
    from medllm_pipelines.lib.train.registry import FAMILIES
    from medllm_pipelines.lib.train.sequence.networks import RECURRENT_CELLS
    from medllm_pipelines.lib.train.sequence.runs import REGISTRY_FAMILY

    assert {cell: REGISTRY_FAMILY[cell] for cell in RECURRENT_CELLS} == {"gru": "gru", "lstm": "lstm"}
    assert set(REGISTRY_FAMILY.values()) <= set(FAMILIES)
    registered = register_model(logged_model[0], "spec_gru", family="gru", dataset_version="ds1")
    assert registered.family == "gru"
    assert [e.family for e in list_registered() if e.name == "spec_gru"] == ["gru"]


@dataclass(frozen=True)
class Gate:
    passed: bool

    def as_metadata(self) -> dict:
        return {"passed": self.passed, "rule": "test AUC >= champion's"}


@pytest.mark.parametrize("gate", [None, Gate(passed=False), {"passed": False}, {"passed": "yes"}, object()])
def test_champion_is_refused_without_a_passed_gate(tracking_uri: str, logged_model, gate) -> None:
    register_model(logged_model[0], "spec_d", family="mlp", dataset_version="ds1")
    with pytest.raises(PromotionRefused, match="spec_d v1"):
        promote_to_champion("spec_d", "1", gate)
    assert CHAMPION not in MlflowClient().get_registered_model("spec_d").aliases


def test_a_passed_gate_promotes_to_champion_and_is_recorded(tracking_uri: str, logged_model) -> None:
    register_model(logged_model[0], "spec_e", family="gbm", dataset_version="ds1")
    promoted = promote_to_champion("spec_e", "1", Gate(passed=True))
    assert promoted.aliases == (CHALLENGER, CHAMPION) and promoted.family == "gbm"
    assert "test AUC >= champion's" in MlflowClient().get_model_version("spec_e", "1").tags["promotion_gate"]


def test_the_registry_lists_every_version_with_aliases_and_metrics(tracking_uri: str, logged_model) -> None:
    model_uri, run_id = logged_model
    register_model(model_uri, "spec_f", family="cnn", dataset_version="ds1", metrics={"val_roc_auc": 0.9})
    register_model(model_uri, "spec_f", family="cnn", dataset_version="ds2", metrics={"val_roc_auc": 0.95})
    entries = [e for e in list_registered() if e.name == "spec_f"]
    assert [(e.version, e.aliases, e.dataset_version) for e in entries] == [("2", (CHALLENGER,), "ds2"),
                                                                             ("1", (), "ds1")]
    assert entries[0].metrics == {"val_roc_auc": 0.95} and entries[0].run_id == run_id
    assert entries[0].as_dict()["family"] == "cnn"


def test_training_experiments_are_marked_as_model_training(tracking_uri: str, tmp_path: Path) -> None:
    """MLflow 3's UI opens an experiment on its runs, not on GenAI traces, when mlflow.experimentKind says so."""
    assert TRAINING_EXPERIMENT_TAGS == {"mlflow.experimentKind": "custom_model_development"}
    resource = MLflowResource(tracking_uri=tracking_uri, artifact_root=tmp_path.as_uri())
    client = MlflowClient(tracking_uri=tracking_uri)
    old = client.create_experiment("medllm/made_before", artifact_location=tmp_path.as_uri())
    assert resource.ensure_experiment("made_before") == old  # an existing experiment gets the tag too
    new = resource.ensure_experiment("made_now")
    for experiment_id in (old, new):
        assert client.get_experiment(experiment_id).tags["mlflow.experimentKind"] == "custom_model_development"
