"""Loading a trained imaging model from its folder, in a fresh process: torch and MONAI, no Lightning, no MLflow.

The folder (``<ModelStore.model_folder(spec_id, dataset_version)>/model``)
holds ``model_spec.json`` (task, network description, sliding-window and
threshold settings, SHA-256 of the weights) and ``network_state.pt``
(tensors only, loaded with ``weights_only=True``). Raw de-identified slices
go in; the predictor normalises them as training did (images.normalise_slice).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medllm_pipelines.lib.train.imaging.images import LesionImages, normalise_slice, segmentation_metrics
from medllm_pipelines.lib.train.imaging.networks import build_classification_network, build_segmentation_network

FORMAT_VERSION = 1
MODEL_DIRNAME = "model"
MODEL_SPEC_FILENAME = "model_spec.json"
NETWORK_WEIGHTS_FILENAME = "network_state.pt"
CLASSIFIER_METRICS = ("roc_auc", "accuracy", "sensitivity", "specificity", "precision", "f1")


def sha256_file(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


class ImagingPredictor:
    """A lesion segmentation or lesion-presence network with the settings it was trained and scored with."""

    def __init__(self, network: torch.nn.Module, spec: dict[str, Any]) -> None:
        self.network = network.eval()
        self.spec = spec

    @classmethod
    def load(cls, folder: str | Path) -> ImagingPredictor:
        """From the model folder or the training's output folder holding it; weights must match their SHA-256."""
        folder = Path(folder)
        if not (folder / MODEL_SPEC_FILENAME).is_file() and (folder / MODEL_DIRNAME / MODEL_SPEC_FILENAME).is_file():
            folder = folder / MODEL_DIRNAME
        spec = json.loads((folder / MODEL_SPEC_FILENAME).read_text())
        if spec.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"unsupported imaging model format {spec.get('format_version')!r} in {folder}")
        weights = folder / spec["files"]["network_weights"]
        if sha256_file(weights) != spec["sha256"]["network_weights"]:
            raise ValueError(f"{weights} does not match the SHA-256 in {MODEL_SPEC_FILENAME}")
        build = build_segmentation_network if spec["task"] == "segmentation" else build_classification_network
        network = build(spec["network"])
        network.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        return cls(network, spec)

    @property
    def task(self) -> str:
        return str(self.spec["task"])

    @property
    def threshold(self) -> float:
        return float(self.spec.get("threshold", 0.5))

    # --- on normalised slices, shape (1, H, W) -------------------------------------------------
    def _window_logits(self, image: np.ndarray) -> torch.Tensor:
        """Logits (1, 2, H, W) of a whole slice, window by window, as validation computed them."""
        from monai.inferers import sliding_window_inference

        roi = (int(self.spec["roi_size"]),) * 2
        with torch.no_grad():
            return sliding_window_inference(torch.from_numpy(np.asarray(image, np.float32))[None], roi,
                                            int(self.spec.get("sw_batch_size", 4)), self.network,
                                            overlap=float(self.spec.get("sw_overlap", 0.25)), mode="gaussian")

    def _segment(self, image: np.ndarray) -> np.ndarray:
        return self._window_logits(image).argmax(dim=1)[0].numpy().astype(bool)

    def _presence(self, images: Sequence[np.ndarray]) -> np.ndarray:
        if not images:
            return np.empty(0, dtype=np.float64)
        with torch.no_grad():
            if len({image.shape for image in images}) == 1:
                logits = self.network(torch.from_numpy(np.stack(images).astype(np.float32))).reshape(-1)
            else:
                logits = torch.cat([self.network(torch.from_numpy(i[None].astype(np.float32))).reshape(-1)
                                    for i in images])
        return torch.sigmoid(logits).numpy().astype(np.float64)

    # --- on the de-identified pixel arrays ---------------------------------------------------------
    def predict_masks(self, slices: Sequence[np.ndarray]) -> list[np.ndarray]:
        """A boolean lesion mask per slice (segmentation models), by sliding-window inference."""
        if self.task != "segmentation":
            raise TypeError(f"a {self.task} model predicts lesion presence (predict_proba), not masks")
        return [self._segment(normalise_slice(pixels)) for pixels in slices]

    def predict_proba(self, slices: Sequence[np.ndarray]) -> np.ndarray:
        """Probability that each slice shows a lesion: the classifier's, or for a segmentation model the
        largest lesion probability of any pixel."""
        normalised = [normalise_slice(pixels) for pixels in slices]
        if self.task == "classification":
            return self._presence(normalised)
        return np.array([float(self._lesion_probability(image).max()) for image in normalised], dtype=np.float64)

    def _lesion_probability(self, image: np.ndarray) -> np.ndarray:
        return torch.softmax(self._window_logits(image), dim=1)[0, 1].numpy()

    def score(self, images: LesionImages) -> dict[str, float]:
        """The spec's metrics on one split (already normalised): Dice/IoU, or ROC-AUC, accuracy, sensitivity, specificity."""
        if self.task == "segmentation":
            predicted = [self._segment(image) for image in images.images]
            return segmentation_metrics(predicted, [mask[0] for mask in images.masks])
        from medllm_pipelines.lib.evaluate.metrics import binary_classification_metrics

        if len(images) == 0:
            return {name: float("nan") for name in CLASSIFIER_METRICS} | {"n_images": 0.0}
        scores = self._presence(list(images.images))
        metrics = binary_classification_metrics(images.presence, scores, threshold=self.threshold)
        return {**{name: float("nan") if metrics[name] is None else float(metrics[name]) for name in CLASSIFIER_METRICS},
                "n_images": float(len(images)), "n_lesion_images": float(images.presence.sum())}
