"""Networks for tabular data, kept apart from the training system.

This module imports torch only (not Lightning), so that serving can rebuild
the network from saved weights without paying for Lightning's import.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh}


class TabularMLP(nn.Module):
    """A multilayer perceptron returning one logit per row.

    Returning logits (not probabilities) lets the loss use the numerically
    stable BCEWithLogits and keeps the sigmoid in one place: prediction.
    """

    def __init__(
        self,
        n_inputs: int,
        hidden_sizes: Sequence[int] = (64, 32),
        activation: str = "relu",
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        if n_inputs < 1:
            raise ValueError(f"n_inputs must be positive, got {n_inputs}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        if any(size < 1 for size in hidden_sizes):
            raise ValueError(f"hidden sizes must be positive, got {list(hidden_sizes)}")
        layers: list[nn.Module] = []
        width = n_inputs
        for size in hidden_sizes:
            layers += [nn.Linear(width, size), ACTIVATIONS[activation]()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = size
        layers.append(nn.Linear(width, 1))
        self.layers = nn.Sequential(*layers)
        self.n_inputs = n_inputs

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.layers(features).squeeze(-1)
