"""The lesion images as MONAI dictionary datasets and Lightning data modules.

Augmentation (clause 5.2.2, row M4) is MONAI's dictionary transforms,
applied to the training split only: flips, 90-degree rotations, Gaussian
noise, intensity scaling, and for segmentation positive/negative crops
(RandCropByPosNegLabeld), so that half the crops hold lesion pixels however
rare they are. Validation and test images pass unchanged (whole slices; the
segmentation system scores them by sliding-window inference). Every random
transform draws from one generator seeded from the training seed, and the
loaders run in the main process, so that two trainings see the same crops.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import lightning as L
import numpy as np
import torch

from medllm_pipelines.lib.train.imaging.images import IMAGE_KEY, MASK_KEY, PRESENCE_KEY, LesionImages

AUGMENTATION_DEFAULTS: dict[str, float] = {
    "flip_prob": 0.5,  # per axis
    "rotate90_prob": 0.5,
    "noise_prob": 0.2,
    "noise_std": 0.1,
    "scale_intensity_prob": 0.3,
    "scale_intensity_factor": 0.1,
}


def augmentation_settings(options: Mapping[str, Any] | None, spec_id: str = "") -> dict[str, float]:
    """The spec's ``augmentation`` block over the defaults; unknown keys are refused, naming the spec."""
    options = dict(options or {})
    unknown = sorted(set(options) - set(AUGMENTATION_DEFAULTS))
    if unknown:
        raise ValueError(f"spec {spec_id or '?'}: unknown augmentation keys {unknown}; known: {sorted(AUGMENTATION_DEFAULTS)}")
    return {key: float(options.get(key, default)) for key, default in AUGMENTATION_DEFAULTS.items()}


def _intensity_and_geometry(keys: list[str], augmentation: Mapping[str, float]) -> list[Any]:
    from monai.transforms import RandFlipd, RandGaussianNoised, RandRotate90d, RandScaleIntensityd

    return [
        RandFlipd(keys=keys, prob=augmentation["flip_prob"], spatial_axis=0),
        RandFlipd(keys=keys, prob=augmentation["flip_prob"], spatial_axis=1),
        RandRotate90d(keys=keys, prob=augmentation["rotate90_prob"], max_k=3, spatial_axes=(0, 1)),
        RandGaussianNoised(keys=IMAGE_KEY, prob=augmentation["noise_prob"], std=augmentation["noise_std"]),
        RandScaleIntensityd(keys=IMAGE_KEY, prob=augmentation["scale_intensity_prob"],
                            factors=augmentation["scale_intensity_factor"]),
    ]


def segmentation_train_transforms(crop_size: int, crops_per_image: int, augmentation: Mapping[str, float],
                                  seed: int) -> Any:
    """Pad to the crop, crop around lesion and background pixels alike (pos=neg=1), then augment."""
    from monai.transforms import Compose, EnsureTyped, RandCropByPosNegLabeld, SpatialPadd

    keys = [IMAGE_KEY, MASK_KEY]
    transforms = Compose([
        SpatialPadd(keys=keys, spatial_size=(crop_size, crop_size)),
        RandCropByPosNegLabeld(keys=keys, label_key=MASK_KEY, spatial_size=(crop_size, crop_size), pos=1, neg=1,
                               num_samples=crops_per_image, allow_smaller=True),
        *_intensity_and_geometry(keys, augmentation),
        EnsureTyped(keys=keys, dtype=torch.float32, track_meta=False),
    ])
    transforms.set_random_state(seed=seed)
    return transforms


def classification_train_transforms(augmentation: Mapping[str, float], seed: int) -> Any:
    """Whole slices (a crop could cut the lesion out and make the label wrong), flipped, rotated, noised."""
    from monai.transforms import Compose, EnsureTyped

    transforms = Compose([
        *_intensity_and_geometry([IMAGE_KEY], augmentation),
        EnsureTyped(keys=[IMAGE_KEY], dtype=torch.float32, track_meta=False),
    ])
    transforms.set_random_state(seed=seed)
    return transforms


def _plain(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{key: torch.as_tensor(value, dtype=torch.float32) for key, value in item.items()} for item in items]


class _LesionDataModule(L.LightningDataModule):
    """Training items go through ``train_transforms``; validation items are whole slices, one per batch of a shape."""

    def __init__(self, train: LesionImages, validation: LesionImages, *, batch_size: int, seed: int,
                 train_transforms: Any) -> None:
        super().__init__()
        if len(train) == 0 or len(validation) == 0:
            raise ValueError(f"need training and validation images; got {len(train)} and {len(validation)}")
        self.train_images = train
        self.validation_images = validation
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.train_transforms = train_transforms

    @property
    def train_dataset(self) -> Any:
        from monai.data import Dataset

        return Dataset(self.train_images.items(), transform=self.train_transforms)

    def train_dataloader(self) -> Any:
        from monai.data import DataLoader

        generator = torch.Generator().manual_seed(self.seed)
        return DataLoader(self.train_dataset, batch_size=self.batch_size, shuffle=True, num_workers=0,
                          generator=generator)

    def val_dataloader(self) -> Any:
        return whole_slice_loader(self.validation_images, self.batch_size)


def whole_slice_loader(images: LesionImages, batch_size: int) -> Any:
    """Unaugmented whole slices in row order; slices of different shapes go one per batch."""
    from monai.data import DataLoader

    same_shape = len({item.shape for item in images.images}) <= 1
    return DataLoader(_plain(images.items()), batch_size=batch_size if same_shape else 1, shuffle=False,
                      num_workers=0)


class LesionSegmentationDataModule(_LesionDataModule):
    """Positive/negative crops of the training slices; whole validation slices (sliding-window inference)."""

    def __init__(self, train: LesionImages, validation: LesionImages, *, batch_size: int, seed: int, crop_size: int,
                 crops_per_image: int, augmentation: Mapping[str, float]) -> None:
        if not np.any(train.presence):
            raise ValueError("the training split holds no lesion: a segmentation cannot be fitted")
        super().__init__(train, validation, batch_size=batch_size, seed=seed,
                         train_transforms=segmentation_train_transforms(crop_size, crops_per_image, augmentation, seed))


class LesionClassificationDataModule(_LesionDataModule):
    """Whole training slices, augmented; the target is the presence label."""

    def __init__(self, train: LesionImages, validation: LesionImages, *, batch_size: int, seed: int,
                 augmentation: Mapping[str, float]) -> None:
        if len(np.unique(train.presence)) < 2:
            raise ValueError("the training split holds only one class (all slices with, or all without, a lesion)")
        super().__init__(train, validation, batch_size=batch_size, seed=seed,
                         train_transforms=classification_train_transforms(augmentation, seed))
