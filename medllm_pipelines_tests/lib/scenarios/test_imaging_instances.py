"""Scenario A3, one instance: what is refused and why (a stable reason, no header value in the message), and what
preprocessing does to the pixels (modality LUT, MONOCHROME1, padding, median) before the models' own z-score.

The DICOM builders here are shared by the other ``test_imaging_*`` files: CT/MR Part-10 files written with pydicom,
64x64 with a bright disc (the lesion), headers planted with identifiers that must never reach an output."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, MRImageStorage, SecondaryCaptureImageStorage

from medllm_pipelines.lib.scenarios.errors import ScenarioInputError
from medllm_pipelines.lib.scenarios.imaging.instances import accept_instance, burned_in_suspect, preprocess
from medllm_pipelines.lib.train.imaging.images import normalise_slice

# Planted in every header the builders write; none may appear in any output.
PLANTED = {"PatientName": "Planted^Winifred", "PatientID": "MRN-PLANTED-4711", "PatientBirthDate": "19510607",
           "AccessionNumber": "ACCPLANT0815", "InstitutionName": "Plantation General Hospital",
           "ReferringPhysicianName": "Quackenbush^Hieronymus", "PerformingPhysicianName": "Vandersloot^Ottilie",
           "OperatorsName": "Strudelmeyer^Kunigunde"}
PLANTED_NEEDLES = ("Planted", "Winifred", "MRN-PLANTED-4711", "19510607", "ACCPLANT0815", "Plantation",
                   "Quackenbush", "Hieronymus", "Vandersloot", "Strudelmeyer")
SIZE = 64
TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"  # shipped with pydicom, no download


def disc_slice(modality: str = "CT", centre: tuple[float, float] = (38.0, 24.0), radius: float = 6.0, *,
               lesion: bool = True, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Stored uint16 pixels of a body ellipse with a bright disc, and the disc's mask (the truth)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(float)
    body = ((yy - 32) / 22) ** 2 + ((xx - 32) / 26) ** 2 <= 1.0
    mask = lesion & (((yy - centre[0]) ** 2 + (xx - centre[1]) ** 2) <= radius ** 2)
    if modality == "CT":  # stored = HU + 1024
        values = np.where(body, 1064.0, 24.0) + 600.0 * mask + rng.normal(0.0, 8.0, body.shape)
    else:
        values = np.where(body, 400.0, 10.0) + 500.0 * mask + rng.normal(0.0, 6.0, body.shape)
    return np.clip(np.rint(values), 0, 4095).astype(np.uint16), mask


def dicom_dataset(pixels: np.ndarray, *, modality: str = "CT", study_uid: str = "1.2.826.0.1.3680043.10.1.1",
                  instance: int = 1, spacing: float | None = 0.7, **attributes: object) -> Dataset:
    """A single-frame grey CT/MR instance with planted identifiers; ``attributes`` override or add."""
    sop_class = {"CT": CTImageStorage, "MR": MRImageStorage}.get(modality, SecondaryCaptureImageStorage)
    sop_uid = f"{study_uid}.9.{instance}"
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, sop_uid
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, f"{study_uid}.1", f"{study_uid}.2"
    ds.Modality, ds.PatientSex, ds.StudyDate, ds.StudyTime, ds.StudyID = modality, "F", "20240311", "093000", "7"
    for keyword, value in PLANTED.items():
        setattr(ds, keyword, value)
    ds.StudyDescription = f"CT chest for {PLANTED['PatientName'].replace('^', ' ')}"
    ds.BurnedInAnnotation = "NO"
    ds.SeriesNumber, ds.InstanceNumber = 1, instance
    ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    ds.ImagePositionPatient = [-20.0, -20.0, 5.0 * instance]
    ds.SliceThickness = 5.0
    if spacing is not None:
        ds.PixelSpacing = [spacing, spacing]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    if modality == "CT":
        ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = 1.0, -1024.0, "HU"
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    ds.PixelData = np.ascontiguousarray(pixels, dtype=np.uint16).tobytes()
    return ds


def part10(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def disc_instance(modality: str = "CT", **kwargs: object) -> bytes:
    pixels, _ = disc_slice(modality)
    return part10(dicom_dataset(pixels, modality=modality, **kwargs))


def _refused(data: bytes, **kwargs: object) -> ScenarioInputError:
    with pytest.raises(ScenarioInputError) as caught:
        accept_instance(data, deidentify=kwargs.pop("deidentify", None), max_pixels=int(kwargs.pop("max_pixels",
                                                                                                  1 << 20)))
    error = caught.value
    assert not any(needle in error.detail for needle in PLANTED_NEEDLES)
    return error


def _without(keyword: str) -> Callable[[Dataset], None]:
    return lambda ds: delattr(ds, keyword)


# --- refusals ----------------------------------------------------------------------------------
@pytest.mark.parametrize("data", [b"", b"hello, this is not an image", b"\0" * 128 + b"DICX" + b"\0" * 64,
                                  b"\0" * 128 + b"DICM" + b"\xff" * 40])
def test_bytes_that_are_not_part10_dicom_are_refused_as_unsupported_media(data: bytes) -> None:
    error = _refused(data)
    assert (error.reason, error.status) == ("not_dicom", 415)


def test_a_preambleless_dataset_is_refused_even_though_pydicom_could_read_it() -> None:
    raw = disc_instance()[132:]  # the file meta and the dataset, without preamble and prefix
    assert pydicom.dcmread(io.BytesIO(raw), force=True).PatientID == PLANTED["PatientID"]
    assert _refused(raw).reason == "not_dicom"


@pytest.mark.parametrize("name", ["test-SR.dcm", "rtplan.dcm"])
def test_an_instance_without_pixels_is_not_an_image(name: str) -> None:
    error = _refused((TEST_FILES / name).read_bytes())
    assert (error.reason, error.status) == ("not_an_image", 422)


def test_a_presentation_state_is_not_an_image() -> None:
    ds = dicom_dataset(disc_slice()[0])
    del ds.PixelData
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.11.1"  # GSPS
    ds.Modality = "PR"
    assert _refused(part10(ds)).reason == "not_an_image"


@pytest.mark.parametrize(("modality", "attributes"), [
    ("CT", {"BurnedInAnnotation": "YES"}),
    ("CT", {"BurnedInAnnotation": "yes "}),
    ("US", {"BurnedInAnnotation": ""}),  # ultrasound without an explicit NO
    ("OT", {}),  # secondary capture class, BurnedInAnnotation NO removed below
    ("CT", {"SOPClassUID": SecondaryCaptureImageStorage}),  # a CT screenshot stored as SC
])
def test_burned_in_annotation_or_a_screen_capture_without_an_explicit_no_is_refused(modality, attributes) -> None:
    ds = dicom_dataset(disc_slice()[0], modality=modality, **attributes)
    if modality == "OT" or "SOPClassUID" in attributes:
        del ds.BurnedInAnnotation
    assert burned_in_suspect(ds)
    error = _refused(part10(ds))
    assert (error.reason, error.status) == ("burned_in_annotation", 422)


def test_a_ct_without_the_attribute_and_a_screen_capture_with_an_explicit_no_are_accepted() -> None:
    ct = dicom_dataset(disc_slice()[0])
    del ct.BurnedInAnnotation
    assert not burned_in_suspect(ct)
    sc = dicom_dataset(disc_slice()[0], modality="OT", BurnedInAnnotation="NO")
    assert accept_instance(part10(sc), deidentify=None, max_pixels=1 << 20).stored.shape == (SIZE, SIZE)
    assert accept_instance(part10(ct), deidentify=None, max_pixels=1 << 20).stored.shape == (SIZE, SIZE)


def test_an_image_over_the_pixel_limit_is_refused_from_its_header() -> None:
    error = _refused(disc_instance(), max_pixels=SIZE * SIZE - 1)
    assert error.reason == "image_too_large" and str(SIZE * SIZE - 1) in error.detail


def _colour() -> bytes:
    ds = pydicom.dcmread(TEST_FILES / "SC_rgb_jpeg_dcmtk.dcm")
    ds.BurnedInAnnotation = "NO"  # else it is refused as a screen capture first
    return part10(ds)


def _multi_frame() -> bytes:
    pixels = np.stack([disc_slice()[0]] * 2)
    ds = dicom_dataset(pixels[0], NumberOfFrames=2)
    ds.PixelData = pixels.tobytes()
    return part10(ds)


def _float_pixels() -> bytes:
    ds = dicom_dataset(disc_slice()[0])
    del ds.PixelData
    ds.FloatPixelData = np.zeros((SIZE, SIZE), np.float32).tobytes()
    return part10(ds)


@pytest.mark.parametrize(("build", "says"), [
    (_colour, "colour"),
    (_multi_frame, "2 frames"),
    (_float_pixels, "float"),
    (lambda: (TEST_FILES / "MR_truncated.dcm").read_bytes(), "decoded"),
    (lambda: part10(dicom_dataset(disc_slice()[0][:8, :8])), "at least"),
    (lambda: disc_instance(RescaleSlope=-1.0), "slope"),
])
def test_pixel_data_the_models_cannot_take_is_refused_saying_why(build, says) -> None:
    error = _refused(build())
    assert error.reason == "unsupported_pixel_data" and says in error.detail


def test_a_deidentifier_that_fails_is_refused_by_exception_type_only() -> None:
    def broken(ds: Dataset) -> Dataset:
        raise RuntimeError(f"cannot handle {ds.PatientName}")

    error = _refused(disc_instance(), deidentify=broken)
    assert error.reason == "deidentification_failed" and "RuntimeError" in error.detail


# --- real files pydicom ships ------------------------------------------------------------------
@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small.dcm", "MR_small_RLE.dcm", "MR_small_bigendian.dcm"])
def test_ct_and_mr_files_written_by_others_are_accepted_and_decoded(name: str) -> None:
    accepted = accept_instance((TEST_FILES / name).read_bytes(), deidentify=None, max_pixels=1 << 20)
    assert accepted.stored.ndim == 2 and accepted.stored.shape == (accepted.dataset.Rows, accepted.dataset.Columns)


# --- preprocessing -----------------------------------------------------------------------------
def test_the_modality_lut_gives_hounsfield_units_and_leaves_the_models_z_score_unchanged() -> None:
    pixels, mask = disc_slice()
    ds = dicom_dataset(pixels, RescaleSlope=2.0, RescaleIntercept=-2048.0)
    prepared = preprocess(ds, pixels, denoise=False)
    assert prepared.intensity_unit == "HU"
    assert np.allclose(prepared.modality_values, 2.0 * pixels - 2048.0)
    # the networks were trained on stored values: a positive rescale does not move the z-scores they see
    assert np.allclose(normalise_slice(prepared.model_input), normalise_slice(pixels), atol=1e-5)


def test_monochrome1_is_inverted_so_a_lesion_stays_bright() -> None:
    pixels, mask = disc_slice("MR")
    inverted = (4095 - pixels).astype(np.uint16)
    ds = dicom_dataset(inverted, modality="MR", PhotometricInterpretation="MONOCHROME1")
    prepared = preprocess(ds, inverted, denoise=False)
    assert prepared.modality_values[mask].mean() > prepared.modality_values[~mask].mean() + 300
    assert np.allclose(normalise_slice(prepared.model_input), normalise_slice(pixels), atol=1e-4)


def test_padding_pixels_take_the_darkest_real_value_instead_of_skewing_the_z_score() -> None:
    pixels, _ = disc_slice()
    padded = np.maximum(pixels, 1)
    padded[:4, :] = 0
    ds = dicom_dataset(padded, PixelPaddingValue=0)
    prepared = preprocess(ds, padded, denoise=False)
    assert prepared.padding_pixels == 4 * SIZE
    assert prepared.modality_values[:4].min() == prepared.modality_values[4:].min()


def test_the_median_filter_removes_salt_noise_but_keeps_the_disc() -> None:
    pixels, mask = disc_slice()
    noisy = pixels.copy()
    noisy[10, 30] = 4000  # one hot pixel in the body
    ds = dicom_dataset(noisy)
    prepared = preprocess(ds, noisy)
    assert prepared.model_input[10, 30] < 100  # HU of the body, not the spike
    assert prepared.model_input[mask].mean() == pytest.approx(prepared.modality_values[mask].mean(), abs=60)
    assert prepared.modality_values[10, 30] == 4000 - 1024  # measurements read the unfiltered values
