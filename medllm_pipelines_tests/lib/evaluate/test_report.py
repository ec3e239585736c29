from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from medllm_pipelines.lib.evaluate.metrics import (
    binary_classification_metrics,
    evaluate_against_baseline,
    fit_logistic_baseline,
    roc_curve_points,
)
from medllm_pipelines.lib.evaluate.report import build_evaluation_report, render_report_html, write_report
from medllm_pipelines_tests.lib.train.datasets import LABEL_COLUMN, breast_cancer_frame, fitted_preprocessing

GENERATED_AT = "2026-11-28T12:00:00+00:00"


@pytest.fixture(scope="module")
def evaluation() -> tuple[dict[str, Any], pd.DataFrame]:
    """A full-featured baseline against a two-feature one, on a real held-out split with pseudonyms."""
    frame, features = breast_cancer_frame()
    train, test = frame[frame["split"] == "train"], frame[frame["split"] == "test"]
    model = fit_logistic_baseline(train, fitted_preprocessing(train, features), LABEL_COLUMN).predict_proba(test)
    weak = fit_logistic_baseline(train, fitted_preprocessing(train, ["mean texture", "sex"]), LABEL_COLUMN).predict_proba(test)
    return evaluate_against_baseline(test[LABEL_COLUMN].to_numpy(), model, weak, n_boot=200, seed=0), frame


def _context(**overrides: Any) -> dict[str, Any]:
    context = {
        "generated_at": GENERATED_AT,
        "dataset_version": "ds-3f2a9c",
        "dataset_content_hash": "sha256:3f2a9c",
        "split_sizes": {"train": 345, "validation": 109, "test": 115},
        "model_uri": "models:/m-0123",
        "run_ids": {"training": "abc", "dagster": "def"},
        "code_version": "git:deadbeef",
        "package_versions": {"torch": "2.13.0"},
        "baseline_description": "logistic regression on two features",
    }
    return {**context, **overrides}


def _report(evaluation: dict[str, Any], **context_overrides: Any) -> dict[str, Any]:
    return build_evaluation_report(
        evaluation["model_metrics"],
        evaluation["baseline_metrics"],
        evaluation["roc_points_model"],
        evaluation["roc_points_baseline"],
        _context(confidence_intervals=evaluation["confidence_intervals"], **context_overrides),
    )


def test_report_puts_model_and_baseline_side_by_side(evaluation: tuple[dict[str, Any], pd.DataFrame]) -> None:
    parts, _ = evaluation
    report = _report(parts)
    auc = next(row for row in report["comparison"] if row["metric"] == "roc_auc")
    assert auc["model"] == parts["model_metrics"]["roc_auc"]
    assert auc["baseline"] == parts["baseline_metrics"]["roc_auc"]
    assert auc["delta"] == pytest.approx(auc["model"] - auc["baseline"])
    assert auc["model_ci"][0] < auc["model"] < auc["model_ci"][1]
    assert report["dataset_version"] == "ds-3f2a9c" and report["generated_at"] == GENERATED_AT
    assert report["model"]["run_ids"]["training"] == "abc"
    assert "bootstrap" in report["methods"]


def test_report_json_round_trips(evaluation: tuple[dict[str, Any], pd.DataFrame], tmp_path: Path) -> None:
    report = _report(evaluation[0])
    json_path, html_path = write_report(report, tmp_path)
    assert json.loads(json_path.read_text()) == report
    assert html_path.read_text() == render_report_html(report)


def test_html_is_self_contained_and_shows_both_aucs(evaluation: tuple[dict[str, Any], pd.DataFrame]) -> None:
    parts, _ = evaluation
    page = render_report_html(_report(parts))
    references = re.findall(r'(?:src|href)\s*=\s*["\']([^"\']*)', page, flags=re.IGNORECASE)
    assert references and all(reference.startswith("data:image/png;base64,") for reference in references)
    assert "http://" not in page and "https://" not in page
    assert "<script" not in page.lower() and "<link" not in page.lower() and "@import" not in page
    assert f"{parts['model_metrics']['roc_auc']:.4f}" in page
    assert f"{parts['baseline_metrics']['roc_auc']:.4f}" in page
    assert render_report_html(_report(parts)) == page  # same inputs, same bytes


def test_html_escapes_every_string(evaluation: tuple[dict[str, Any], pd.DataFrame]) -> None:
    hostile = '<script>alert("x")</script>'
    page = render_report_html(_report(evaluation[0], title=hostile, code_version=hostile, notes={"note": hostile}))
    assert hostile not in page
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page


def test_report_holds_aggregates_only(evaluation: tuple[dict[str, Any], pd.DataFrame], tmp_path: Path) -> None:
    parts, frame = evaluation
    json_path, html_path = write_report(_report(parts), tmp_path)
    written = json_path.read_text() + html_path.read_text()
    assert not any(pseudonym in written for pseudonym in frame["patient_pseudonym"])
    report = json.loads(json_path.read_text())
    # ROC thresholds are individual patients' scores: dropped from the report.
    assert set(report["roc_curves"]["model"]) == {"fpr", "tpr", "auc", "undefined_reason"}


def test_unknown_context_keys_are_refused(evaluation: tuple[dict[str, Any], pd.DataFrame]) -> None:
    with pytest.raises(ValueError, match="patient_rows"):
        _report(evaluation[0], patient_rows=[{"patient_pseudonym": "P00001"}])


def test_metrics_from_different_cases_are_refused() -> None:
    model = binary_classification_metrics([0, 1, 1, 0], [0.2, 0.8, 0.7, 0.1])
    baseline = binary_classification_metrics([0, 1, 1], [0.2, 0.8, 0.7])
    with pytest.raises(ValueError, match="same cases"):
        build_evaluation_report(model, baseline, {}, {}, _context())


def test_single_class_evaluation_still_renders_with_reasons() -> None:
    y_true, model_score, baseline_score = [1, 1, 1], [0.9, 0.6, 0.3], [0.5, 0.5, 0.5]
    report = build_evaluation_report(
        binary_classification_metrics(y_true, model_score),
        binary_classification_metrics(y_true, baseline_score),
        roc_curve_points(y_true, model_score),
        roc_curve_points(y_true, baseline_score),
        _context(),
    )
    page = render_report_html(report)
    assert "ROC curve not drawn" in page and "only one class" in page
    assert "n/a" in page
    json.dumps(report, allow_nan=False)
