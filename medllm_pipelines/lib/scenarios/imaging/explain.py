"""Grad-CAM of the served models and the annotated overlay a reader looks at.

Grad-CAM is the evaluation's (``lib/evaluate/adapters/imaging``: MONAI's GradCAM on a copy of the network,
maps scaled to [0, 1]), so the served explanation is the one the evaluation report scored. With a classifier it
explains the lesion logit; with a segmentation model alone it explains the mean lesion-versus-background logit of
the slice (Seg-Grad-CAM, Vinogradova et al. 2020). The overlay is drawn with Pillow (matplotlib's PNG path costs
tens of milliseconds a figure): the normalised slice in grey, the heat map in matplotlib's ``jet`` colours where
it is warm, the predicted lesion's outline in green. The PNG carries no text chunks.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence
from functools import lru_cache

import numpy as np
import torch
from torch import nn

from medllm_pipelines.lib.evaluate.adapters.imaging import gradcam_layer, gradcam_maps
from medllm_pipelines.lib.train.imaging.images import normalise_slice
from medllm_pipelines.lib.train.imaging.predictor import ImagingPredictor

HEATMAP_ALPHA = 0.4
HEATMAP_FLOOR = 0.2  # map values below this stay grey: a cold map does not tint the whole slice
OUTLINE_RGB = (0, 255, 0)
MIN_OVERLAY_SIDE = 256  # small slices are enlarged by a whole factor so the outline stays readable
SEGMENTER_MULTIPLE = 16  # a whole slice through a U-Net needs sides divisible by its total stride


class LesionEvidence(nn.Module):
    """A segmentation network seen as a one-logit classifier: the mean lesion-minus-background logit."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        logits = self.network(images)
        return (logits[:, 1] - logits[:, 0]).mean(dim=(1, 2)).unsqueeze(1)


def explained_network(classifier: ImagingPredictor | None, segmenter: ImagingPredictor | None
                      ) -> tuple[nn.Module, str, str]:
    """The network Grad-CAM reads, its target layer and a sentence saying what the map explains."""
    if classifier is not None:
        family = classifier.spec.get("network", {}).get("family")
        layer = gradcam_layer(classifier.network, family)
        return classifier.network, layer, f"Grad-CAM of the classifier's lesion logit at layer '{layer}'"
    if segmenter is None:
        raise ValueError("Grad-CAM needs a classifier or a segmentation model")
    wrapped = LesionEvidence(segmenter.network).eval()
    layer = gradcam_layer(wrapped, segmenter.spec.get("network", {}).get("family"))
    return wrapped, layer, (f"Seg-Grad-CAM of the segmentation model's mean lesion logit at layer '{layer}' "
                            "(no classifier loaded)")


def _padded(image: np.ndarray, multiple: int) -> np.ndarray:
    """A (1, H, W) z-scored slice padded with zeros (the slice mean) to sides divisible by ``multiple``."""
    height, width = image.shape[-2:]
    pad_h, pad_w = (-height) % multiple, (-width) % multiple
    return np.pad(image, ((0, 0), (0, pad_h), (0, pad_w))) if pad_h or pad_w else image


def heat_maps(network: nn.Module, layer: str, slices: Sequence[np.ndarray], *, pad_to: int = 1) -> list[np.ndarray]:
    """Grad-CAM maps in [0, 1], one (H, W) map per preprocessed slice; slices of one shape go in one pass."""
    normalised = [_padded(normalise_slice(s), pad_to) for s in slices]
    maps: list[np.ndarray] = [np.empty(0)] * len(slices)
    by_shape: dict[tuple[int, ...], list[int]] = {}
    for k, image in enumerate(normalised):
        by_shape.setdefault(image.shape, []).append(k)
    for index in by_shape.values():
        batch = torch.from_numpy(np.stack([normalised[k] for k in index]).astype(np.float32))
        with warnings.catch_warnings():  # MONAI's hooks fire on outputs when no input needs a gradient: expected
            warnings.filterwarnings("ignore", message="Full backward hook is firing", category=UserWarning)
            computed, _ = gradcam_maps(network, batch, layer)
        for j, k in enumerate(index):
            height, width = slices[k].shape
            maps[k] = computed[j][:height, :width]
    return maps


@lru_cache(maxsize=1)
def _jet_lut() -> np.ndarray:
    """matplotlib's ``jet`` as a 256 x 3 uint8 table (the colour map only: no figure is drawn)."""
    from matplotlib import colormaps

    return (colormaps["jet"](np.linspace(0.0, 1.0, 256))[:, :3] * 255).astype(np.uint8)


def outline(mask: np.ndarray) -> np.ndarray:
    """The mask's boundary pixels (the mask minus its 4-connected erosion)."""
    from scipy.ndimage import binary_erosion

    mask = np.asarray(mask, dtype=bool)
    return mask & ~binary_erosion(mask, border_value=0)


def overlay_png(image: np.ndarray, heat: np.ndarray | None, mask: np.ndarray | None) -> bytes:
    """PNG of the slice (z-scored, shown from its 1st to 99th percentile) with the heat map and the outline."""
    from PIL import Image

    z = normalise_slice(image)[0]
    low, high = np.percentile(z, (1.0, 99.0))
    grey = np.clip((z - low) / (high - low), 0.0, 1.0) if high > low else np.zeros_like(z)
    rgb = np.repeat((grey * 255.0)[..., None], 3, axis=2)
    if heat is not None:
        colours = _jet_lut()[np.clip((heat * 255.0).astype(np.int64), 0, 255)].astype(np.float64)
        alpha = np.where(heat >= HEATMAP_FLOOR, HEATMAP_ALPHA, 0.0)[..., None]
        rgb = (1.0 - alpha) * rgb + alpha * colours
    if mask is not None:
        rgb[outline(mask)] = OUTLINE_RGB
    picture = Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8), mode="RGB")
    factor = max(1, -(-MIN_OVERLAY_SIDE // min(picture.size)))
    if factor > 1:
        picture = picture.resize((picture.width * factor, picture.height * factor), Image.Resampling.NEAREST)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()
