"""Lesion annotations of imaging studies: per-annotator masks, as NIfTI or DICOM SEG, and COCO boxes.

Each annotator's outline of a slice is the ground-truth mask dilated, eroded,
shifted or missed at its own rates (:data:`MASK_ERRORS`), so that Dice varies in
a controlled way. The files are byte-identical for a seed: gzip without a
timestamp, and every clock and UID highdicom would pick derived from the seed.
:mod:`annotation_files` decides which study gets which format and writes them.
"""

from __future__ import annotations

import gzip
import io
import math
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np

from medllm_pipelines.lib.synth.determinism import derived_uid

MASK_SCHEMA = "medllm-mask/1"
LESION_LABEL = "LESION"


@dataclass(frozen=True)
class MaskErrors:
    dilate: float
    erode: float
    shift: float
    miss: float  # the whole lesion on a slice is overlooked


MASK_ERRORS = {
    "ann-01": MaskErrors(dilate=0.15, erode=0.10, shift=0.15, miss=0.0),
    "ann-02": MaskErrors(dilate=0.25, erode=0.20, shift=0.30, miss=0.02),
    "ann-03": MaskErrors(dilate=0.35, erode=0.30, shift=0.50, miss=0.06),
}


def _shift(mask: np.ndarray, dy: int, dx: int) -> np.ndarray:
    out = np.zeros_like(mask)
    h, w = mask.shape
    ys, yd = (slice(0, h - dy), slice(dy, h)) if dy >= 0 else (slice(-dy, h), slice(0, h + dy))
    xs, xd = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w), slice(0, w + dx))
    out[yd, xd] = mask[ys, xs]
    return out


def _dilate(mask: np.ndarray) -> np.ndarray:
    out = mask.copy()
    for dy, dx in ((1, 0), (-1, 0), (0, 1), (0, -1)):
        out |= _shift(mask, dy, dx)
    return out


def _erode(mask: np.ndarray) -> np.ndarray:
    out = mask.copy()
    for dy, dx in ((1, 0), (-1, 0), (0, 1), (0, -1)):
        out &= _shift(mask, dy, dx)
    return out


def perturb_mask(truth: np.ndarray, errors: MaskErrors, rng: np.random.Generator) -> np.ndarray:
    """One annotator's outline of a slice's lesion (empty slices stay empty)."""
    mask = truth.astype(bool)
    if not mask.any():
        return mask.astype(np.uint8)
    if rng.random() < errors.miss:
        return np.zeros_like(truth, dtype=np.uint8)
    if rng.random() < errors.dilate:
        mask = _dilate(mask)
    elif rng.random() < errors.erode:
        eroded = _erode(mask)
        mask = eroded if eroded.any() else mask
    if rng.random() < errors.shift:
        mask = _shift(mask, int(rng.integers(-1, 2)), int(rng.integers(-1, 2)))
    return mask.astype(np.uint8)


def mask_box(mask: np.ndarray) -> list[int] | None:
    """COCO bbox [x, y, width, height] of a mask's foreground, in pixels."""
    rows, cols = np.nonzero(mask)
    if rows.size == 0:
        return None
    return [int(cols.min()), int(rows.min()), int(cols.max() - cols.min() + 1), int(rows.max() - rows.min() + 1)]


def mask_dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice of two masks; NaN when both are empty (nothing to agree on)."""
    total = int(a.astype(bool).sum()) + int(b.astype(bool).sum())
    return math.nan if total == 0 else 2.0 * int(np.logical_and(a, b).sum()) / total


def nifti_mask_bytes(slices: list[np.ndarray], uids: list[str], provenance: dict[str, Any]) -> bytes:
    """A gzip'd NIfTI-1 label volume (column, row, instance) with a JSON provenance extension."""
    import nibabel as nib
    import orjson

    data = np.stack([s.T for s in slices], axis=-1).astype(np.uint8)
    spacing = 5.0
    affine = np.diag([-spacing, -spacing, spacing, 1.0])
    image = nib.Nifti1Image(data, affine)
    image.header["descrip"] = MASK_SCHEMA.encode()
    document = {"schema": MASK_SCHEMA, **provenance, "sop_instance_uids": uids,
                "axes": ["column", "row", "instance"], "labels": {"1": LESION_LABEL}}
    image.header.extensions.append(nib.nifti1.Nifti1Extension("comment", orjson.dumps(document)))
    return gzip.compress(image.to_bytes(), mtime=0)


def seg_bytes(sources: list[Any], slices: list[np.ndarray], provenance: dict[str, str], uid_parts: tuple) -> bytes:
    """A DICOM Segmentation (highdicom) of one study, by one annotator."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    description = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label=LESION_LABEL,
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Lesion,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
    )
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=np.stack(slices).astype(bool),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[description],
        series_instance_uid=derived_uid(*uid_parts, "seg-series"),
        series_number=900,
        sop_instance_uid=derived_uid(*uid_parts, "seg-instance"),
        instance_number=1,
        manufacturer="MEDLLM",
        manufacturer_model_name="synthetic labelling office",
        software_versions=provenance["tool"],
        device_serial_number="0",
        content_description=f"guideline_version={provenance['guideline_version']}",
        content_creator_name=f"{provenance['annotator_id']}^",
        content_label="LESION",
        omit_empty_frames=True,
    )
    when = datetime.fromisoformat(provenance["annotated_at"])
    # highdicom stamps the clock; the file must be byte-identical for a seed.
    seg.InstanceCreationDate = seg.ContentDate = when.strftime("%Y%m%d")
    seg.InstanceCreationTime = seg.ContentTime = when.strftime("%H%M%S")
    seg.SeriesDate = when.strftime("%Y%m%d")
    seg.SeriesTime = when.strftime("%H%M%S")
    for equipment in seg.get("ContributingEquipmentSequence", []):
        if "ContributionDateTime" in equipment:
            equipment.ContributionDateTime = when.strftime("%Y%m%d%H%M%S")
    organization = derived_uid(*uid_parts, "dimension-organization")
    for item in [*seg.get("DimensionOrganizationSequence", []), *seg.get("DimensionIndexSequence", [])]:
        item.DimensionOrganizationUID = organization
    buffer = io.BytesIO()
    seg.save_as(buffer)
    return buffer.getvalue()


def add_coco_entry(document: dict[str, Any], file_name: str, uid: str, mask: np.ndarray, when: str) -> None:
    """The image and (if the annotator outlined a lesion) its box, COCO style."""
    image_id = len(document["images"]) + 1
    document["images"].append({"id": image_id, "width": int(mask.shape[1]), "height": int(mask.shape[0]),
                               "file_name": file_name, "sop_instance_uid": uid})
    box = mask_box(mask)
    if box is not None:
        document["annotations"].append({"id": len(document["annotations"]) + 1, "image_id": image_id, "category_id": 1,
                                        "bbox": box, "area": box[2] * box[3], "iscrowd": 0, "annotated_at": when})
