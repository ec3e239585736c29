"""Distillation (row M8): Hinton's loss, a frozen teacher, and a smaller student that keeps the teacher's quality."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from medllm_pipelines.lib.train.compression import load_compression_config
from medllm_pipelines.lib.train.distillation import (
    AveragedTeacher,
    DistillationSystem,
    distil_tabular,
    distillation_loss,
    log_distillation,
    two_class_logits,
)
from medllm_pipelines.lib.train.predictor import TabularPredictor
from medllm_pipelines.lib.train.tabular import TrainResult


def test_one_logit_is_the_two_class_logits_zero_and_z() -> None:
    logits = torch.tensor([-2.0, 0.0, 3.0])
    assert torch.allclose(torch.softmax(two_class_logits(logits), dim=-1)[:, 1], torch.sigmoid(logits))


def test_the_loss_is_hinton_s_weighted_sum() -> None:
    torch.manual_seed(0)
    student, teacher, labels = torch.randn(8, 3), torch.randn(8, 3), torch.randint(0, 3, (8,))
    total, soft, hard = distillation_loss(student, teacher, labels, temperature=2.0, alpha=0.25)
    expected_soft = F.kl_div(F.log_softmax(student / 2, -1), F.softmax(teacher / 2, -1), reduction="batchmean") * 4
    assert torch.isclose(soft, expected_soft) and torch.isclose(hard, F.cross_entropy(student, labels))
    assert torch.isclose(total, 0.25 * expected_soft + 0.75 * hard)
    # A student that already matches its teacher loses nothing on the soft term.
    assert float(distillation_loss(teacher, teacher, labels, temperature=4.0, alpha=1.0)[1]) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="temperature"):
        distillation_loss(student, teacher, labels, temperature=0.0, alpha=0.5)


@pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")
def test_the_teacher_is_frozen_and_stays_in_eval_mode() -> None:
    teacher = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5), nn.Linear(4, 1), nn.Flatten(0))
    system = DistillationSystem(nn.Sequential(nn.Linear(4, 1), nn.Flatten(0)), teacher)
    system.train()
    assert not system.teacher.training and system.student.training
    assert all(not p.requires_grad for p in system.teacher.parameters())
    loss = system.training_step((torch.randn(6, 4), torch.randint(0, 2, (6,)).float()), 0)
    loss.backward()
    assert all(p.grad is None for p in system.teacher.parameters())


def test_an_averaged_teacher_averages_its_members_logits() -> None:
    first, second = nn.Linear(3, 2), nn.Linear(3, 2)
    inputs = torch.randn(5, 3)
    assert torch.allclose(AveragedTeacher([first, second])(inputs), (first(inputs) + second(inputs)) / 2)


@pytest.fixture(scope="module")
def distilled(trained: TrainResult, cancer_frame, tmp_path_factory: pytest.TempPathFactory):
    frame, _ = cancer_frame
    frame = frame.assign(age_years=np.linspace(25, 85, len(frame)))
    config = load_compression_config("t2d_risk")
    config = dataclasses.replace(config, latency_calls=30,
                                 distillation={**config.distillation, "max_epochs": 15, "batch_size": 32})
    epochs: list[int] = []
    report = distil_tabular(trained.model_dir, frame, config, tmp_path_factory.mktemp("distilled"),
                            on_epoch_metrics=lambda m, e: epochs.append(e))
    return report, epochs, config, frame


def test_a_smaller_student_keeps_the_mlp_teacher_s_quality(distilled, trained: TrainResult) -> None:
    report, epochs, config, frame = distilled
    assert epochs == list(range(report.epochs_run)) and 0 <= report.best_epoch < report.epochs_run
    assert report.student_parameters < report.teacher_parameters / 2
    assert report.student_bytes < report.teacher_bytes
    assert report.teacher_metrics.overall["roc_auc"] > 0.95
    assert report.student_metrics.overall["roc_auc"] > 0.95
    assert report.within_tolerance == (report.drop_points["roc_auc"] <= config.distillation["tolerance_points"])
    assert set(report.student_metrics.subgroups) == {"sex", "age_band"}  # no institution column here
    # The student directory loads like any trained model and serves the same preprocessing.
    student = TabularPredictor.load(report.student_dir)
    assert student.spec["network"]["hidden_sizes"] == config.distillation["student"]["hidden_sizes"]
    assert student.preprocessing.fingerprint() == TabularPredictor.load(trained.model_dir).preprocessing.fingerprint()
    assert len(student.predict_proba(frame.head(4))) == 4
    assert {"student_parameters", "teacher_metrics", "within_tolerance"} <= set(report.as_metadata())


def test_the_student_is_logged_and_registered_only_within_tolerance(distilled, tmp_path: Path) -> None:
    import mlflow
    import mlflow.tracking._tracking_service.utils as tracking_utils
    from mlflow.tracking import MlflowClient

    report = distilled[0]
    previous = tracking_utils._tracking_uri
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    mlflow.set_tracking_uri(uri)
    try:
        experiment = mlflow.create_experiment("distillation", artifact_location=(tmp_path / "artifacts").as_uri())
        for candidate in (report, dataclasses.replace(report, tolerance_points=-100.0)):
            with mlflow.start_run(experiment_id=experiment) as run:
                logged = log_distillation(candidate, dataset_version="v1", tracking_uri=uri)
            assert logged["registered"] is candidate.within_tolerance
            assert MlflowClient(uri).get_run(run.info.run_id).data.params["best_epoch"] == str(report.best_epoch)
        versions = MlflowClient(uri).search_model_versions("name='t2d_risk-distilled'")
        assert len(versions) == int(report.within_tolerance)
    finally:
        mlflow.set_tracking_uri(previous)
