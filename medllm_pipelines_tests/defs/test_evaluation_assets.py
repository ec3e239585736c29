"""Every registered model gets an evaluation asset, an HTML and a PDF report and a gate decision (issue 12).

Reads the session's whole-lifecycle run (``embedded_run``: the small hospital, 160 patients): no extra
materialisation here.
"""

import hashlib
import json
from pathlib import Path

import pytest

from medllm_pipelines.defs import keys

pytestmark = pytest.mark.slow


def _evaluations(run) -> dict[str, dict]:
    return {keys.asset_name(key): run.materialization(key) for key in keys.EVALUATIONS}


def test_every_trained_spec_model_is_evaluated_with_reports_and_a_gate(embedded_run) -> None:
    evaluated = {name: meta for name, meta in _evaluations(embedded_run).items() if meta["evaluated"]}
    not_evaluated = {name: meta["reason"] for name, meta in _evaluations(embedded_run).items()
                     if not meta["evaluated"]}
    assert all("no " in reason and "trained" in reason for reason in not_evaluated.values()), not_evaluated
    assert keys.asset_name(keys.DIABETES_EVALUATION) in evaluated
    assert len(evaluated) >= 5, sorted(not_evaluated)
    for name, meta in evaluated.items():
        report = json.loads(Path(meta["report_json"]).read_text())
        for kind in ("html", "pdf"):
            path = Path(meta[f"report_{kind}"])
            assert hashlib.sha256(path.read_bytes()).hexdigest() == report["content_sha256"][kind], name
        assert Path(meta["report_pdf"]).read_bytes().startswith(b"%PDF")
        assert report["gate"]["passed"] == meta["gate_passed"]
        primary = meta["primary_metric"]
        interval = report["intervals"]["model"][primary]
        value = meta[f"model_{primary}"]
        if value is not None:  # undefined stays undefined, with its reason
            assert interval["percentile"] is None or interval["percentile"][0] - 1e-9 <= value <= \
                interval["percentile"][1] + 1e-9, name
        assert report["trace"]["dataset_version"] == meta["dataset_version"]
        assert 0.0 <= meta["membership_inference_auc"] <= 1.0 if meta["membership_inference_auc"] is not None \
            else "reason" in report["membership"]


def test_the_gate_is_a_check_on_every_evaluation_and_champion_follows_it(embedded_run) -> None:
    from medllm_pipelines.lib.train.registry import list_registered

    gates = {e.asset_key: e for e in embedded_run.check_evaluations() if e.check_name == keys.CHECK_PROMOTION_GATE}
    assert set(gates) == set(keys.EVALUATIONS)
    entries = {(e.name, e.version): e for e in list_registered(embedded_run.settings.mlflow_tracking_uri)}
    for key, meta in _evaluations(embedded_run).items():
        check = gates[keys.EVALUATIONS[[keys.asset_name(k) for k in keys.EVALUATIONS].index(key)]]
        if not meta["evaluated"]:
            assert not check.passed
            continue
        assert check.passed == meta["gate_passed"]
        entry = entries[(meta["registered_model"], str(meta["registered_version"]))]
        assert entry.gate["evaluated"] and entry.gate["passed"] == meta["gate_passed"]
        assert ("champion" in entry.aliases) == meta["gate_passed"], key


def test_the_t2d_report_holds_the_public_benchmarks_and_validation_sections(embedded_run) -> None:
    meta = embedded_run.materialization(keys.DIABETES_EVALUATION)
    report = json.loads(Path(meta["report_json"]).read_text())
    sections = {s["key"] for s in report["sections"]}
    assert {"public_benchmarks", "robustness", "explanations"} <= sections, sections
    html = Path(meta["report_html"]).read_text()
    assert "97.5" in html or "0.975" in html  # WDBC's published figure beside ours


def test_the_evaluation_report_is_an_artifact_of_the_training_run(embedded_run) -> None:
    from mlflow.tracking import MlflowClient

    meta = embedded_run.materialization(keys.DIABETES_EVALUATION)
    training = embedded_run.materialization(keys.DIABETES_MODEL)
    client = MlflowClient(tracking_uri=embedded_run.settings.mlflow_tracking_uri)
    names = {a.path for a in client.list_artifacts(training["mlflow_run_id"], "evaluation")}
    assert {"evaluation/report.html", "evaluation/report.pdf", "evaluation/report.json"} <= names
    evaluation = client.get_run(meta["mlflow_run_id"])
    assert evaluation.data.tags["training_run_id"] == training["mlflow_run_id"]
    assert "test_roc_auc" in evaluation.data.metrics and "membership_inference_auc" in evaluation.data.metrics
