"""What every imaging model does to a slice before the network sees it, and how a segmentation is scored.

Shared by training, the predictor and serving (no Lightning here), so that a
served model normalises pixels exactly as it was trained to. Pixels are the
de-identified arrays the deidentify stage released (``.npy`` under the
artifact store's ``deidentified/images``); masks are the label stage's
accepted masks (RLE, lib/label/images.rle_to_mask).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medllm_pipelines.lib.label.images import rle_to_mask

IMAGE_KEY = "image"
MASK_KEY = "label"  # MONAI's name for a segmentation target in dictionary transforms
PRESENCE_KEY = "lesion"
# The split frame's columns logged to MLflow as the run's dataset (no pixels, no mask, no person key).
SPLIT_FRAME_COLUMNS = ("image_id", "study_key", "modality", "institution", "rows", "columns", "lesion",
                       "lesion_pixels", "split")


def as_slice(pixels: np.ndarray) -> np.ndarray:
    """A 2D slice: a single-frame array's leading unit axes are dropped; anything else is refused."""
    array = np.asarray(pixels)
    while array.ndim > 2 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 2:
        raise ValueError(f"expected a 2D slice, got pixel array of shape {np.asarray(pixels).shape}")
    return array


def normalise_slice(pixels: np.ndarray) -> np.ndarray:
    """Float32 z-score of one slice, shape (1, H, W) (MONAI's NormalizeIntensity over the whole image).

    Per image, so that CT (HU + offset) and MR (arbitrary units) slices reach
    the network on one scale; a constant slice becomes zeros.
    """
    from monai.transforms import NormalizeIntensity

    array = as_slice(pixels).astype(np.float32)[None]
    return np.asarray(NormalizeIntensity(nonzero=False, channel_wise=True)(array), dtype=np.float32)


@dataclass(frozen=True)
class LesionImages:
    """The image rows of one split: normalised pixels, decoded masks and the presence label, in row order."""

    image_ids: tuple[str, ...]
    images: tuple[np.ndarray, ...]  # (1, H, W) float32 each; shapes may differ between images
    masks: tuple[np.ndarray, ...]  # (1, H, W) uint8 each, 1 = lesion
    presence: np.ndarray  # (n,) int64, 1 when the accepted mask is not empty

    def __len__(self) -> int:
        return len(self.image_ids)

    def items(self) -> list[dict[str, Any]]:
        """MONAI dictionary items: image, label (mask, float32) and lesion (presence, float32)."""
        return [{IMAGE_KEY: image, MASK_KEY: mask.astype(np.float32), PRESENCE_KEY: np.float32(presence)}
                for image, mask, presence in zip(self.images, self.masks, self.presence, strict=True)]


def load_lesion_images(rows: pd.DataFrame, images_folder: Path) -> LesionImages:
    """Pixels of ``rows`` (curate/lesion_segmentation_dataset rows) from ``images_folder``, masks decoded.

    The presence label is the mask's emptiness (``lesion`` is the same fact as
    the label stage wrote it); a mask whose shape differs from its pixels is refused.
    """
    images, masks = [], []
    for row in rows.itertuples(index=False):
        pixels = as_slice(np.load(Path(images_folder) / str(row.pixel_file), allow_pickle=False))
        mask = rle_to_mask(str(row.mask_rle or ""), (int(row.rows), int(row.columns)))
        if mask.shape != pixels.shape:
            raise ValueError(f"image {row.image_id}: mask {mask.shape} and pixels {pixels.shape} differ in shape")
        images.append(normalise_slice(pixels))
        masks.append(mask.astype(np.uint8)[None])
    presence = np.array([int(mask.any()) for mask in masks], dtype=np.int64)
    return LesionImages(tuple(str(i) for i in rows["image_id"]), tuple(images), tuple(masks), presence)


def dice_and_iou(predicted: np.ndarray, truth: np.ndarray) -> tuple[float, float] | None:
    """Dice and IoU of one binary mask against its truth; None when the truth is empty (undefined there)."""
    truth = np.asarray(truth, dtype=bool)
    predicted = np.asarray(predicted, dtype=bool)
    if not truth.any():
        return None
    overlap = float(np.logical_and(predicted, truth).sum())
    total = float(predicted.sum() + truth.sum())
    union = float(np.logical_or(predicted, truth).sum())
    return 2.0 * overlap / total, overlap / union


def segmentation_metrics(predicted: Sequence[np.ndarray], truth: Sequence[np.ndarray]) -> dict[str, float]:
    """Per-split scores of predicted masks.

    ``dice`` and ``iou``: means over the images whose accepted mask shows a
    lesion (MONAI's DiceMetric with ``ignore_empty=True``, background
    excluded); ``empty_images_clean``: the share of lesion-free images
    predicted lesion-free (what Dice cannot see); ``pixel_dice``: Dice of all
    pixels of the split pooled. NaN where undefined (no lesion image, no empty image).
    """
    scored = [dice_and_iou(p, t) for p, t in zip(predicted, truth, strict=True)]
    lesion_scores = [s for s in scored if s is not None]
    empty_clean = [not np.asarray(p, dtype=bool).any() for p, s in zip(predicted, scored, strict=True) if s is None]
    overlap = sum(float(np.logical_and(np.asarray(p, bool), np.asarray(t, bool)).sum()) for p, t in zip(predicted, truth))
    total = sum(float(np.asarray(p, bool).sum() + np.asarray(t, bool).sum()) for p, t in zip(predicted, truth))
    return {
        "dice": float(np.mean([s[0] for s in lesion_scores])) if lesion_scores else float("nan"),
        "iou": float(np.mean([s[1] for s in lesion_scores])) if lesion_scores else float("nan"),
        "empty_images_clean": float(np.mean(empty_clean)) if empty_clean else float("nan"),
        "pixel_dice": 2.0 * overlap / total if total else float("nan"),
        "n_images": float(len(scored)),
        "n_lesion_images": float(len(lesion_scores)),
    }
