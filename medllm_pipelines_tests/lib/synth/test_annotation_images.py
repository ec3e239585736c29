"""Lesion annotations of the imaging studies: perturbed masks, NIfTI and DICOM SEG files, COCO boxes."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pydicom

from medllm_pipelines.lib.synth.annotation_files import ANNOTATORS
from medllm_pipelines.lib.synth.annotation_images import (
    MaskErrors,
    add_coco_entry,
    mask_box,
    mask_dice,
    nifti_mask_bytes,
    perturb_mask,
)
from medllm_pipelines_tests.lib.synth.conftest import Hospital

PROVENANCE = {"annotator_id": "ann-02", "annotated_at": "2025-11-10T09:00:00+08:00", "tool": "ITK-SNAP 4.2",
              "guideline_version": "lesion-annotation-v1.0"}


def _nifti(path: Path) -> tuple[np.ndarray, dict[str, Any]]:
    image = nib.Nifti1Image.from_bytes(gzip.decompress(path.read_bytes()))
    document = json.loads(image.header.extensions[0].get_content())
    return np.asanyarray(image.dataobj), document


def _lesion() -> np.ndarray:
    mask = np.zeros((12, 16), dtype=np.uint8)
    mask[3:7, 5:10] = 1
    return mask


def test_perturbed_masks_keep_empty_slices_empty_and_miss_only_at_the_miss_rate() -> None:
    empty = np.zeros((12, 16), dtype=np.uint8)
    always = MaskErrors(dilate=1.0, erode=0.0, shift=1.0, miss=0.0)
    assert not perturb_mask(empty, always, np.random.default_rng(0)).any()
    assert not perturb_mask(_lesion(), MaskErrors(0.0, 0.0, 0.0, miss=1.0), np.random.default_rng(0)).any()
    exact = perturb_mask(_lesion(), MaskErrors(0.0, 0.0, 0.0, 0.0), np.random.default_rng(0))
    assert np.array_equal(exact, _lesion()) and mask_dice(exact, _lesion()) == 1.0
    dilated = perturb_mask(_lesion(), MaskErrors(dilate=1.0, erode=0.0, shift=0.0, miss=0.0), np.random.default_rng(0))
    assert dilated.sum() == 20 + 2 * 4 + 2 * 5 and 0.6 < mask_dice(dilated, _lesion()) < 1.0
    assert np.isnan(mask_dice(empty, empty)), "two empty slices are no agreement to score"


def test_coco_entries_name_the_image_and_box_only_outlined_lesions() -> None:
    document: dict[str, Any] = {"images": [], "annotations": []}
    add_coco_entry(document, "study-00001/IM00001.dcm", "2.25.1", _lesion(), "2025-11-10T09:00:00+08:00")
    add_coco_entry(document, "study-00001/IM00002.dcm", "2.25.2", np.zeros((12, 16), dtype=np.uint8), "x")
    assert [(i["id"], i["width"], i["height"], i["sop_instance_uid"]) for i in document["images"]] == [
        (1, 16, 12, "2.25.1"), (2, 16, 12, "2.25.2")]
    assert [(a["image_id"], a["bbox"], a["area"]) for a in document["annotations"]] == [(1, [5, 3, 5, 4], 20)]
    assert mask_box(np.zeros((2, 2))) is None


def test_nifti_masks_are_byte_identical_for_the_same_input(tmp_path: Path) -> None:
    slices, uids = [_lesion(), np.zeros((12, 16), dtype=np.uint8)], ["2.25.1", "2.25.2"]
    data = nifti_mask_bytes(slices, uids, PROVENANCE)
    assert data == nifti_mask_bytes(slices, uids, PROVENANCE)
    path = tmp_path / "study-00001.nii.gz"
    path.write_bytes(data)
    volume, document = _nifti(path)
    assert volume.shape == (16, 12, 2) and np.array_equal(volume[:, :, 0].T, _lesion())
    assert document["sop_instance_uids"] == uids and document["annotator_id"] == "ann-02"


def test_masks_reference_the_study_images_by_sop_instance_uid(clean_hospital: Hospital) -> None:
    masks = sorted(clean_hospital.root.glob("*/annotations/masks/*/study-*.nii.gz"))
    assert masks
    for path in masks[:12]:
        data, document = _nifti(path)
        institution = path.relative_to(clean_hospital.root).parts[0]
        study = clean_hospital.root / institution / "dicom" / path.name.replace(".nii.gz", "")
        sources = [pydicom.dcmread(f, stop_before_pixels=True) for f in sorted(study.glob("*.dcm"))]
        assert document["sop_instance_uids"] == [str(ds.SOPInstanceUID) for ds in sources]
        assert data.shape == (sources[0].Columns, sources[0].Rows, len(sources))
        assert document["annotator_id"] == path.parent.name and document["tool"] and document["annotated_at"]


def test_dicom_seg_objects_are_built_with_highdicom_from_the_source_images(clean_hospital: Hospital) -> None:
    import highdicom as hd

    segs = sorted(clean_hospital.root.glob("*/annotations/seg/*/*.dcm"))
    assert len(segs) >= 3
    seg = hd.seg.segread(segs[0])
    assert seg.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4"
    institution = segs[0].relative_to(clean_hospital.root).parts[0]
    study = clean_hospital.root / institution / "dicom" / segs[0].stem
    uids = {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in study.glob("*.dcm")}
    assert {sop for _, _, sop in seg.get_source_image_uids()} == uids
    assert str(seg.ContentCreatorName).strip("^") == "ann-01" and "lesion-annotation-v1.0" in seg.ContentDescription


def test_coco_boxes_lie_inside_their_images(clean_hospital: Hospital) -> None:
    for path in sorted(clean_hospital.root.glob("*/annotations/coco/boxes-*.json")):
        document = json.loads(path.read_text("utf-8"))
        assert document["info"]["annotator_id"] in ANNOTATORS
        images = {image["id"]: image for image in document["images"]}
        assert all(image["sop_instance_uid"].startswith("2.25.") for image in images.values())
        for annotation in document["annotations"]:
            x, y, w, h = annotation["bbox"]
            image = images[annotation["image_id"]]
            assert 0 <= x and 0 <= y and x + w <= image["width"] and y + h <= image["height"]
