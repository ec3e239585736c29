"""Distilling the triage encoder (row M8): a smaller encoder on the teacher's soft labels, same tokenizer, judged
against the teacher on the test split, loadable as the triage model is, and registered only within tolerance."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from medllm_pipelines.lib.train.compression import load_compression_config
from medllm_pipelines.lib.train.distillation import log_distillation
from medllm_pipelines.lib.train.text.distillation import distil_text, log_text_student
from medllm_pipelines.lib.train.text.predictor import TextClassifierPredictor
from medllm_pipelines.lib.train.text.tokenizer import TokenizerMismatchError, train_tokenizer
from medllm_pipelines.lib.train.text.training import TextTrainConfig, train_text_classifier

CLASSES = ["Cardiology", "Dermatology", "Respiratory Medicine"]
WORDS = {
    "Cardiology": (["chest pain", "palpitations", "胸口闷痛", "心慌"], ["on exertion", "at night", "活动后", "一阵一阵"]),
    "Dermatology": (["itchy rash", "red spots", "起红疹子", "很痒"], ["on my arms", "after soap", "身上", "脸上"]),
    "Respiratory Medicine": (["cough", "phlegm", "咳嗽", "发烧"], ["for days", "with fever", "有黄痰", "喉咙痛"]),
}
TEACHER = TextTrainConfig(d_model=32, n_heads=2, n_layers=2, dim_feedforward=64, dropout=0.0, max_length=24, lr=0.01,
                          batch_size=16, max_epochs=5, early_stopping_patience=5, seed=5)
STUDENT = {"d_model": 16, "n_heads": 2, "n_layers": 1, "dim_feedforward": 32, "dropout": 0.0}


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    rng = np.random.default_rng(1)
    rows = []
    for i in range(180):
        label = CLASSES[i % 3]
        symptoms, details = WORDS[label]
        other = WORDS[CLASSES[(i + 1) % 3]][0]  # a symptom of another department: the teacher is not one-hot
        text = f"{symptoms[rng.integers(4)]} {details[rng.integers(4)]}" + (f" {other[rng.integers(4)]}" if i % 4 == 0 else "")
        split = "train" if i < 120 else "validation" if i < 150 else "test"
        rows.append({"text": text, "label": label, "language": "zh" if any(ord(c) > 255 for c in text) else "en",
                     "split": split, "patient_pseudonym": f"p{i}"})
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def tokenizer(frame):
    return train_tokenizer(frame.assign(source="dialogues")).tokenizer


@pytest.fixture(scope="module")
def teacher(frame, tokenizer, tmp_path_factory):
    return train_text_classifier(frame, tokenizer, CLASSES, TEACHER, tmp_path_factory.mktemp("teacher"), spec_id="triage")


def _config(**distillation):
    config = load_compression_config("triage")
    return dataclasses.replace(config, latency_calls=20, subgroup_min_rows=5, distillation={
        **config.distillation, "student": STUDENT, "lr": 0.01, "max_epochs": 8, "early_stopping_patience": 8,
        **distillation})


@pytest.fixture(scope="module")
def distilled(teacher, frame, tokenizer, tmp_path_factory):
    epochs: list[dict[str, float]] = []
    report = distil_text(teacher.model_dir, frame, tokenizer, _config(), tmp_path_factory.mktemp("distilled"),
                         on_epoch_metrics=lambda metrics, epoch: epochs.append(metrics))
    return report, epochs


def test_a_smaller_encoder_is_distilled_and_judged_against_its_teacher(distilled, teacher, frame) -> None:
    report, epochs = distilled
    assert len(epochs) == report.epochs_run and 0 <= report.best_epoch < report.epochs_run
    assert {"train_soft_loss", "train_hard_loss", "val_loss", "val_accuracy", "val_macro_f1"} <= set(epochs[-1])
    assert report.student_parameters < report.teacher_parameters / 2 and report.student_bytes < report.teacher_bytes
    # the teacher's figures are the ones its training measured on the same test split
    assert report.teacher_metrics.overall["accuracy"] == pytest.approx(teacher.test_metrics["test_accuracy"])
    assert report.student_metrics.overall["accuracy"] > 0.8 and report.student_metrics.n == 30
    assert set(report.student_metrics.overall) == {"accuracy", "macro_f1", "top3_accuracy"}
    assert set(report.student_metrics.subgroups["language"]) == {"en", "zh"}
    assert report.student_latency.p50_ms > 0 and report.teacher_latency.p95_ms >= report.teacher_latency.p50_ms
    drops = report.drop_points
    assert drops["accuracy"] == pytest.approx(100 * (report.teacher_metrics.overall["accuracy"]
                                                     - report.student_metrics.overall["accuracy"]), abs=1e-3)
    assert report.within_tolerance == all(drops[m] <= 2.0 + 1e-9 for m in ("accuracy", "macro_f1"))
    assert [row["model"] for row in report.table()] == ["teacher", "student"] and "macro_f1" in report.table()[0]
    # The student folder loads as the triage model does and predicts what the report measured.
    student = TextClassifierPredictor.load(report.student_dir)
    assert student.classes == CLASSES and student.spec["network"]["d_model"] == 16
    assert student.spec["network"]["max_length"] == TEACHER.max_length
    test = frame[frame["split"] == "test"]
    accuracy = float(np.mean(np.array(student.predict(test["text"].tolist())) == test["label"].to_numpy()))
    assert accuracy == pytest.approx(report.student_metrics.overall["accuracy"])


def test_alpha_weighs_the_teacher_s_soft_labels_against_the_hard_ones(teacher, frame, tokenizer, tmp_path) -> None:
    runs = {}
    for alpha in (0.0, 1.0):
        epochs: list[dict[str, float]] = []
        report = distil_text(teacher.model_dir, frame, tokenizer, _config(alpha=alpha, max_epochs=2),
                             tmp_path / str(alpha), on_epoch_metrics=lambda metrics, epoch: epochs.append(metrics))
        runs[alpha] = (report, epochs)
    for alpha, term in ((0.0, "train_hard_loss"), (1.0, "train_soft_loss")):
        assert all(e["train_loss"] == pytest.approx(e[term]) for e in runs[alpha][1]), alpha
    # the same seed and data: only the loss differs, and so do the students it trains
    weights = [torch.load(runs[a][0].student_dir / "network_state.pt", weights_only=True) for a in (0.0, 1.0)]
    assert not torch.equal(weights[0]["head.weight"], weights[1]["head.weight"])


def test_a_foreign_tokenizer_or_an_unknown_student_key_is_refused(teacher, frame) -> None:
    other = train_tokenizer(pd.DataFrame({"text": ["completely other words here"] * 5, "patient_pseudonym": ["x"] * 5,
                                          "language": ["en"] * 5, "source": ["notes"] * 5})).tokenizer
    with pytest.raises(TokenizerMismatchError, match="spec triage"):
        distil_text(teacher.model_dir, frame, other, _config(), Path("/nonexistent"))
    with pytest.raises(ValueError, match="spec triage: unknown student keys \\['vocab_size'\\]"):
        distil_text(teacher.model_dir, frame, None, _config(student={**STUDENT, "vocab_size": 9}), Path("/nonexistent"))


def test_the_student_is_logged_as_the_triage_pyfunc_and_registered_only_within_tolerance(distilled, tmp_path) -> None:
    import mlflow
    import mlflow.tracking._tracking_service.utils as tracking_utils
    from mlflow.tracking import MlflowClient

    report = distilled[0]
    previous = tracking_utils._tracking_uri
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    mlflow.set_tracking_uri(uri)
    try:
        experiment = mlflow.create_experiment("distillation", artifact_location=(tmp_path / "artifacts").as_uri())
        for candidate in (dataclasses.replace(report, tolerance_points=100.0),
                          dataclasses.replace(report, tolerance_points=-100.0)):
            with mlflow.start_run(experiment_id=experiment) as run:
                logged = log_distillation(candidate, dataset_version="v1", tracking_uri=uri, log_student=log_text_student)
            assert logged["registered"] is candidate.within_tolerance
            metrics = MlflowClient(uri).get_run(run.info.run_id).data.metrics
            assert {"teacher_accuracy", "student_macro_f1", "accuracy_points_lost", "student_p50_ms"} <= set(metrics)
        versions = MlflowClient(uri).search_model_versions("name='triage-distilled'")
        assert len(versions) == 1 and versions[0].tags["family"] == "distilled"
        model = mlflow.pyfunc.load_model(f"models:/triage-distilled/{versions[0].version}")
        out = model.predict(pd.DataFrame({"text": ["chest pain at night", "咳嗽 有黄痰"]}))
        assert out["department"].isin(CLASSES).all()
        assert out[[f"p[{c}]" for c in CLASSES]].sum(axis=1).round(6).eq(1.0).all()
    finally:
        mlflow.set_tracking_uri(previous)
