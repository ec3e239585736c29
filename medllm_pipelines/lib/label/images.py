"""Image annotations: NIfTI masks, DICOM SEG (highdicom) and COCO boxes, validated per image.

Each reader returns one ``ImageAnnotation`` per (image, annotator) found in
the file, every image named by its SOPInstanceUID (never by a path), and a
``Rejection`` for what cannot be accepted: an image the DICOM index does not
know, a mask whose shape is not the image's, a box outside the image, a label
value the guideline does not declare, an unregistered annotator or an unknown
guideline version (checked by the caller with ``registry.check_provenance``).

NIfTI convention (agreed with the labelling office, as ITK-SNAP exports it
from DICOM): axes (column, row, instance), label value 1 = lesion, and a JSON
header extension (ecode 6, "comment") holding ``sop_instance_uids`` (one per
slice) and the provenance fields. DICOM SEG: provenance from
ContentCreatorName, ContentDate/Time, SoftwareVersions and
``ContentDescription = "guideline_version=<id>"``. COCO: provenance in
``info`` (annotator_id, tool, guideline_version, date_created) and per
annotation ``annotated_at``; ``images[].sop_instance_uid`` names the image.
"""

from __future__ import annotations

import gzip
import io
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from medllm_pipelines.lib.label.brat import MISSING_PROVENANCE, Rejection
from medllm_pipelines.lib.label.registry import UNKNOWN_LABEL

MASK = "mask"
BOX = "box"
NIFTI = "nifti"
DICOM_SEG = "dicom_seg"
COCO = "coco"

MALFORMED_FILE = "malformed_file"
UNKNOWN_IMAGE = "unknown_image"
WRONG_SHAPE = "wrong_shape"
BOX_OUT_OF_BOUNDS = "box_out_of_bounds"
UNKNOWN_IMAGE_REFERENCE = "unknown_image_reference"

ImageShapes = Mapping[str, tuple[int, int]]  # SOPInstanceUID -> (rows, columns)


@dataclass
class ImageAnnotation:
    """One annotator's annotation of one image: a mask, or the boxes drawn on it (maybe none)."""

    sop_instance_uid: str
    annotator_id: str
    annotated_at: str
    tool: str
    guideline_version: str
    source_format: str
    shape_kind: str  # mask | box
    mask: np.ndarray | None = None  # rows x columns uint8 (masks)
    boxes: list[tuple[float, float, float, float]] = field(default_factory=list)  # COCO x, y, w, h
    position: int | None = None  # slice index / COCO image index in the file

    def as_mask(self, shape: tuple[int, int]) -> np.ndarray:
        """The annotation as a binary mask (boxes are filled)."""
        if self.mask is not None:
            return self.mask.astype(bool)
        return boxes_to_mask(self.boxes, shape)


@dataclass
class ImageFileResult:
    annotations: list[ImageAnnotation] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)
    provenance: dict[str, str] = field(default_factory=dict)
    records_in: int = 0  # image entries found in the file (1 for an unreadable file)


def boxes_to_mask(boxes: list[tuple[float, float, float, float]], shape: tuple[int, int]) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    for x, y, w, h in boxes:
        x0, y0 = int(np.floor(x)), int(np.floor(y))
        x1, y1 = int(np.ceil(x + w)), int(np.ceil(y + h))
        mask[max(0, y0) : max(0, y1), max(0, x0) : max(0, x1)] = True
    return mask


def mask_to_rle(mask: np.ndarray) -> str:
    """Run lengths of the row-major flattened binary mask, starting with a run of zeros."""
    flat = np.asarray(mask, dtype=bool).ravel()
    if flat.size == 0:
        return ""
    changes = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate([[0], changes, [flat.size]])
    runs = np.diff(bounds).tolist()
    if flat[0]:
        runs = [0, *runs]
    return " ".join(str(r) for r in runs)


def rle_to_mask(rle: str, shape: tuple[int, int]) -> np.ndarray:
    flat = np.zeros(int(shape[0]) * int(shape[1]), dtype=bool)
    position, value = 0, False
    for run in (int(r) for r in rle.split()) if rle else ():
        if value:
            flat[position : position + run] = True
        position += run
        value = not value
    return flat.reshape(shape)


def _whole_file(result: ImageFileResult, code: str, reason: str) -> ImageFileResult:
    result.records_in = max(result.records_in, 1)
    result.annotations = []
    result.rejections = [Rejection(None, code, reason)] * result.records_in
    return result


# --- NIfTI ---------------------------------------------------------------------------
def read_nifti_mask(content: bytes, shapes: ImageShapes, labels: tuple[str, ...] = ("LESION",)) -> ImageFileResult:
    import nibabel as nib

    result = ImageFileResult()
    try:
        raw = gzip.decompress(content) if content[:2] == b"\x1f\x8b" else content
        image = nib.Nifti1Image.from_bytes(raw)
        data = np.asanyarray(image.dataobj)
    except Exception:  # noqa: BLE001 - nibabel raises many types for a broken file
        return _whole_file(result, MALFORMED_FILE, "not a readable NIfTI-1 file")
    document: dict[str, Any] = {}
    for extension in image.header.extensions:
        try:
            candidate = json.loads(extension.get_content())
        except (ValueError, TypeError, UnicodeDecodeError):
            continue
        if isinstance(candidate, dict) and "sop_instance_uids" in candidate:
            document = candidate
            break
    uids = document.get("sop_instance_uids") or []
    result.records_in = max(1, len(uids))
    result.provenance = {k: str(document.get(k, "")) for k in ("annotator_id", "annotated_at", "tool", "guideline_version")}
    if not uids or not result.provenance["annotator_id"]:
        return _whole_file(result, MISSING_PROVENANCE, "no JSON extension naming the SOPInstanceUID of each slice and the annotator")
    if data.ndim == 2:
        data = data[:, :, np.newaxis]
    if data.ndim != 3 or data.shape[2] != len(uids):
        return _whole_file(result, WRONG_SHAPE, "mask volume does not have one slice per referenced image")
    declared = {int(k) for k in (document.get("labels") or {"1": labels[0]})}
    values = set(np.unique(data).astype(int).tolist()) - {0}
    names = set((document.get("labels") or {}).values()) or {labels[0]}
    if not values <= declared or not names <= set(labels):
        return _whole_file(result, UNKNOWN_LABEL, "mask holds a label value the guideline does not declare")
    for index, uid in enumerate(uids):
        if uid not in shapes:
            result.rejections.append(Rejection(index, UNKNOWN_IMAGE, "referenced SOPInstanceUID is not in the DICOM index"))
            continue
        rows, columns = shapes[uid]
        if data.shape[0] != columns or data.shape[1] != rows:
            result.rejections.append(Rejection(index, WRONG_SHAPE, "mask slice shape differs from the image's rows x columns"))
            continue
        result.annotations.append(
            ImageAnnotation(uid, source_format=NIFTI, shape_kind=MASK, mask=(data[:, :, index].T > 0).astype(np.uint8),
                            position=index, **result.provenance)
        )
    return result


# --- DICOM SEG -------------------------------------------------------------------------
def read_dicom_seg(content: bytes, shapes: ImageShapes, labels: tuple[str, ...] = ("LESION",)) -> ImageFileResult:
    import highdicom as hd

    result = ImageFileResult()
    try:
        seg = hd.seg.segread(io.BytesIO(content))
        references = [sop for _, _, sop in seg.get_source_image_uids()]
    except Exception:  # noqa: BLE001 - pydicom/highdicom raise many types for a broken file
        return _whole_file(result, MALFORMED_FILE, "not a readable DICOM Segmentation")
    result.records_in = max(1, len(references))
    description = str(getattr(seg, "ContentDescription", "") or "")
    guideline = description.partition("guideline_version=")[2].strip()
    creator = str(getattr(seg, "ContentCreatorName", "") or "").strip("^ ")
    date, time = str(getattr(seg, "ContentDate", "")), str(getattr(seg, "ContentTime", ""))
    when = f"{date[:4]}-{date[4:6]}-{date[6:8]}T{time[:2]}:{time[2:4]}:{time[4:6]}" if len(date) == 8 and len(time) >= 6 else ""
    software = getattr(seg, "SoftwareVersions", "")
    tool = "\\".join(software) if isinstance(software, (list, tuple)) or type(software).__name__ == "MultiValue" else str(software)
    result.provenance = {"annotator_id": creator, "annotated_at": when, "tool": tool, "guideline_version": guideline}
    if not creator or not guideline or not references:
        return _whole_file(result, MISSING_PROVENANCE, "ContentCreatorName, ContentDescription guideline_version or references missing")
    segment_labels = [str(item.SegmentLabel) for item in seg.SegmentSequence]
    if not set(segment_labels) <= set(labels):
        return _whole_file(result, UNKNOWN_LABEL, "segment label not declared by the guideline")
    known = [uid for uid in references if uid in shapes]
    for index, uid in enumerate(references):
        if uid not in shapes:
            result.rejections.append(Rejection(index, UNKNOWN_IMAGE, "referenced SOPInstanceUID is not in the DICOM index"))
    if not known:
        return result
    if any(shapes[uid] != (int(seg.Rows), int(seg.Columns)) for uid in known):
        result.rejections.extend(Rejection(i, WRONG_SHAPE, "segmentation rows x columns differ from the image's")
                                 for i, uid in enumerate(references) if uid in shapes)
        return result
    pixels = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=known,
        segment_numbers=[1 + segment_labels.index(labels[0])] if labels[0] in segment_labels else None,
        ignore_spatial_locations=True,
        assert_missing_frames_are_empty=True,
    )
    for index, uid in enumerate(known):
        result.annotations.append(
            ImageAnnotation(uid, source_format=DICOM_SEG, shape_kind=MASK,
                            mask=(np.asarray(pixels[index]).max(axis=-1) > 0).astype(np.uint8),
                            position=references.index(uid), **result.provenance)
        )
    return result


# --- COCO ------------------------------------------------------------------------------
def read_coco(content: bytes, shapes: ImageShapes, labels: tuple[str, ...] = ("LESION",)) -> ImageFileResult:
    """One box annotation per COCO image entry (all its boxes; none = the annotator saw no lesion)."""
    result = ImageFileResult()
    try:
        document = json.loads(content.decode("utf-8"))
        images = list(document["images"])
        annotations = list(document.get("annotations") or [])
        categories = {int(c["id"]): str(c["name"]) for c in document.get("categories") or []}
    except (ValueError, KeyError, TypeError, UnicodeDecodeError, AttributeError):
        return _whole_file(result, MALFORMED_FILE, "not a COCO JSON document with images")
    info = document.get("info") or {}
    result.records_in = max(1, len(images))
    result.provenance = {
        "annotator_id": str(info.get("annotator_id") or ""),
        "annotated_at": str(info.get("date_created") or ""),
        "tool": str(info.get("tool") or ""),
        "guideline_version": str(info.get("guideline_version") or ""),
    }
    if not result.provenance["annotator_id"] or not result.provenance["guideline_version"]:
        return _whole_file(result, MISSING_PROVENANCE, "info.annotator_id or info.guideline_version missing")
    by_image: dict[Any, list[dict[str, Any]]] = {}
    image_ids = {entry.get("id") for entry in images}
    extra_rejections = []
    for annotation in annotations:
        if annotation.get("image_id") not in image_ids:
            extra_rejections.append(Rejection(None, UNKNOWN_IMAGE_REFERENCE, "box refers to an image id the file does not list"))
            continue
        by_image.setdefault(annotation["image_id"], []).append(annotation)
    for index, entry in enumerate(images):
        uid = str(entry.get("sop_instance_uid") or "")
        if uid not in shapes:
            result.rejections.append(Rejection(index, UNKNOWN_IMAGE, "image entry's sop_instance_uid is not in the DICOM index"))
            continue
        rows, columns = shapes[uid]
        if (int(entry.get("height", -1)), int(entry.get("width", -1))) != (rows, columns):
            result.rejections.append(Rejection(index, WRONG_SHAPE, "image width x height differ from the DICOM image's"))
            continue
        boxes, problem, when = [], None, result.provenance["annotated_at"]
        for annotation in by_image.get(entry.get("id"), []):
            try:
                x, y, w, h = (float(v) for v in annotation["bbox"])
            except (KeyError, TypeError, ValueError):
                problem = Rejection(index, MALFORMED_FILE, "bbox is not four numbers")
                break
            if categories.get(annotation.get("category_id")) not in labels:
                problem = Rejection(index, UNKNOWN_LABEL, "box category not declared by the guideline")
                break
            if x < 0 or y < 0 or w <= 0 or h <= 0 or x + w > columns or y + h > rows:
                problem = Rejection(index, BOX_OUT_OF_BOUNDS, "box extends outside the image")
                break
            boxes.append((x, y, w, h))
            when = str(annotation.get("annotated_at") or when)
        if problem is not None:
            result.rejections.append(problem)
            continue
        provenance = {**result.provenance, "annotated_at": when}
        result.annotations.append(
            ImageAnnotation(uid, source_format=COCO, shape_kind=BOX, boxes=boxes, position=index, **provenance)
        )
    result.rejections.extend(extra_rejections)
    result.records_in += len(extra_rejections)
    return result
