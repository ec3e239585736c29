"""Text networks, kept apart from the training system: torch only, so that serving rebuilds them cheaply.

``TransformerEncoderClassifier``: token and learnt position embeddings, a
pre-norm ``nn.TransformerEncoder``, mean pooling over the real (non-padding)
tokens and a linear head: one logit per class. ``TransformerTokenTagger``: the
same encoder with a head per token (entity recognition). The padding mask is
derived from the token ids (id 0 is ``[PAD]``), so a model takes one int64
tensor, which is what its MLflow signature declares.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

PAD_ID = 0
TRANSFORMER_ENCODER = "transformer_encoder"
NETWORK_KEYS = ("d_model", "n_heads", "n_layers", "dim_feedforward", "dropout", "max_length")


@dataclass(frozen=True)
class EncoderConfig:
    """Architecture of the encoder; ``vocab_size`` comes from the tokenizer, never from the spec."""

    vocab_size: int
    n_outputs: int
    d_model: int = 64
    n_heads: int = 4
    n_layers: int = 2
    dim_feedforward: int = 128
    dropout: float = 0.1
    max_length: int = 128

    def __post_init__(self) -> None:
        problems = []
        if self.vocab_size < 2 or self.n_outputs < 1:
            problems.append("vocab_size must be >= 2 and n_outputs >= 1")
        if self.d_model < 1 or self.n_heads < 1 or self.d_model % self.n_heads:
            problems.append(f"d_model ({self.d_model}) must be a positive multiple of n_heads ({self.n_heads})")
        if self.n_layers < 1 or self.dim_feedforward < 1 or self.max_length < 2:
            problems.append("n_layers and dim_feedforward must be >= 1, max_length >= 2")
        if not 0.0 <= self.dropout < 1.0:
            problems.append("dropout must be in [0, 1)")
        if problems:
            raise ValueError("invalid encoder: " + "; ".join(problems))

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class TransformerEncoder(nn.Module):
    """Embeddings + encoder stack: (batch, length) token ids -> (batch, length, d_model) and the padding mask."""

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        self.config = config
        self.token_embedding = nn.Embedding(config.vocab_size, config.d_model, padding_idx=PAD_ID)
        self.position_embedding = nn.Embedding(config.max_length, config.d_model)
        self.embedding_dropout = nn.Dropout(config.dropout)
        layer = nn.TransformerEncoderLayer(
            config.d_model, config.n_heads, config.dim_feedforward, config.dropout,
            activation="gelu", batch_first=True, norm_first=True,
        )
        # no nested tensors: the same arithmetic in training and inference, and a traceable graph
        self.encoder = nn.TransformerEncoder(layer, config.n_layers, norm=nn.LayerNorm(config.d_model),
                                             enable_nested_tensor=False)

    def forward(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        input_ids = input_ids[:, : self.config.max_length]
        padding = input_ids == PAD_ID
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        hidden = self.token_embedding(input_ids) + self.position_embedding(positions)[None, :, :]
        hidden = self.encoder(self.embedding_dropout(hidden), src_key_padding_mask=padding)
        return hidden, padding


class TransformerEncoderClassifier(nn.Module):
    """One logit per class for each sequence of token ids (masked mean pooling over real tokens)."""

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = TransformerEncoder(config)
        self.head = nn.Linear(config.d_model, config.n_outputs)

    @property
    def vocab_size(self) -> int:
        return self.encoder.token_embedding.num_embeddings

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        hidden, padding = self.encoder(input_ids)
        keep = (~padding).unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * keep).sum(dim=1) / keep.sum(dim=1).clamp(min=1.0)
        return self.head(pooled)


class TransformerTokenTagger(nn.Module):
    """One logit per tag for every token (BIO entity tags)."""

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = TransformerEncoder(config)
        self.head = nn.Linear(config.d_model, config.n_outputs)

    @property
    def vocab_size(self) -> int:
        return self.encoder.token_embedding.num_embeddings

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        hidden, _ = self.encoder(input_ids)
        return self.head(hidden)


def count_parameters(network: nn.Module) -> int:
    return int(sum(p.numel() for p in network.parameters()))
