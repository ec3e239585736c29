"""The lesion_segmentation spec's dataset: de-identified pixel arrays joined to their accepted masks."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from medllm_pipelines.lib.curate.splits import NEAR_DUPLICATE_KEY, image_near_duplicate_key


@dataclass(frozen=True)
class LesionDataset:
    """Rows the spec can use, and every accepted mask that is not one of them, by reason."""

    frame: pd.DataFrame
    records_in: int
    removed: dict[str, int] = field(default_factory=dict)

    def as_metadata(self) -> dict[str, Any]:
        return {
            "records_in": self.records_in,
            "records_out": len(self.frame),
            **{f"removed[{k}]": v for k, v in self.removed.items()},
            "reconciled": self.records_in == len(self.frame) + sum(self.removed.values()),
        }


def build_lesion_dataset(
    masks: pd.DataFrame,
    images: pd.DataFrame,
    modalities: Sequence[str] | None,
    load_pixels: Callable[[str], np.ndarray],
) -> LesionDataset:
    """Masks with released pixels of a modality the spec names; near-identical images share a key."""
    joined = masks.merge(images[["image_id", "modality", "pixel_file"]], on="image_id", how="left")
    no_pixels = joined["pixel_file"].isna()
    other_modality = (~joined["modality"].isin(modalities) & ~no_pixels) if modalities else pd.Series(False, index=joined.index)
    frame = joined[~no_pixels & ~other_modality].copy()
    frame[NEAR_DUPLICATE_KEY] = [image_near_duplicate_key(load_pixels(name)) for name in frame["pixel_file"]]
    frame = frame.sort_values("image_id").reset_index(drop=True)
    removed = {"no_released_pixels": int(no_pixels.sum()), "modality_not_in_spec": int(other_modality.sum())}
    return LesionDataset(frame, len(masks), removed)
