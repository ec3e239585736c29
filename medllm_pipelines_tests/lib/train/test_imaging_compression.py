"""The lesion classifier CNN compressed (issue 11 item 4, row M7): static int8 and ONNX variants of a trained
MONAI network judged on the test slices against fp32, overall and per subgroup, with the tolerance gate."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from medllm_pipelines.lib.train.compression import _age_midpoint, compress_imaging_model, load_compression_config
from medllm_pipelines.lib.train.imaging.training import CLASSIFICATION, ImagingConfig, train_imaging_model
from medllm_pipelines_tests.lib.train.test_imaging import TINY_DENSENET, TINY_TRAINING, synthetic_lesion_frame


@pytest.fixture(scope="module")
def trained_classifier(tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("cnn_slices")
    frame = synthetic_lesion_frame(folder, seed=1)
    torch.set_num_threads(1)
    config = ImagingConfig.from_spec("lesion_classifier", CLASSIFICATION, TINY_DENSENET, TINY_TRAINING[CLASSIFICATION])
    result = train_imaging_model(frame, folder, config, tmp_path_factory.mktemp("cnn"), spec_id="lesion_classifier")
    return frame, folder, result


def test_static_int8_and_onnx_are_judged_against_fp32_per_subgroup(trained_classifier, tmp_path: Path) -> None:
    frame, folder, result = trained_classifier
    config = dataclasses.replace(load_compression_config("lesion_classifier"), variants=("int8_static", "onnx"),
                                 latency_calls=5, subgroup_min_rows=4)
    people = frame[["patient_pseudonym"]].assign(institution=np.where(frame.index % 2 == 0, "H1", "H2"),
                                                 sex=np.where(frame.index % 3 == 0, "female", "male"), age_band="55-59")
    suite = compress_imaging_model(result.model_dir, frame, folder, config, tmp_path, patients=people)
    reports = {r.variant: r for r in suite.reports}
    assert set(reports) == {"int8_static", "onnx"} and suite.n_evaluated == 12
    assert suite.baseline_metrics.overall["roc_auc"] == pytest.approx(result.test_metrics["test_roc_auc"])
    onnx = reports["onnx"]
    assert onnx.failure is None and onnx.within_tolerance  # an fp32 export: the same scores
    assert onnx.details["max_abs_diff_vs_torch"] < 1e-3
    int8 = reports["int8_static"]
    assert int8.details["calibration_rows"] == 40 and int8.file_bytes < int8.baseline_file_bytes
    # the gate: registered only when no gate metric lost more than the declared points
    assert int8.within_tolerance == all(int8.drop_points[m] is not None and int8.drop_points[m] <= config.tolerance_points
                                        for m in config.gate_metrics)
    assert set(suite.baseline_metrics.subgroups) == {"sex", "age_band", "institution"}
    assert set(suite.baseline_metrics.subgroups["age_band"]) == {"40-59"}


def test_a_segmentation_model_is_not_compressed_as_a_classifier(tmp_path: Path) -> None:
    import json

    (tmp_path / "model_spec.json").write_text(json.dumps({"format_version": 1, "task": "segmentation"}))
    with pytest.raises((ValueError, KeyError)):
        compress_imaging_model(tmp_path, pd.DataFrame(), tmp_path, load_compression_config("lesion_classifier"), tmp_path)


@pytest.mark.parametrize(("band", "midpoint"), [("55-59", 57.0), ("90+", 90.0), (None, None)])
def test_age_bands_of_the_patients_table_become_midpoints(band, midpoint) -> None:
    value = _age_midpoint(band)
    assert (np.isnan(value) if midpoint is None else value == midpoint)


def test_a_smaller_cnn_is_distilled_from_the_classifier_and_logged_as_a_pyfunc(trained_classifier, tmp_path: Path) -> None:
    import mlflow

    from medllm_pipelines.lib.train.distillation import distil_imaging, log_distillation, log_imaging_student
    from medllm_pipelines.lib.train.imaging.predictor import ImagingPredictor

    frame, folder, result = trained_classifier
    config = dataclasses.replace(load_compression_config("lesion_classifier"), latency_calls=5)
    config = dataclasses.replace(config, distillation={**config.distillation, "max_epochs": 6})
    report = distil_imaging(result.model_dir, frame, folder, config, tmp_path, patients=None)
    assert report.student_parameters < report.teacher_parameters
    assert report.student_metrics.overall["roc_auc"] > 0.6  # 12 test slices: far from chance
    student = ImagingPredictor.load(report.student_dir)  # the imaging model-folder layout, read back
    assert student.network.__class__.__name__ == "DenseNet" and student.spec["network"]["init_features"] == 8
    import mlflow.tracking._tracking_service.utils as tracking_utils

    previous = tracking_utils._tracking_uri
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    try:
        with mlflow.start_run():
            logged = log_distillation(report, dataset_version="d" * 64, log_student=log_imaging_student)
        probabilities = mlflow.pyfunc.load_model(logged["student_model_uri"]).predict(np.zeros((2, 64, 64), np.float32))
        assert probabilities.shape == (2,) and logged["registered"] == report.within_tolerance
    finally:
        mlflow.set_tracking_uri(previous)
