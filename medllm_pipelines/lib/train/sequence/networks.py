"""The recurrent early-warning network: importable without Lightning, so that serving loads it cheaply."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

GRU = "gru"
LSTM = "lstm"
RECURRENT_CELLS = (GRU, LSTM)
NETWORK_KEYS = ("cell", "hidden_size", "num_layers", "dropout")


@dataclass(frozen=True)
class RecurrentConfig:
    """The architecture: the recurrent cell (``gru`` or ``lstm``), its width and depth, inter-layer dropout."""

    input_size: int
    cell: str = GRU
    hidden_size: int = 32
    num_layers: int = 1
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if self.cell not in RECURRENT_CELLS:
            raise ValueError(f"cell must be one of {RECURRENT_CELLS}, got {self.cell!r}")
        if self.input_size < 1 or self.hidden_size < 1 or self.num_layers < 1 or not 0.0 <= self.dropout < 1.0:
            raise ValueError("input_size, hidden_size and num_layers must be >= 1 and dropout in [0, 1)")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class RecurrentEarlyWarning(nn.Module):
    """(batch, hours, channels) windows -> one logit per window: the recurrent state after the last hour."""

    def __init__(self, config: RecurrentConfig) -> None:
        super().__init__()
        self.config = config
        recurrent = nn.GRU if config.cell == GRU else nn.LSTM
        self.rnn = recurrent(config.input_size, config.hidden_size, num_layers=config.num_layers, batch_first=True,
                             dropout=config.dropout if config.num_layers > 1 else 0.0)
        self.head = nn.Linear(config.hidden_size, 1)

    def forward(self, windows: torch.Tensor) -> torch.Tensor:
        outputs, _ = self.rnn(windows)
        return self.head(outputs[:, -1, :]).squeeze(-1)


def count_parameters(network: nn.Module) -> int:
    return int(sum(p.numel() for p in network.parameters()))
