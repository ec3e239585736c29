"""DICOM studies read back, carry identifiers where real ones do, and show their lesions."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest

from medllm_pipelines.lib.synth import is_valid_resident_id
from medllm_pipelines.lib.synth.dicom import PRIVATE_CREATOR, PRIVATE_GROUP, render_slice
from medllm_pipelines.lib.synth.determinism import stream
from medllm_pipelines_tests.lib.synth.conftest import Hospital


def test_images_read_back_with_a_complete_header(clean_hospital: Hospital) -> None:
    identities = {(row["institution"], row["mrn"]): row for row in clean_hospital.identities}
    images = clean_hospital.image_truth
    assert images
    for image in images:
        ds = pydicom.dcmread(clean_hospital.root / image["file"])
        assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
        assert ds.Modality == image["modality"]
        assert (ds.Rows, ds.Columns, ds.BitsAllocated) == (64, 64, 16)
        assert ds.pixel_array.dtype == np.uint16
        for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "PixelSpacing", "AccessionNumber",
                        "InstitutionName", "ReferringPhysicianName"):
            assert ds.get(keyword), keyword
        identity = identities[(image["institution"], str(ds.PatientID))]
        assert ds.PatientBirthDate == identity["birth_date"].replace("-", "")
        assert ds.AccessionNumber in identity["accession_numbers"]
        if identity["resident_id"]:
            assert ds.OtherPatientIDsSequence[0].PatientID == identity["resident_id"]
            assert is_valid_resident_id(identity["resident_id"])
        block = ds.private_block(PRIVATE_GROUP, PRIVATE_CREATOR)
        assert block[0x01].value == identity["phone"]
        assert block[0x02].value == identity["address"]


def test_uids_are_unique_per_instance_and_shared_within_a_study(clean_hospital: Hospital) -> None:
    studies: dict[str, set[str]] = {}
    instances = []
    for image in clean_hospital.image_truth:
        ds = pydicom.dcmread(clean_hospital.root / image["file"], stop_before_pixels=True)
        studies.setdefault(f"{image['institution']}/{image['study']}", set()).add(str(ds.StudyInstanceUID))
        instances.append(str(ds.SOPInstanceUID))
    assert all(len(uids) == 1 for uids in studies.values())
    assert len(set(instances)) == len(instances)


def test_lesion_masks_cover_the_bright_pixels(clean_hospital: Hospital) -> None:
    positives = 0
    for image in clean_hospital.image_truth:
        pixels = pydicom.dcmread(clean_hospital.root / image["file"]).pixel_array.astype(float)
        mask = np.load(clean_hospital.root / image["mask_file"])
        assert mask.dtype == np.uint8 and mask.shape == pixels.shape
        assert bool(mask.any()) == image["lesion"]
        if image["lesion"]:
            positives += 1
            assert pixels[mask == 1].mean() > pixels[mask == 0].mean() + 150
    assert positives > 0
    assert clean_hospital.manifest.imaging["lesion_positive"] == positives


@pytest.mark.parametrize("modality", ["CT", "MR"])
def test_a_lesion_raises_intensity_against_the_same_anatomy(modality: str) -> None:
    with_lesion, mask = render_slice(modality, True, stream(0, "lesion-test"))
    without, empty = render_slice(modality, False, stream(0, "lesion-test"))
    assert not empty.any() and mask.any()
    inside = mask == 1
    assert with_lesion[inside].astype(float).mean() > without[inside].astype(float).mean() + 100


def test_about_a_third_of_patients_have_a_study(clean_hospital: Hospital) -> None:
    rows = clean_hospital.patient_truth
    share = sum(row["imaging_study"] is not None for row in rows) / len(rows)
    assert 0.15 <= share <= 0.45
