"""The deterioration LSTM compressed (row M7): int8 dynamic (nn.LSTM, nn.Linear) and ONNX, each judged on the test
windows, overall and per subgroup, against the tolerance of lib/train/configs/compression.yaml."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from medllm_pipelines.lib.curate.sequences import build_windows, split_stays, windows_with_splits
from medllm_pipelines.lib.curate.spec import load_spec
from medllm_pipelines.lib.synth.vitals import simulate_stay, stays_as_table
from medllm_pipelines.lib.train.compression import load_compression_config
from medllm_pipelines.lib.train.sequence.compression import compress_sequence_model
from medllm_pipelines.lib.train.sequence.runs import sequence_training_config
from medllm_pipelines.lib.train.sequence.training import train_deterioration_model


@pytest.fixture(scope="module")
def compressed(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sequence_compression")
    rng = np.random.default_rng(5)
    vitals = stays_as_table([simulate_stay(rng) for _ in range(160)])
    spec = load_spec("deterioration")
    dataset = build_windows(vitals, 12)
    windows = windows_with_splits(dataset.frame, split_stays(dataset.frame, spec.split_config).splits)
    trained = train_deterioration_model(vitals, windows, sequence_training_config(spec, "demo"), tmp / "model",
                                        spec_id=spec.id)
    persons = windows["patient_pseudonym"].drop_duplicates().reset_index(drop=True)
    patients = pd.DataFrame({"patient_pseudonym": persons, "institution": "hospital_a", "sex": np.where(persons.index % 2, "F", "M"),
                             "age_band": np.where(persons.index % 3, "70-74", "30-34")})
    config = load_compression_config("deterioration")
    suite = compress_sequence_model(trained.model_dir, vitals, windows, config, tmp / "compressed", patients=patients)
    return trained, suite


def test_the_lstm_is_quantised_and_exported_and_judged_on_the_test_windows(compressed) -> None:
    trained, suite = compressed
    reports = {r.variant: r for r in suite.reports}
    assert set(reports) == {"int8_dynamic", "onnx"}
    # the fp32 baseline is the trained network on the same windows
    assert suite.baseline_metrics.overall["roc_auc"] == pytest.approx(trained.test_metrics["test_roc_auc"], abs=1e-6)
    assert {"LSTM", "Linear"} <= set(reports["int8_dynamic"].details["layers"])
    assert reports["onnx"].failure is None and reports["onnx"].details["max_abs_diff_vs_torch"] < 1e-4
    for report in reports.values():
        assert report.latency.p50_ms > 0 and report.latency.p95_ms >= report.latency.p50_ms
        assert abs(report.drop_points["roc_auc"]) <= 1.0 and report.within_tolerance
    assert reports["int8_dynamic"].file_bytes < reports["int8_dynamic"].baseline_file_bytes


def test_subgroups_are_reported_by_sex_age_band_and_institution(compressed) -> None:
    _, suite = compressed
    assert {"sex", "age_band", "institution"} <= set(suite.baseline_metrics.subgroups)
    assert suite.as_metadata()["variants_within_tolerance"] == ["int8_dynamic", "onnx"]


def test_a_forecast_model_is_not_compressed_as_a_classifier(compressed, tmp_path) -> None:
    from medllm_pipelines.lib.train.sequence.compression import sequence_evaluation_data

    trained, _ = compressed
    spec_file = trained.model_dir / "model_spec.json"
    (tmp_path / "model_spec.json").write_text(spec_file.read_text().replace("deterioration_early_warning",
                                                                            "next_value_regression"))
    with pytest.raises(ValueError, match="spec deterioration: only the deterioration classifier"):
        sequence_evaluation_data(tmp_path, pd.DataFrame(), pd.DataFrame(), load_compression_config("deterioration"))
