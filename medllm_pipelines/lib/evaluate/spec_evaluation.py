"""What every evaluation asset does (issue 12): find the model trained on this dataset version, have its family
adapter score it, run the engine, write the report, log it to MLflow and apply the promotion gate.

The evaluate assets (``defs/evaluate/assets.py``) only read the warehouse tables and open the MLflow run; the
flow is here so that it runs, and is tested, without Dagster.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import pandas as pd

from medllm_pipelines.lib.curate.dataset import SplitDataset
from medllm_pipelines.lib.curate.spec import DEMO_SIZE, ModelSpec, load_spec
from medllm_pipelines.lib.evaluate.adapters import EvaluationRequest, adapter_for
from medllm_pipelines.lib.evaluate.engine import ModelEvaluation, evaluate_outputs, policy_or_error
from medllm_pipelines.lib.evaluate.gate import GatePolicy
from medllm_pipelines.lib.evaluate.model_report import ReportFiles, write_model_report
from medllm_pipelines.lib.evaluate.outputs import ReportSection
from medllm_pipelines.lib.train.store import ModelStore

REPORT_ARTIFACT_PATH = "evaluation"
SectionsFunction = Callable[[EvaluationRequest], Sequence[ReportSection]]


@dataclass(frozen=True)
class PreparedEvaluation:
    """The spec, its gate policy (or why there is none), the adapter, the dataset and the model's training record."""

    spec: ModelSpec
    policy: GatePolicy | None
    policy_error: str
    adapter: ModuleType
    dataset: SplitDataset
    record: dict[str, Any] | None
    tables: Mapping[str, pd.DataFrame] = field(default_factory=dict)

    @property
    def trained(self) -> bool:
        return self.record is not None

    def not_evaluated_reason(self) -> str:
        return (f"no {self.spec.id} model was trained on dataset version {self.dataset.version[:16]} "
                "(the training asset reported trained=false, or has not run)")


def prepare(spec_id: str, tables: Mapping[str, pd.DataFrame], store: ModelStore) -> PreparedEvaluation:
    spec = load_spec(spec_id)
    policy, error = policy_or_error(spec.id, spec.evaluation)
    info = adapter_for(spec.id)
    missing = sorted(set(info.tables) - set(tables))
    if missing:
        raise KeyError(f"spec {spec.id}: the {info.module} adapter reads the tables {missing}, which were not given")
    adapter = info.load()
    dataset = adapter.dataset(spec, tables)
    return PreparedEvaluation(spec, policy, error, adapter, dataset, store.training_record(spec.id, dataset.version),
                              tables)


@dataclass(frozen=True)
class SpecEvaluationResult:
    evaluation: ModelEvaluation
    files: ReportFiles
    promoted: bool
    sections: tuple[ReportSection, ...]

    def as_metadata(self) -> dict[str, Any]:
        evaluation = self.evaluation
        primary = evaluation.primary_metric
        interval = evaluation.intervals.get("model", {}).get(primary, {})
        metadata: dict[str, Any] = {
            "evaluated": True,
            "registered_model": evaluation.model_name,
            "registered_version": evaluation.model_version,
            "task": evaluation.task,
            "primary_metric": primary,
            f"model_{primary}": evaluation.model_value(primary),
            f"baseline_{primary}": evaluation.baseline_value(primary),
            f"{primary}_ci95_percentile": interval.get("percentile"),
            f"{primary}_ci95_bca": interval.get("bca"),
            "baseline": evaluation.baseline_name,
            "model_metrics": evaluation.metrics.get("model", {}).get("values", {}),
            "baseline_metrics": evaluation.metrics.get("baseline", {}).get("values", {}),
            "undefined_metrics": evaluation.metrics.get("model", {}).get("undefined", {}),
            "n_test": evaluation.counts.get("test"),
            "decision_threshold": evaluation.threshold.get("threshold"),
            "ece": evaluation.calibration.get("ece"),
            "largest_subgroup_gap": evaluation.fairness.get("largest_gap"),
            "membership_inference_auc": evaluation.membership.get("auc"),
            "gate_passed": evaluation.gate.passed,
            "gate": evaluation.gate.as_metadata(),
            "champion": self.promoted,
            "report_sha256": dict(self.files.sha256),
        }
        for section in self.sections:
            metadata[f"section_{section.key}"] = section.as_dict()["summary"]
        return metadata


def evaluate_prepared(
    prepared: PreparedEvaluation,
    store: ModelStore,
    folders: Mapping[str, Path],
    out_dir: Path,
    trace: Mapping[str, Any],
    *,
    size: str = DEMO_SIZE,
    extra_sections: SectionsFunction | None = None,
    given_sections: Sequence[ReportSection] = (),
    seed: int = 0,
) -> tuple[ModelEvaluation, ReportFiles, tuple[ReportSection, ...]]:
    """The adapter's outputs -> the engine -> report.json/.html/.pdf in ``out_dir``."""
    if prepared.record is None:
        raise ValueError(prepared.not_evaluated_reason())
    request = EvaluationRequest(spec=prepared.spec, policy=prepared.policy, record=prepared.record,
                                dataset=prepared.dataset, tables=prepared.tables, store=store,
                                folders=folders, size=size, seed=seed)
    outputs = prepared.adapter.outputs(request)
    evaluation = evaluate_outputs(prepared.spec.id, outputs, prepared.policy, seed=seed,
                                  policy_error=prepared.policy_error)
    extra = tuple(given_sections) + (tuple(extra_sections(request)) if extra_sections else ())
    files = write_model_report(evaluation, trace, out_dir, extra)
    return evaluation, files, (*evaluation.sections, *extra)


def log_and_gate(evaluation: ModelEvaluation, files: ReportFiles, record: Mapping[str, Any],
                 tracking_uri: str | None = None) -> bool:
    """Metrics and report into the active MLflow run and the model's training run; then the gate.

    A passed gate points ``champion`` at the version (``promote_to_champion``); a failed one only records its
    decision on the version, and ``champion`` stays where it was. Returns whether the version is now champion.
    """
    import mlflow
    from mlflow.tracking import MlflowClient

    from medllm_pipelines.lib.train.registry import promote_to_champion, record_gate_result

    mlflow.log_metrics(evaluation.mlflow_metrics())
    mlflow.log_param("gate_passed", evaluation.gate.passed)
    for path in (files.json_path, files.html_path, files.pdf_path):
        mlflow.log_artifact(str(path), artifact_path=REPORT_ARTIFACT_PATH)
    client = MlflowClient(tracking_uri=tracking_uri or mlflow.get_tracking_uri())
    training_run = str(record.get("mlflow_run_id") or "")
    if training_run:
        for path in (files.json_path, files.html_path, files.pdf_path):
            client.log_artifact(training_run, str(path), artifact_path=REPORT_ARTIFACT_PATH)
        client.set_tag(training_run, "promotion_gate_passed", str(evaluation.gate.passed).lower())
    name, version = evaluation.model_name, evaluation.model_version
    if not name or not version:
        return False
    decision = evaluation.gate.as_metadata()
    if evaluation.gate.passed:
        promote_to_champion(name, version, decision, tracking_uri=tracking_uri)
        return True
    record_gate_result(name, version, decision, tracking_uri=tracking_uri)
    return False


def section_from_dict(data: Mapping[str, Any]) -> ReportSection:
    """A section written as JSON by another asset (the public benchmarks), its tables kept, figures dropped."""
    from medllm_pipelines.lib.evaluate.outputs import Table

    tables = tuple(Table(t["title"], tuple(t["headers"]), tuple(tuple(r) for r in t["rows"]))
                   for t in data.get("tables", []))
    return ReportSection(str(data["key"]), str(data["title"]), str(data["clause"]), dict(data.get("summary") or {}),
                         tables, (), str(data.get("text", "")))


def read_section(path: Path) -> ReportSection | None:
    return section_from_dict(json.loads(path.read_text())) if path.is_file() else None
