"""Averaging for imaging (issue 11 item 6, row M9): the lesion-presence probabilities of several classifiers (the
trained CNN and its distilled student, or two seeds) averaged, and the average compared with each member on the
same evaluation slices, overall and per sex, age band and institution.

Soft voting: the mean of the members' sigmoid probabilities, thresholded as the members are. No weights are fitted,
so nothing is learnt on the evaluation split.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from torch import nn

from medllm_pipelines.lib.train.compression import CompressionConfig, EvaluationData, torch_runner
from medllm_pipelines.lib.train.compression_metrics import GroupedMetrics, binary_scores, grouped_metrics

ENSEMBLE = "average"


@dataclass(frozen=True)
class AveragingComparison:
    """The averaged ensemble and each member on one evaluation split."""

    spec_id: str
    members: tuple[str, ...]
    metrics: dict[str, GroupedMetrics]  # by member name, and ENSEMBLE

    @property
    def best_member(self) -> str:
        return max(self.members, key=lambda m: self.metrics[m].overall.get("roc_auc") or float("-inf"))

    @property
    def gain_points(self) -> float | None:
        """Ensemble ROC-AUC minus the best member's, in points (0.01 of AUC); None when undefined."""
        ensemble, best = self.metrics[ENSEMBLE].overall.get("roc_auc"), self.metrics[self.best_member].overall.get("roc_auc")
        return None if ensemble is None or best is None else round(100.0 * (ensemble - best), 3)

    def table(self) -> list[dict[str, Any]]:
        return [{"model": name, **{k: self.metrics[name].overall.get(k) for k in ("roc_auc", "accuracy", "f1")}}
                for name in (*self.members, ENSEMBLE)]

    def mlflow_metrics(self) -> dict[str, float]:
        # prefixed: the distillation run that holds them already logs teacher_* and student_* of its own
        return {f"averaging.{row['model']}_{k}": float(v) for row in self.table() for k, v in row.items()
                if k != "model" and v is not None}

    def as_metadata(self) -> dict[str, Any]:
        return {"ensemble_members": list(self.members), "ensemble_method": "mean of member probabilities",
                "ensemble_metrics": self.metrics[ENSEMBLE].overall, "best_member": self.best_member,
                "ensemble_gain_points_vs_best_member": self.gain_points,
                "member_metrics": {m: self.metrics[m].overall for m in self.members},
                "ensemble_subgroups": self.metrics[ENSEMBLE].subgroups}


def average_members(members: Mapping[str, nn.Module], data: EvaluationData, *, spec_id: str = "",
                    min_rows: int = 10) -> AveragingComparison:
    """Each member's probabilities on ``data.inputs``, their mean, and the metrics of all of them."""
    if len(members) < 2:
        raise ValueError(f"spec {spec_id}: an averaging ensemble needs at least two members, got {list(members)}")
    probabilities = {name: binary_scores(torch_runner(module)(data.inputs)) for name, module in members.items()}
    probabilities[ENSEMBLE] = np.mean(np.stack(list(probabilities.values())), axis=0)
    metrics = {name: grouped_metrics(data.labels, scores, data.groups, threshold=data.threshold, min_rows=min_rows)
               for name, scores in probabilities.items()}
    return AveragingComparison(spec_id, tuple(members), metrics)


def average_imaging_models(model_dirs: Mapping[str, str | Path], frame: pd.DataFrame, images_folder: str | Path,
                           config: CompressionConfig, patients: pd.DataFrame | None = None) -> AveragingComparison:
    """Average the lesion classifiers in ``model_dirs`` (imaging predictor layout) on ``config``'s evaluation split."""
    from medllm_pipelines.lib.train.compression import imaging_evaluation_data
    from medllm_pipelines.lib.train.imaging.predictor import ImagingPredictor

    predictors = {name: ImagingPredictor.load(Path(path)) for name, path in model_dirs.items()}
    first = next(iter(predictors.values()))
    data = imaging_evaluation_data(first, frame, images_folder, config, patients)
    return average_members({name: p.network for name, p in predictors.items()}, data, spec_id=config.spec_id,
                           min_rows=config.subgroup_min_rows)


AVERAGING_ARTIFACT = "averaging_ensemble.json"


def log_averaging(comparison: AveragingComparison) -> None:
    """The comparison into the active MLflow run (``averaging.<member>_roc_auc``, ``averaging.average_roc_auc``, ...)
    and the report JSON."""
    import mlflow

    mlflow.log_metrics(comparison.mlflow_metrics())
    mlflow.log_dict({**comparison.as_metadata(), "table": comparison.table()}, AVERAGING_ARTIFACT)


__all__ = ["ENSEMBLE", "AveragingComparison", "average_imaging_models", "average_members", "log_averaging"]
