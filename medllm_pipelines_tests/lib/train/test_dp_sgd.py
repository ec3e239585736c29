"""Optional DP-SGD training (Opacus): the preflight names unsupported layers; a private run keeps its budget."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score
from torch import nn

from medllm_pipelines.lib.train.dp_sgd import (
    DPPreflightError,
    dp_preflight,
    require_dp_trainable,
)
from medllm_pipelines.lib.train.networks import TabularMLP
from medllm_pipelines.lib.train.predictor import MODEL_SPEC_FILENAME, TabularPredictor
from medllm_pipelines.lib.train.tabular import TrainConfig, train_tabular_classifier
from medllm_pipelines_tests.lib.train.conftest import FAST_CONFIG
from medllm_pipelines_tests.lib.train.datasets import CATEGORICAL_COLUMNS, LABEL_COLUMN, fitted_preprocessing

FrameAndFeatures = tuple[pd.DataFrame, list[str]]


def test_preflight_passes_the_tabular_network() -> None:
    assert dp_preflight(TabularMLP(10, (8, 4), "relu", 0.1)).ok


def test_preflight_names_each_unsupported_layer_and_the_fix() -> None:
    network = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU())
    network.add_module("encoder", nn.LSTM(8, 8))
    preflight = dp_preflight(network)
    assert [(path, kind) for path, kind, _ in preflight.unsupported] == [("1", "BatchNorm1d"), ("encoder", "LSTM")]
    assert preflight.fixable
    with pytest.raises(DPPreflightError, match=r"1 \(BatchNorm1d\).*encoder \(LSTM\).*GroupNorm"):
        require_dp_trainable(network)


def test_private_training_spends_no_more_than_its_budget_and_still_learns(
    cancer_frame: FrameAndFeatures, tmp_path: Path
) -> None:
    frame, features = cancer_frame
    config = dataclasses.replace(FAST_CONFIG, dp_target_epsilon=3.0, dp_delta=1e-5, dp_max_grad_norm=1.0,
                                 optimizer="adam", lr=1e-2, max_epochs=10, early_stopping_patience=10)
    result = train_tabular_classifier(frame, fitted_preprocessing(frame, features), LABEL_COLUMN, config, tmp_path)
    privacy = result.privacy
    assert 0 < privacy["epsilon_spent"] <= 3.0 + 1e-6
    assert privacy["noise_multiplier"] > 0 and privacy["delta"] == 1e-5 and privacy["accountant"] == "rdp"
    spec = json.loads((result.model_dir / MODEL_SPEC_FILENAME).read_text())
    assert spec["privacy"]["epsilon_spent"] == privacy["epsilon_spent"]
    assert spec["train_config"]["dp_target_epsilon"] == 3.0
    test = frame[frame["split"] == "test"]
    probabilities = TabularPredictor.load(result.model_dir).predict_proba(test)
    assert roc_auc_score(test[LABEL_COLUMN], probabilities) > 0.85  # noisy, but the model still separates the classes


def test_a_non_private_run_records_no_privacy_claim(trained) -> None:
    assert trained.privacy == {}


@pytest.mark.parametrize(("field", "value"), [("dp_target_epsilon", 0.0), ("dp_delta", 1.0), ("dp_max_grad_norm", 0.0)])
def test_invalid_dp_settings_are_refused(field: str, value: float) -> None:
    with pytest.raises(ValueError, match="dp_"):
        TrainConfig(**{field: value, "dp_target_epsilon": 1.0} if field != "dp_target_epsilon" else {field: value})
