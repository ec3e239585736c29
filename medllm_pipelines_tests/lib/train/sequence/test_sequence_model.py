"""The recurrent early-warning network and its training: shapes, bad specs refused, and a small seeded training
on generated stays that beats NEWS2 and comes close to the generator's optimum."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medllm_pipelines.lib.curate.sequences import build_windows, split_stays, windows_with_splits
from medllm_pipelines.lib.curate.spec import load_spec
from medllm_pipelines.lib.synth.vitals import simulate_stay, stays_as_table
from medllm_pipelines.lib.train.optim import UnknownComponentError
from medllm_pipelines.lib.train.sequence.data import CHANNELS
from medllm_pipelines.lib.train.sequence.networks import RecurrentConfig, RecurrentEarlyWarning
from medllm_pipelines.lib.train.sequence.runs import sequence_training_config
from medllm_pipelines.lib.train.sequence.training import (
    SequenceTrainConfig,
    generator_optimum,
    train_deterioration_model,
)


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_the_network_gives_one_logit_per_window(cell: str) -> None:
    network = RecurrentEarlyWarning(RecurrentConfig(input_size=len(CHANNELS), cell=cell, hidden_size=8, num_layers=2))
    assert network(torch.zeros(5, 24, len(CHANNELS))).shape == (5,)


@pytest.mark.parametrize(("network", "training", "named"), [
    ({"family": "transformer"}, {}, "network"),
    ({"family": "gru"}, {"optimizer": "lbfgs"}, "optimizer"),
])
def test_an_unknown_component_is_refused_naming_the_spec(network, training, named) -> None:
    with pytest.raises(UnknownComponentError, match=f"deterioration.*{named}"):
        SequenceTrainConfig.from_spec("deterioration", network, training, window_hours=24, horizon_hours=12)


def test_an_unknown_training_key_is_refused_naming_the_spec() -> None:
    with pytest.raises(ValueError, match="spec deterioration: unknown training/network keys.*'epochs'"):
        SequenceTrainConfig.from_spec("deterioration", {"family": "gru"}, {"epochs": 3}, window_hours=24,
                                      horizon_hours=12)


def test_the_hardware_mapping_is_carried_and_an_unknown_strategy_is_refused_naming_the_spec() -> None:
    config = SequenceTrainConfig.from_spec("deterioration", {"family": "lstm"}, {"hardware": {"devices": 1}},
                                           window_hours=24, horizon_hours=12)
    assert config.hardware == {"devices": 1}
    with pytest.raises(UnknownComponentError, match="spec deterioration.*strategy 'mpi'"):
        SequenceTrainConfig.from_spec("deterioration", {"family": "lstm"}, {"hardware": {"strategy": "mpi"}},
                                      window_hours=24, horizon_hours=12)


def test_a_seeded_training_beats_news2_near_the_optimum(tmp_path) -> None:
    rng = np.random.default_rng(5)
    vitals = stays_as_table([simulate_stay(rng) for _ in range(240)])
    spec = load_spec("deterioration")
    dataset = build_windows(vitals, 12)
    windows = windows_with_splits(dataset.frame, split_stays(dataset.frame, spec.split_config).splits)
    config = sequence_training_config(spec, "demo")  # the spec's demo size: LSTM, 12-hour window
    result = train_deterioration_model(vitals, windows, config, tmp_path, spec_id=spec.id)
    again = train_deterioration_model(vitals, windows, config, tmp_path / "again", spec_id=spec.id)
    optimum = generator_optimum(vitals, windows, 12)["test_generator_optimum_roc_auc"]
    auc = result.test_metrics["test_roc_auc"]
    assert auc == again.test_metrics["test_roc_auc"]  # deterministic on the CPU
    assert auc > result.baseline_metrics["baseline_news2_test_roc_auc"]
    assert auc > optimum - 0.03
    assert result.train_seconds < 60


def test_the_next_hour_forecast_beats_the_mean_and_the_last_value(tmp_path) -> None:
    from medllm_pipelines.lib.curate.sequences import build_forecast_windows
    from medllm_pipelines.lib.train.sequence.training import train_forecast_model

    rng = np.random.default_rng(5)
    vitals = stays_as_table([simulate_stay(rng) for _ in range(160)])
    splits = split_stays(build_windows(vitals, 12).frame, load_spec("deterioration").split_config).splits
    forecast = build_forecast_windows(vitals, "heart_rate").frame
    windows = windows_with_splits(forecast, splits)
    assert len(windows) == len(forecast)  # every stay has a split
    result = train_forecast_model(vitals, windows, sequence_training_config(load_spec("vitals_forecast")), tmp_path,
                                  spec_id="vitals_forecast")
    rmse = result.test_metrics["test_rmse"]
    assert rmse < result.baseline_metrics["baseline_mean_test_rmse"]
    assert rmse < result.baseline_metrics["baseline_last_value_test_rmse"]
    assert result.test_metrics["test_r2"] > 0.15
    assert rmse > 9.5  # the readings' own noise (sd 10 /min) is a floor no forecast goes below
