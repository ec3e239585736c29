"""``medllm models``: every registered model of the configured environment, with its metrics."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from medllm_pipelines.cli import main
from medllm_pipelines.lib.train.registry import promote_to_champion, record_gate_result, register_model


@pytest.fixture()
def environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    import mlflow.tracking._tracking_service.utils as tracking_utils

    uri = f"sqlite:///{tmp_path}/registry.db"
    monkeypatch.setenv("MEDLLM_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    previous = tracking_utils._tracking_uri
    yield uri
    mlflow.set_tracking_uri(previous)


def _models(*args: str) -> str:
    result = CliRunner().invoke(main, ["models", *args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def test_an_environment_without_a_store_lists_no_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDLLM_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert json.loads(_models("--json")) == []
    assert "no registered model" in _models()
    assert not (tmp_path / "home" / "mlflow" / "mlflow.db").exists()  # listing never creates a store


def test_models_lists_each_registered_version_with_family_aliases_dataset_run_and_metrics(
    environment: str, tmp_path: Path
) -> None:
    mlflow.set_tracking_uri(environment)
    experiment_id = mlflow.create_experiment("cli", artifact_location=(tmp_path / "artifacts").as_uri())
    with mlflow.start_run(experiment_id=experiment_id) as run:
        info = mlflow.pytorch.log_model(torch.nn.Linear(2, 1), name="model", serialization_format="pickle",
                                        pip_requirements=["torch"], input_example=np.zeros((1, 2), np.float32))
        register_model(info.model_uri, "t2d_risk", family="mlp", dataset_version="a" * 64,
                       metrics={"val_roc_auc": 0.894, "test_roc_auc": 0.881})
        register_model(info.model_uri, "t2d_risk", family="quantised", dataset_version="a" * 64,
                       name="t2d_risk-int8", metrics={"test_roc_auc": 0.879})

        register_model(info.model_uri, "t2d_risk", family="mlp", dataset_version="b" * 64,
                       metrics={"test_roc_auc": 0.7})
    promote_to_champion("t2d_risk", "1", {"passed": True, "failed": [], "reason": ""})
    record_gate_result("t2d_risk", "2", {"passed": False, "failed": ["ece"], "reason": ""})

    listed = json.loads(_models("--json"))
    not_evaluated = {"evaluated": False, "passed": False, "reason": "no evaluation of this version has run"}
    assert listed == [
        {"name": "t2d_risk", "version": "2", "aliases": ["challenger"], "family": "mlp", "dataset_version": "b" * 64,
         "run_id": run.info.run_id, "metrics": {"test_roc_auc": 0.7},
         "gate": {"evaluated": True, "passed": False, "failed": ["ece"], "reason": ""}},
        {"name": "t2d_risk", "version": "1", "aliases": ["champion"], "family": "mlp", "dataset_version": "a" * 64,
         "run_id": run.info.run_id, "metrics": {"test_roc_auc": 0.881, "val_roc_auc": 0.894},
         "gate": {"evaluated": True, "passed": True, "failed": [], "reason": ""}},
        {"name": "t2d_risk-int8", "version": "1", "aliases": ["challenger"], "family": "quantised",
         "dataset_version": "a" * 64, "run_id": run.info.run_id, "metrics": {"test_roc_auc": 0.879},
         "gate": not_evaluated},
    ]
    table = _models().splitlines()
    assert table[0].split() == ["model", "family", "version", "aliases", "gate", "dataset", "run", "metrics"]
    assert table[1].split()[:7] == ["t2d_risk", "mlp", "2", "challenger", "failed", "b" * 16, run.info.run_id]
    assert table[2].split()[:5] == ["t2d_risk", "mlp", "1", "champion", "passed"]
    assert table[2].endswith("test_roc_auc 0.881, val_roc_auc 0.894")
    assert table[3].split()[4] == "-"  # never evaluated


def test_preparing_gemma_without_accepting_its_terms_is_refused(tmp_path) -> None:
    from click.testing import CliRunner

    from medllm_pipelines.cli import main

    result = CliRunner().invoke(main, ["prepare-gemma-base", str(tmp_path / "gemma")])
    assert result.exit_code != 0 and "Gemma Terms of Use" in result.output
    assert not (tmp_path / "gemma").exists()
