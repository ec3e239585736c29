"""Averaging for imaging (row M9): the mean of two classifiers' probabilities against each member, on the same
slices, overall and per subgroup."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from medllm_pipelines.lib.train.compression import EvaluationData
from medllm_pipelines.lib.train.imaging.ensemble import ENSEMBLE, average_members


class Pixel(nn.Module):
    """A stand-in classifier: the logit is one pixel of the slice, scaled."""

    def __init__(self, row: int, col: int) -> None:
        super().__init__()
        self.row, self.col = row, col
        self.scale = nn.Parameter(torch.tensor(3.0))

    def forward(self, slices: torch.Tensor) -> torch.Tensor:
        return self.scale * (slices[:, 0, self.row, self.col] - 0.5)


def _slices(n: int = 400) -> EvaluationData:
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, n)
    inputs = np.zeros((n, 1, 4, 4), dtype=np.float32)
    inputs[:, 0, 0, 0] = labels + rng.normal(0, 0.8, n)  # two members, each seeing the label through its own noise
    inputs[:, 0, 1, 1] = labels + rng.normal(0, 0.8, n)
    groups = pd.DataFrame({"sex": np.where(np.arange(n) % 2, "F", "M")})
    return EvaluationData(inputs=inputs, labels=labels, groups=groups)


def test_the_average_of_two_independent_members_beats_each_of_them() -> None:
    comparison = average_members({"teacher": Pixel(0, 0), "student": Pixel(1, 1)}, _slices(), spec_id="lesion_classifier")
    auc = {row["model"]: row["roc_auc"] for row in comparison.table()}
    assert set(auc) == {"teacher", "student", ENSEMBLE}
    assert auc[ENSEMBLE] > max(auc["teacher"], auc["student"]) + 0.02
    meta = comparison.as_metadata()
    assert meta["ensemble_gain_points_vs_best_member"] > 2 and meta["best_member"] in {"teacher", "student"}
    assert set(meta["ensemble_subgroups"]["sex"]) == {"F", "M"}
    assert "averaging.average_roc_auc" in comparison.mlflow_metrics()


def test_one_member_is_not_an_ensemble() -> None:
    with pytest.raises(ValueError, match="spec lesion_classifier: an averaging ensemble needs at least two members"):
        average_members({"teacher": Pixel(0, 0)}, _slices(), spec_id="lesion_classifier")
