"""Compression of any nn.Module (row M7): pruning, int8 dynamic/static, ONNX, and the report that gates registration."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from mlflow.tracking import MlflowClient
from torch import nn

from medllm_pipelines.lib.train.compression import (
    CompressionConfig,
    EvaluationData,
    compare_outputs,
    compress_model,
    compress_tabular_model,
    export_onnx,
    load_compression_config,
    onnx_runner,
    prune_magnitude,
    prune_structured,
    quantise_dynamic_int8,
    quantise_static_int8,
    register_within_tolerance,
    torch_runner,
    weight_sparsity,
)
from medllm_pipelines.lib.train.compression_metrics import (
    GroupedMetrics,
    age_bands,
    binary_scores,
    markdown_table,
    measure_latency,
)
from medllm_pipelines.lib.train.tabular import TrainResult


class SmallCNN(nn.Module):
    """A lesion-classifier-shaped network (conv-bn-relu blocks, pooling, two logits), small enough for a unit test."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.head = nn.Linear(16, 2)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))


class SmallSequenceModel(nn.Module):
    """An early-warning-shaped network: an LSTM over hourly vitals, a logit from its last state."""

    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(4, 8, batch_first=True)
        self.head = nn.Linear(8, 1)

    def forward(self, sequence: torch.Tensor) -> torch.Tensor:
        return self.head(self.lstm(sequence)[0][:, -1]).squeeze(-1)


def _mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 1), nn.Flatten(0)).eval()


def _config(**overrides) -> CompressionConfig:
    base = dict(spec_id="toy", version="test", base_family="mlp", variants=("pruned_l1", "int8_dynamic", "onnx"),
                tolerance_points=1.0, gate_metrics=("roc_auc", "accuracy"), latency_calls=20)
    return CompressionConfig(**{**base, **overrides})


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return np.random.default_rng(0).normal(size=(24, 1, 32, 32)).astype(np.float32)


def test_magnitude_pruning_zeroes_the_share_asked_for_and_is_permanent() -> None:
    model = _mlp()
    pruned = prune_magnitude(model, 0.5)
    assert weight_sparsity(pruned) == pytest.approx(0.5, abs=0.01)
    assert weight_sparsity(model) == 0.0  # the original is left alone
    assert not any(name.endswith("_orig") for name, _ in pruned.named_parameters())  # no reparametrisation left
    assert all(not hasattr(m, "weight_mask") for m in pruned.modules())


def test_structured_pruning_removes_whole_units_but_keeps_the_output_layer() -> None:
    pruned = prune_structured(_mlp(), 0.25)
    first, second, last = (m for m in pruned.modules() if isinstance(m, nn.Linear))
    assert int((first.weight.abs().sum(dim=1) == 0).sum()) == 8  # 25% of 32 units
    assert int((second.weight.abs().sum(dim=1) == 0).sum()) == 4
    assert int((last.weight == 0).sum()) == 0


def test_dynamic_int8_quantises_linear_and_lstm_and_stays_close() -> None:
    torch.manual_seed(0)
    lstm = SmallSequenceModel().eval()
    quantised = quantise_dynamic_int8(lstm)
    assert "quantized.dynamic" in type(quantised.lstm).__module__
    assert "quantized.dynamic" in type(quantised.head).__module__
    sequence = torch.randn(3, 5, 4)
    assert torch.allclose(quantised(sequence), lstm(sequence), atol=0.05)
    mlp = _mlp()
    quantised_mlp = quantise_dynamic_int8(mlp)
    assert sum("quantized.dynamic" in type(m).__module__ for m in quantised_mlp.modules()) == 3
    rows = torch.randn(50, 6)
    assert torch.allclose(quantised_mlp(rows), mlp(rows), atol=0.05)


def test_static_int8_calibrates_a_cnn_and_keeps_its_predictions(images: np.ndarray) -> None:
    model = SmallCNN().eval()
    batches = [torch.from_numpy(b) for b in np.array_split(images, 4)]
    quantised = quantise_static_int8(model, batches[0][:1], batches)
    assert any("quantized" in type(m).__module__ for m in quantised.modules())
    expected, actual = torch_runner(model)(images), torch_runner(quantised)(images)
    assert np.abs(expected - actual).max() < 0.1
    with pytest.raises(ValueError, match="calibration"):
        quantise_static_int8(model, batches[0][:1], [])


def test_a_cnn_is_compressed_after_a_deterministic_training(images: np.ndarray, tmp_path: Path) -> None:
    """Lightning's deterministic=True leaves deterministic algorithms on; quantised kernels have none."""
    config = _config(base_family="cnn", variants=("pruned_structured", "int8_static", "onnx"), gate_metrics=("roc_auc",))
    torch.use_deterministic_algorithms(True)
    try:
        suite = compress_model(SmallCNN().eval(), EvaluationData(images, np.arange(len(images)) % 2, calibration=images),
                               config, tmp_path)
        assert torch.are_deterministic_algorithms_enabled()  # restored
    finally:
        torch.use_deterministic_algorithms(False)
    assert [r.variant for r in suite.reports] == ["pruned_structured", "int8_static", "onnx"]
    assert suite.reports[1].family == "quantised" and suite.reports[1].details["calibration_batches"] == 8
    assert suite.reports[2].failure is None
    assert suite.reports[2].file_bytes > suite.baseline_file_bytes / 2  # the weights are inside the .onnx file


@pytest.mark.parametrize("batch", [1, 7])
def test_onnx_export_runs_in_onnxruntime_like_torch(tmp_path: Path, images: np.ndarray, batch: int) -> None:
    model = SmallCNN().eval()
    path = export_onnx(model, torch.from_numpy(images[:1]), tmp_path / "cnn.onnx")
    close, diff = compare_outputs(torch_runner(model)(images[:batch]), onnx_runner(path)(images[:batch]))
    assert close, diff


def test_latency_is_measured_per_call_on_one_thread() -> None:
    threads = torch.get_num_threads()
    latency = measure_latency(torch_runner(_mlp()), np.zeros((5, 6), dtype=np.float32), calls=30, batch_size=2)
    assert latency.calls == 30 and latency.batch_size == 2
    assert 0 < latency.p50_ms <= latency.p95_ms
    assert torch.get_num_threads() == threads  # restored


def test_age_bands_follow_the_declared_edges() -> None:
    bands = age_bands(pd.Series([12.5, 40.0, 59.9, 60.0, None]), [40, 60])
    assert bands.tolist() == ["<40", "40-59", "40-59", "60+", "unknown"]


def test_binary_scores_accept_one_logit_or_class_logits() -> None:
    assert binary_scores(np.array([0.0, 100.0])).round(3).tolist() == [0.5, 1.0]
    assert binary_scores(np.array([[0.0, 0.0], [0.0, 100.0]])).round(3).tolist() == [0.5, 1.0]


def test_a_variant_losing_more_than_the_tolerance_is_refused(tmp_path: Path) -> None:
    model = _mlp()
    rows = np.random.default_rng(1).normal(size=(80, 6)).astype(np.float32)
    labels = (torch_runner(model)(rows) > np.median(torch_runner(model)(rows))).astype(int)
    suite = compress_model(model, EvaluationData(rows, labels), _config(variants=("pruned_l1",)), tmp_path)
    report = suite.reports[0]
    worse = GroupedMetrics({**report.metrics_before.overall, "roc_auc": report.metrics_before.overall["roc_auc"] - 0.02},
                           report.metrics_after.n, {})
    refused = dataclasses.replace(report, metrics_after=worse)
    assert refused.drop_points["roc_auc"] == pytest.approx(2.0)
    assert not refused.within_tolerance and "outside" in refused.verdict()
    assert not dataclasses.replace(report, failure="onnxruntime outputs differ").within_tolerance


def test_the_t2d_model_is_compressed_with_a_report_per_variant(trained: TrainResult, cancer_frame, tmp_path: Path) -> None:
    frame, _ = cancer_frame
    frame = frame.assign(age_years=np.linspace(25, 85, len(frame)))
    patients = pd.DataFrame({"patient_pseudonym": frame["patient_pseudonym"],
                             "institution": np.where(np.arange(len(frame)) % 3, "hzsf", "site_b")})
    config = _config(variants=("pruned_l1", "pruned_structured", "int8_dynamic", "onnx"), latency_calls=30,
                     subgroup_min_rows=5)
    suite = compress_tabular_model(trained.model_dir, frame, config, tmp_path, patients=patients)
    by_name = {r.variant: r for r in suite.reports}
    assert list(by_name) == ["pruned_l1", "pruned_structured", "int8_dynamic", "onnx"]
    onnx = by_name["onnx"]
    assert onnx.failure is None and onnx.drop_points["roc_auc"] == pytest.approx(0.0, abs=1e-6) and onnx.within_tolerance
    assert by_name["pruned_l1"].details["weight_sparsity"] == pytest.approx(0.3, abs=0.01)
    assert set(onnx.metrics_after.subgroups) == {"sex", "age_band", "institution"}
    assert set(onnx.metrics_after.subgroups["institution"]) == {"hzsf", "site_b"}
    assert suite.n_evaluated == int((frame["split"] == "test").sum())
    row = suite.table()[0]
    assert row["variant"] == "fp32" and row["file_bytes"] > 0
    table = markdown_table(suite.table()).splitlines()
    assert table[0].startswith("| variant | family") and len(table) == 2 + 1 + len(suite.reports)
    assert {"variants_within_tolerance", "compression_config_version", "fp32_p50_ms"} <= set(suite.as_metadata())


def test_the_declared_config_is_read_and_checked(tmp_path: Path) -> None:
    config = load_compression_config("t2d_risk")
    assert config.tolerance_points == 1.0 and "onnx" in config.variants and config.version
    with pytest.raises(KeyError, match="no_such_spec"):
        load_compression_config("no_such_spec")
    with pytest.raises(ValueError, match="unknown variants"):
        _config(variants=("int4",))


@pytest.fixture()
def tracking_uri(tmp_path: Path) -> Iterator[str]:
    import mlflow.tracking._tracking_service.utils as tracking_utils

    previous = tracking_utils._tracking_uri
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    mlflow.set_tracking_uri(uri)
    try:
        yield uri
    finally:
        if mlflow.active_run() is not None:
            mlflow.end_run()
        mlflow.set_tracking_uri(previous)


def test_only_variants_within_tolerance_are_registered(tracking_uri: str, tmp_path: Path) -> None:
    model = _mlp()
    rows = np.random.default_rng(2).normal(size=(60, 6)).astype(np.float32)
    labels = (rows[:, 0] > 0).astype(int)
    suite = compress_model(model, EvaluationData(rows, labels), _config(variants=("int8_dynamic", "onnx")), tmp_path)
    refused = dataclasses.replace(suite.reports[0], failure="planted for the test")
    suite = dataclasses.replace(suite, reports=(refused, suite.reports[1]))
    experiment = mlflow.create_experiment("compression", artifact_location=(tmp_path / "artifacts").as_uri())
    with mlflow.start_run(experiment_id=experiment):
        registered = register_within_tolerance(suite, rows[:2], dataset_version="v1", tracking_uri=tracking_uri)
    assert list(registered) == ["onnx"]
    names = {m.name for m in MlflowClient(tracking_uri).search_registered_models()}
    assert names == {"toy-onnx"}
    assert registered["onnx"]["aliases"] == ["challenger"] and registered["onnx"]["family"] == "mlp"
