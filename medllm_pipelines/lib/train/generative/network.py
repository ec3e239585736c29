"""A decoder-only Transformer (GPT-style): the network of the note generator, apart from its training system.

Pre-norm blocks, causal self-attention through ``F.scaled_dot_product_attention``
(flash / memory-efficient kernels on a GPU, the math kernel on the CPU), tied
input and output embeddings, GPT-2's initialisation (residual projections
scaled by 1/sqrt(2 * layers)). ``GPTConfig.gpt2_small()`` is the 124M-parameter
shape the GPU benchmark trains; ``flops_per_token`` is the model-FLOPs count MFU
is reported against (PaLM, Chowdhery et al. 2022, appendix B).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class GPTConfig:
    vocab_size: int = 8000
    block_size: int = 256
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.0
    bias: bool = False

    def __post_init__(self) -> None:
        problems = []
        if self.n_embd % self.n_head:
            problems.append(f"n_embd {self.n_embd} is not a multiple of n_head {self.n_head}")
        if min(self.vocab_size, self.block_size, self.n_layer, self.n_head, self.n_embd) < 1:
            problems.append("vocab_size, block_size, n_layer, n_head and n_embd must be positive")
        if not 0.0 <= self.dropout < 1.0:
            problems.append("dropout must be in [0, 1)")
        if problems:
            raise ValueError("GPTConfig: " + "; ".join(problems))

    @classmethod
    def gpt2_small(cls, vocab_size: int = 50304, block_size: int = 1024) -> GPTConfig:
        """GPT-2 small: 12 layers, 12 heads, 768 wide; vocabulary padded to a multiple of 64 (124M parameters)."""
        return cls(vocab_size=vocab_size, block_size=block_size, n_layer=12, n_head=12, n_embd=768)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.n_head = config.n_head
        self.qkv = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.proj.residual_scaled = True  # type: ignore[attr-defined]
        self.dropout = config.dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, width = x.shape
        q, k, v = self.qkv(x).split(width, dim=2)
        q, k, v = (t.view(batch, length, self.n_head, width // self.n_head).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0)
        return self.proj(y.transpose(1, 2).contiguous().view(batch, length, width))


class Block(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.norm_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attention = CausalSelfAttention(config)
        self.norm_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp_in = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.mlp_out = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.mlp_out.residual_scaled = True  # type: ignore[attr-defined]
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.dropout(self.attention(self.norm_1(x)))
        return x + self.dropout(self.mlp_out(F.gelu(self.mlp_in(self.norm_2(x)))))


class GPT(nn.Module):
    """Token ids (batch, length <= block_size) -> next-token logits (batch, length, vocab_size)."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        self.token_embedding = nn.Embedding(config.vocab_size, config.n_embd)
        self.position_embedding = nn.Embedding(config.block_size, config.n_embd)
        self.dropout = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.norm = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.head.weight = self.token_embedding.weight  # tied
        self.apply(self._init_weights)

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            std = 0.02 / math.sqrt(2 * self.config.n_layer) if getattr(module, "residual_scaled", False) else 0.02
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        length = tokens.shape[1]
        if length > self.config.block_size:
            raise ValueError(f"sequence of {length} tokens is longer than the block size {self.config.block_size}")
        positions = torch.arange(length, device=tokens.device)
        x = self.dropout(self.token_embedding(tokens) + self.position_embedding(positions))
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))

    def num_parameters(self, exclude_position_embedding: bool = True) -> int:
        """Trainable parameters, tied weights counted once (GPT-2 convention: without position embeddings)."""
        total = sum(p.numel() for p in self.parameters())
        return total - (self.position_embedding.weight.numel() if exclude_position_embedding else 0)

    @torch.no_grad()
    def generate(self, tokens: torch.Tensor, max_new_tokens: int, *, eos_id: int | None = None,
                 temperature: float = 0.0) -> torch.Tensor:
        """Greedy (temperature 0) or sampled continuation; stops early when every row produced ``eos_id``."""
        finished = torch.zeros(tokens.shape[0], dtype=torch.bool, device=tokens.device)
        for _ in range(max_new_tokens):
            logits = self(tokens[:, -self.config.block_size:])[:, -1, :]
            if temperature > 0:
                next_token = torch.multinomial(F.softmax(logits / temperature, dim=-1), num_samples=1)
            else:
                next_token = logits.argmax(dim=-1, keepdim=True)
            if eos_id is not None:
                next_token = torch.where(finished[:, None], torch.full_like(next_token, eos_id), next_token)
                finished |= next_token[:, 0] == eos_id
            tokens = torch.cat([tokens, next_token], dim=1)
            if eos_id is not None and bool(finished.all()):
                break
        return tokens


def flops_per_token(config: GPTConfig, num_parameters: int, sequence_length: int | None = None) -> float:
    """Training FLOPs per token: 6N for the weights plus 12 * layers * width * length for attention (PaLM B)."""
    length = sequence_length or config.block_size
    return 6.0 * num_parameters + 12.0 * config.n_layer * config.n_embd * length
