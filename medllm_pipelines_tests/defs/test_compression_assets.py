"""train/diabetes_model_compressed and train/diabetes_model_distilled materialised on the small hospital (rows M7-M8).

The part of the graph they rest on (ingestion through curation and the trained MLP) is materialised once in
its own MEDLLM_HOME (conftest_lifecycle.materialise through the lifecycle job); every test reads that run.
"""

from __future__ import annotations

import json

import pytest

from medllm_pipelines.defs import keys
from medllm_pipelines_tests.conftest_lifecycle import run_lifecycle_in, stop_services, through

pytestmark = pytest.mark.slow

COMPRESSION_AND_DISTILLATION = through(keys.DIABETES_COMPRESSED, keys.DIABETES_DISTILLED)


@pytest.fixture(scope="module")
def compression_run(tmp_path_factory, small_hospital):
    home = tmp_path_factory.mktemp("compression_home")
    try:
        yield run_lifecycle_in(home, small_hospital, bad_input=False, selection=COMPRESSION_AND_DISTILLATION,
                               log_level="WARNING")
    finally:
        stop_services(home)


def _client(run):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=run.settings.mlflow_tracking_uri)


def test_the_mlp_is_compressed_with_a_report_and_registered_variants(compression_run) -> None:
    assert compression_run.result.success, compression_run.result.failed_checks()
    meta = compression_run.materialization(keys.DIABETES_COMPRESSED)
    assert meta["trained"] is True
    assert meta["variants"] == ["pruned_l1", "pruned_structured", "int8_dynamic", "onnx"]
    # ONNX computes what torch computes: it loses nothing and is always within tolerance.
    assert "onnx" in meta["variants_within_tolerance"]
    registered = meta["registered"]
    assert set(registered) == set(meta["variants_within_tolerance"])
    assert registered["onnx"]["registered_model"] == "t2d_risk-onnx" and "challenger" in registered["onnx"]["aliases"]
    assert "| variant |" in meta["comparison"]

    client = _client(compression_run)
    run = client.get_run(meta["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.tags["dagster_asset"] == keys.asset_name(keys.DIABETES_COMPRESSED)
    assert "onnx_p50_ms" in run.data.metrics and "fp32_roc_auc" in run.data.metrics
    report = json.loads(open(client.download_artifacts(run.info.run_id, "compression_report.json")).read())
    onnx = next(v for v in report["variants"] if v["variant"] == "onnx")
    assert onnx["failure"] is None and onnx["latency"]["p50_ms"] > 0
    assert {"sex", "age_band", "institution"} <= set(onnx["metrics_after"]["subgroups"])
    for variant in meta["variants_refused"]:  # a refused variant is reported, never registered
        assert not client.search_model_versions(f"name='t2d_risk-{variant}'")
    version = client.get_model_version("t2d_risk-onnx", registered["onnx"]["registered_version"])
    assert version.tags["family"] == "mlp" and version.tags["dataset_version"] == meta["dataset_version"]


def test_a_smaller_student_is_distilled_from_the_mlp(compression_run) -> None:
    meta = compression_run.materialization(keys.DIABETES_DISTILLED)
    assert meta["trained"] is True
    assert meta["student_parameters"] < meta["teacher_parameters"]
    assert meta["registered"]["registered"] is meta["within_tolerance"]
    run = _client(compression_run).get_run(meta["mlflow_run_id"])
    assert run.info.status == "FINISHED" and run.data.params["epochs_run"] == str(meta["epochs_run"])
    history = _client(compression_run).get_metric_history(run.info.run_id, "val_loss")
    assert len(history) == meta["epochs_run"]  # per-epoch curves, not one point
