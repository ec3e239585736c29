"""Loading a trained text classifier from its folder: torch and tokenizers only (no Lightning, no MLflow).

The folder holds the network weights, the tokenizer it was trained with and
``model_spec.json`` (classes, architecture, digests). Loading refuses weights
whose bytes differ from those recorded and a tokenizer that does not match
the embedding (``TokenizerMismatchError``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medllm_pipelines.lib.train.text.networks import EncoderConfig, TransformerEncoderClassifier
from medllm_pipelines.lib.train.text.tokenizer import TOKENIZER_FILE, check_tokenizer_matches, load_tokenizer

MODEL_SPEC_FILENAME = "model_spec.json"
NETWORK_WEIGHTS_FILENAME = "network_state.pt"
MODEL_SPEC_FORMAT_VERSION = 1
TEXT_CLASSIFIER_TASK = "multiclass_text_classification"


def sha256_file(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


class TextClassifierPredictor:
    """Texts in, class probabilities out, exactly as trained."""

    def __init__(self, network: TransformerEncoderClassifier, tokenizer: Any, spec: dict[str, Any]) -> None:
        self.network = network.eval()
        self.tokenizer = tokenizer
        self.spec = spec

    @classmethod
    def load(cls, model_dir: str | Path, tokenizer_path: str | Path | None = None) -> TextClassifierPredictor:
        """Rebuild from ``model_dir``; ``tokenizer_path`` replaces the saved tokenizer (it must match)."""
        model_dir = Path(model_dir)
        spec = json.loads((model_dir / MODEL_SPEC_FILENAME).read_text())
        if spec.get("format_version") != MODEL_SPEC_FORMAT_VERSION or spec.get("task") != TEXT_CLASSIFIER_TASK:
            raise ValueError(f"{model_dir} does not hold a text classifier of format {MODEL_SPEC_FORMAT_VERSION}")
        weights_path = model_dir / spec["files"]["network_weights"]
        if sha256_file(weights_path) != spec["sha256"]["network_weights"]:
            raise ValueError(f"{weights_path} does not match the SHA-256 in {MODEL_SPEC_FILENAME}")
        network = TransformerEncoderClassifier(EncoderConfig(**spec["network"]))
        network.load_state_dict(torch.load(weights_path, map_location="cpu", weights_only=True))
        tokenizer = load_tokenizer(tokenizer_path or model_dir / TOKENIZER_FILE)
        check_tokenizer_matches(tokenizer, network.vocab_size, spec_id=spec.get("spec_id", ""),
                                expected_sha256=spec["sha256"].get("tokenizer"), where=str(model_dir))
        return cls(network, tokenizer, spec)

    @property
    def classes(self) -> list[str]:
        return list(self.spec["classes"])

    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        from medllm_pipelines.lib.train.text.data import encode_texts

        return encode_texts(self.tokenizer, texts, int(self.spec["network"]["max_length"]))

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        """(n, classes) probabilities, columns in ``classes`` order."""
        if len(texts) == 0:
            return np.empty((0, len(self.classes)))
        with torch.no_grad():
            return torch.softmax(self.network(self.encode(texts)), dim=-1).numpy().astype(np.float64)

    def predict(self, texts: Sequence[str]) -> list[str]:
        return [self.classes[i] for i in self.predict_proba(texts).argmax(axis=1)]

    def top_k(self, texts: Sequence[str], k: int = 3) -> list[list[tuple[str, float]]]:
        probabilities = self.predict_proba(texts)
        order = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
        return [[(self.classes[j], float(p[j])) for j in row] for row, p in zip(order, probabilities, strict=True)]
