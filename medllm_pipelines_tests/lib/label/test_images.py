"""Image annotation readers: NIfTI masks, DICOM SEG and COCO boxes, each validated per image."""

from __future__ import annotations

import json

import numpy as np
import pytest

from medllm_pipelines.lib.label.images import (
    BOX_OUT_OF_BOUNDS,
    MALFORMED_FILE,
    UNKNOWN_IMAGE,
    UNKNOWN_IMAGE_REFERENCE,
    UNKNOWN_LABEL,
    WRONG_SHAPE,
    mask_to_rle,
    read_coco,
    read_dicom_seg,
    read_nifti_mask,
    rle_to_mask,
)
from medllm_pipelines.lib.synth.annotation_images import nifti_mask_bytes

PROVENANCE = {"annotator_id": "ann-01", "annotated_at": "2025-11-10T09:00:00+08:00", "tool": "ITK-SNAP 4.2",
              "guideline_version": "lesion-annotation-v1.0"}


def _shapes(delivery):
    return {u: (int(r), int(c)) for u, r, c in delivery.dicom_index[["sop_instance_uid", "rows", "columns"]].itertuples(index=False)}


@pytest.mark.parametrize("seed", [0, 1])
def test_rle_round_trips(seed):
    mask = np.random.default_rng(seed).random((13, 17)) < 0.4
    assert np.array_equal(rle_to_mask(mask_to_rle(mask), mask.shape), mask)
    assert mask_to_rle(np.zeros((2, 2), dtype=bool)) == "4"


def test_nifti_mask_round_trips_slice_by_slice():
    rng = np.random.default_rng(0)
    slices = [(rng.random((8, 6)) < 0.3).astype(np.uint8) for _ in range(3)]
    uids = ["1.2.3", "1.2.4", "1.2.5"]
    result = read_nifti_mask(nifti_mask_bytes(slices, uids, PROVENANCE), {u: (8, 6) for u in uids})
    assert result.rejections == [] and result.provenance == PROVENANCE
    for annotation, expected in zip(result.annotations, slices, strict=True):
        assert np.array_equal(annotation.mask, expected)


@pytest.mark.parametrize(
    ("shapes", "slices", "reason"),
    [
        ({"1.2.3": (8, 6)}, [np.zeros((4, 3), dtype=np.uint8)], WRONG_SHAPE),
        ({}, [np.zeros((8, 6), dtype=np.uint8)], UNKNOWN_IMAGE),
        ({"1.2.3": (8, 6)}, [np.full((8, 6), 7, dtype=np.uint8)], UNKNOWN_LABEL),
    ],
)
def test_bad_masks_are_rejected_per_image(shapes, slices, reason):
    result = read_nifti_mask(nifti_mask_bytes(slices, ["1.2.3"], PROVENANCE), shapes)
    assert [r.reason_code for r in result.rejections] == [reason]
    assert result.annotations == [] and result.records_in == 1


def test_unreadable_and_unreferenced_files_are_rejected():
    assert read_nifti_mask(b"not a nifti", {}).rejections[0].reason_code == MALFORMED_FILE
    assert read_dicom_seg(b"not dicom", {}).rejections[0].reason_code == MALFORMED_FILE
    assert read_coco(b"[1, 2]", {}).rejections[0].reason_code == MALFORMED_FILE


def test_synthetic_dicom_seg_references_the_source_images(delivery):
    segs = [o for o in delivery.objects if o.kind == "dicom_seg"]
    assert segs, "the hospital delivers DICOM SEG objects"
    result = read_dicom_seg(delivery.read(segs[0].sha256), _shapes(delivery))
    assert result.rejections == []
    assert result.provenance["annotator_id"] == "ann-01" and result.provenance["guideline_version"] == "lesion-annotation-v1.0"
    study = delivery.dicom_index.set_index("sop_instance_uid").loc[[a.sop_instance_uid for a in result.annotations], "study_uid"]
    assert study.nunique() == 1, "one SEG covers one study"
    assert any(a.mask.any() for a in result.annotations)


def test_coco_boxes_are_checked_against_the_image(delivery):
    shapes = _shapes(delivery)
    uid = next(iter(shapes))
    rows, columns = shapes[uid]
    document = {
        "info": {"annotator_id": "ann-02", "tool": "CVAT 2.11", "guideline_version": "lesion-annotation-v1.0", "date_created": "x"},
        "categories": [{"id": 1, "name": "LESION"}, {"id": 2, "name": "TUMOUR"}],
        "images": [
            {"id": 1, "width": columns, "height": rows, "sop_instance_uid": uid},
            {"id": 2, "width": columns, "height": rows, "sop_instance_uid": uid},
            {"id": 3, "width": columns, "height": rows, "sop_instance_uid": uid},
            {"id": 4, "width": columns + 1, "height": rows, "sop_instance_uid": uid},
            {"id": 5, "width": columns, "height": rows, "sop_instance_uid": "9.9.9"},
        ],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [2, 3, 4, 5]},
            {"id": 2, "image_id": 2, "category_id": 1, "bbox": [columns - 2, 3, 4, 5]},
            {"id": 3, "image_id": 3, "category_id": 2, "bbox": [2, 3, 4, 5]},
            {"id": 4, "image_id": 42, "category_id": 1, "bbox": [2, 3, 4, 5]},
        ],
    }
    result = read_coco(json.dumps(document).encode(), shapes)
    assert [a.boxes for a in result.annotations] == [[(2.0, 3.0, 4.0, 5.0)]]
    assert sorted(r.reason_code for r in result.rejections) == sorted(
        [BOX_OUT_OF_BOUNDS, UNKNOWN_LABEL, WRONG_SHAPE, UNKNOWN_IMAGE, UNKNOWN_IMAGE_REFERENCE])
    assert result.records_in == len(result.annotations) + len(result.rejections)
