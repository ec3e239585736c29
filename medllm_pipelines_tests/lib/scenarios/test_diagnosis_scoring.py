"""The served MLP in numpy: the same probabilities as the torch network, or torch is kept."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medllm_pipelines.lib.scenarios.diagnosis.scoring import numpy_mlp
from medllm_pipelines.lib.train.networks import TabularMLP


@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_the_numpy_forward_equals_the_network(activation: str) -> None:
    torch.manual_seed(0)
    network = TabularMLP(9, hidden_sizes=(32, 16), activation=activation, dropout=0.2).eval()
    rows = np.random.default_rng(1).normal(0, 2, (64, 9)).astype(np.float32)
    forward = numpy_mlp(network, rows[:4])
    assert forward
    with torch.no_grad():
        expected = torch.sigmoid(network(torch.from_numpy(rows))).reshape(-1).numpy()
    np.testing.assert_allclose(forward(rows), expected, atol=1e-6)


def test_a_layer_numpy_does_not_reproduce_keeps_torch() -> None:
    network = TabularMLP(4, hidden_sizes=(8,), activation="gelu").eval()
    assert numpy_mlp(network, np.zeros((1, 4), dtype=np.float32)) is False
