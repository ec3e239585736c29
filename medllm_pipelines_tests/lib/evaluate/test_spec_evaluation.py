"""The gate moves `champion` only on a pass; a failed gate keeps the previous champion (issue 12 item 11)."""

import mlflow
import numpy as np
import pytest
import torch

from medllm_pipelines.lib.evaluate.engine import evaluate_outputs
from medllm_pipelines.lib.evaluate.gate import gate_policy
from medllm_pipelines.lib.evaluate.model_report import write_model_report
from medllm_pipelines.lib.evaluate.spec_evaluation import log_and_gate, section_from_dict
from medllm_pipelines.lib.evaluate.outputs import ReportSection, Table
from medllm_pipelines.lib.train.registry import CHAMPION, list_registered, register_model
from medllm_pipelines_tests.lib.evaluate.test_engine import POLICY, _binary


@pytest.fixture()
def tracking(tmp_path, monkeypatch):
    import mlflow.tracking._tracking_service.utils as tracking_utils

    previous = tracking_utils._tracking_uri
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    mlflow.set_tracking_uri(uri)
    yield uri
    mlflow.set_tracking_uri(previous)


def _register(tmp_path, uri: str) -> tuple[str, str]:
    experiment = mlflow.get_experiment_by_name("t2d") or None
    experiment_id = experiment.experiment_id if experiment else mlflow.create_experiment(
        "t2d", artifact_location=(tmp_path / "artifacts").as_uri())
    with mlflow.start_run(experiment_id=experiment_id) as run:
        info = mlflow.pytorch.log_model(torch.nn.Linear(2, 1), name="model", serialization_format="pickle",
                                        pip_requirements=["torch"], input_example=np.zeros((1, 2), np.float32))
        registered = register_model(info.model_uri, "t2d_risk", family="mlp", dataset_version="a" * 64,
                                    tracking_uri=uri)
    return run.info.run_id, registered.version


def _gate(tmp_path, uri: str, memorised: bool) -> tuple[bool, str, str]:
    training_run, version = _register(tmp_path, uri)
    outputs = _binary(memorised=memorised)
    outputs = type(outputs)(**{**outputs.__dict__, "model_version": version})
    evaluation = evaluate_outputs("t2d_risk", outputs, gate_policy("t2d_risk", POLICY))
    files = write_model_report(evaluation, {"dataset_version": "a" * 64}, tmp_path / f"report-{version}")
    with mlflow.start_run(experiment_id=mlflow.get_experiment_by_name("t2d").experiment_id):
        promoted = log_and_gate(evaluation, files, {"mlflow_run_id": training_run}, uri)
    return promoted, version, training_run


def test_a_failed_gate_keeps_the_previous_champion(tmp_path, tracking) -> None:
    from mlflow.tracking import MlflowClient

    promoted, first, first_run = _gate(tmp_path, tracking, memorised=False)
    assert promoted
    promoted, second, _ = _gate(tmp_path, tracking, memorised=True)  # leaks membership: gate fails
    assert not promoted
    entries = {e.version: e for e in list_registered(tracking) if e.name == "t2d_risk"}
    assert CHAMPION in entries[first].aliases and CHAMPION not in entries[second].aliases
    assert entries[second].gate == {"evaluated": True, "passed": False, "failed": ["membership inference AUC"],
                                    "reason": ""}
    client = MlflowClient(tracking_uri=tracking)
    assert {a.path for a in client.list_artifacts(first_run, "evaluation")} >= {"evaluation/report.pdf"}
    assert client.get_run(first_run).data.tags["promotion_gate_passed"] == "true"


def test_a_section_survives_its_json_round_trip() -> None:
    section = ReportSection("public_benchmarks", "Public benchmarks", "5.3.2 (V5)", {"wdbc": 0.977},
                            (Table("WDBC", ("ours", "published"), ((0.977, 0.975),)),))
    again = section_from_dict(section.as_dict())
    assert again.as_dict() == section.as_dict()
