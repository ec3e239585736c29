"""Loading a trained tabular model from its directory, for evaluation and serving.

Needs torch, scikit-learn and joblib only: no Lightning, no MLflow, so a
fresh serving process loads it in about the time torch takes to import.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from medllm_pipelines.lib.train.networks import TabularMLP
from medllm_pipelines.lib.curate.preprocessing import FittedPreprocessing, load_preprocessing

MODEL_SPEC_FILENAME = "model_spec.json"
NETWORK_WEIGHTS_FILENAME = "network_state.pt"
MODEL_SPEC_FORMAT_VERSION = 1


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file, recorded at save time and checked at load time."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


class TabularPredictor:
    """The network plus the preprocessing the curate stage fitted, exactly as saved by training."""

    def __init__(self, network: TabularMLP, preprocessing: FittedPreprocessing, spec: dict[str, Any]) -> None:
        self.network = network.eval()
        self.preprocessing = preprocessing
        self.spec = spec

    @classmethod
    def load(cls, model_dir: str | Path) -> TabularPredictor:
        """Rebuild from model_dir; refuses weights whose bytes differ from those recorded."""
        model_dir = Path(model_dir)
        spec = json.loads((model_dir / MODEL_SPEC_FILENAME).read_text())
        if spec.get("format_version") != MODEL_SPEC_FORMAT_VERSION:
            raise ValueError(f"unsupported model spec format {spec.get('format_version')!r} in {model_dir}")
        weights_path = model_dir / spec["files"]["network_weights"]
        if sha256_file(weights_path) != spec["sha256"]["network_weights"]:
            raise ValueError(f"{weights_path} does not match the SHA-256 in {MODEL_SPEC_FILENAME}")
        network_spec = spec["network"]
        network = TabularMLP(
            n_inputs=network_spec["n_inputs"],
            hidden_sizes=network_spec["hidden_sizes"],
            activation=network_spec["activation"],
            dropout=network_spec["dropout"],
        )
        # weights_only: the file holds tensors only, so nothing in it can run code.
        state = torch.load(weights_path, map_location="cpu", weights_only=True)
        network.load_state_dict(state)
        preprocessing = load_preprocessing(model_dir)
        recorded = spec.get("preprocessing_fingerprint")
        if recorded is not None and preprocessing.fingerprint() != recorded:
            raise ValueError(f"the preprocessing in {model_dir} is not the one the network was trained with")
        return cls(network, preprocessing, spec)

    @property
    def feature_columns(self) -> list[str]:
        return self.preprocessing.input_columns

    @property
    def threshold(self) -> float:
        return float(self.spec.get("decision_threshold", 0.5))

    def predict_proba(self, frame: pd.DataFrame) -> np.ndarray:
        """Probability of label 1 per row, shape (n,); unlike scikit-learn, not (n, 2)."""
        if len(frame) == 0:
            return np.empty(0, dtype=np.float64)
        features = torch.from_numpy(self.preprocessing.transform_array(frame))
        with torch.no_grad():
            probabilities = torch.sigmoid(self.network(features))
        return probabilities.numpy().astype(np.float64)

    def predict(self, frame: pd.DataFrame, threshold: float | None = None) -> np.ndarray:
        """0/1 per row: probability >= threshold (the saved one unless given)."""
        cutoff = self.threshold if threshold is None else threshold
        return (self.predict_proba(frame) >= cutoff).astype(np.int64)
