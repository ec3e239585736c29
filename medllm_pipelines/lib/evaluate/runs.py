"""One evaluation of a trained spec model on its held-out split, next to its declared baseline.

The evaluate asset reads the dataset, the curate stage's preprocessing and
the training record, opens the MLflow run and hands over here; the model,
the baseline and the report all see inputs from the same fitted pipeline.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medllm_pipelines.lib.curate.dataset import SplitDataset
from medllm_pipelines.lib.curate.preprocessing import FittedPreprocessing
from medllm_pipelines.lib.curate.spec import ModelSpec
from medllm_pipelines.lib.evaluate.metrics import evaluate_against_baseline, fit_logistic_baseline
from medllm_pipelines.lib.evaluate.report import build_evaluation_report, write_report

EVALUATION_SPLIT = "test"
LABEL_COLUMN = "label"


@dataclass(frozen=True)
class SpecEvaluation:
    """Metrics of model and baseline on the evaluation split, and where the report is."""

    evaluation: dict[str, Any]
    json_path: Path
    html_path: Path
    n_evaluated: int
    dataset_version: str

    @property
    def model_metrics(self) -> dict[str, Any]:
        return self.evaluation["model_metrics"]

    @property
    def baseline_metrics(self) -> dict[str, Any]:
        return self.evaluation["baseline_metrics"]

    def mlflow_metrics(self) -> dict[str, float]:
        numeric = {f"test_{k}": v for k, v in self.model_metrics.items() if isinstance(v, (int, float))}
        numeric |= {f"baseline_test_{k}": v for k, v in self.baseline_metrics.items() if isinstance(v, (int, float))}
        return {k: float(v) for k, v in numeric.items() if v is not None}

    def summary(self) -> str:
        return (f"test ROC-AUC model {self.model_metrics.get('roc_auc')} vs baseline "
                f"{self.baseline_metrics.get('roc_auc')}; report {self.html_path}")

    def as_metadata(self) -> dict[str, Any]:
        return {
            "model_roc_auc": self.model_metrics.get("roc_auc"),
            "baseline_roc_auc": self.baseline_metrics.get("roc_auc"),
            "model_metrics": self.model_metrics,
            "baseline_metrics": self.baseline_metrics,
            "roc_auc_ci95": self.evaluation["confidence_intervals"]["model"]["roc_auc"],
            "evaluation_split": EVALUATION_SPLIT,
            "n_test": self.n_evaluated,
            "dataset_version": self.dataset_version,
        }


def evaluate_spec_model(
    dataset: SplitDataset,
    preprocessing: FittedPreprocessing,
    training_record: dict[str, Any],
    spec: ModelSpec,
    out_dir: Path,
    trace: dict[str, Any],
) -> SpecEvaluation:
    """Model vs baseline on the test split; ``trace``: run ids, code and package versions for the report."""
    from medllm_pipelines.lib.train.predictor import TabularPredictor

    predictor = TabularPredictor.load(training_record["model_dir"])
    if predictor.preprocessing.fingerprint() != preprocessing.fingerprint():
        raise ValueError(f"the model in {training_record['model_dir']} was not trained on the curate stage's "
                         f"preprocessing of dataset version {dataset.version[:16]}")
    train, test = dataset.split("train"), dataset.split(EVALUATION_SPLIT)
    baseline = fit_logistic_baseline(train.drop(columns=["split"]), preprocessing, LABEL_COLUMN)
    evaluation = evaluate_against_baseline(test[LABEL_COLUMN].to_numpy(), predictor.predict_proba(test),
                                           baseline.predict_proba(test), threshold=predictor.threshold, seed=spec.split_seed)
    report = build_evaluation_report(
        evaluation["model_metrics"], evaluation["baseline_metrics"],
        evaluation["roc_points_model"], evaluation["roc_points_baseline"],
        {
            "generated_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "dataset_version": dataset.version,
            "title": f"Evaluation of {spec.id} v{spec.version}",
            "model_name": f"{spec.id} (Lightning MLP)",
            "model_uri": str(training_record["mlflow_model_uri"]),
            "evaluation_split": EVALUATION_SPLIT,
            "split_sizes": dataset.rows_per_split,
            "threshold": predictor.threshold,
            "confidence_intervals": evaluation["confidence_intervals"],
            "baseline_description": baseline.describe(),
            **trace,
        },
    )
    json_path, html_path = write_report(report, out_dir)
    return SpecEvaluation(evaluation, Path(json_path), Path(html_path), len(test), dataset.version)


def log_evaluation(result: SpecEvaluation) -> None:
    """Test metrics of model and baseline, and the report files as artifacts, into the active MLflow run."""
    import mlflow

    mlflow.log_metrics(result.mlflow_metrics())
    for path in (result.json_path, result.html_path):
        mlflow.log_artifact(str(path), artifact_path="report")
