"""The predicted lesion masks as a DICOM Segmentation (highdicom), built from an allow-list of the sources.

highdicom copies the Patient and General Study modules, the acquisition equipment (institution, station) and
the clinical-trial attributes of the first source image into the SEG. Whatever the de-identifier left, the SEG
is built from ``reference_dataset`` copies that hold only what a SEG needs to reference and place its frames
(UIDs, image plane, pixel description): patient and study attributes are empty, except the pseudonymous
PatientName/PatientID and the shifted study date/time of an instance the project's de-identifier marked
``PatientIdentityRemoved`` YES. Birth date, accession number, physicians and institution never reach it.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset

SEGMENT_LABEL = "Lesion"
SEG_SERIES_NUMBER = 900
MANUFACTURER = "medllm_pipelines"
# Copied from the source as they are: references, the image plane and the pixel description. No identifier.
REFERENCE_KEYWORDS = (
    "SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID",
    "Modality", "SeriesNumber", "InstanceNumber", "Rows", "Columns", "PixelSpacing", "ImageOrientationPatient",
    "ImagePositionPatient", "SliceThickness", "SpacingBetweenSlices", "PatientOrientation", "SamplesPerPixel",
    "PhotometricInterpretation", "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation", "PatientSex",
    "BodyPartExamined", "Laterality", "ImageLaterality", "SpecificCharacterSet",
)
# Copied only from an instance the de-identifier marked PatientIdentityRemoved YES (pseudonym, shifted dates).
DEIDENTIFIED_KEYWORDS = ("PatientName", "PatientID", "StudyDate", "StudyTime", "PatientIdentityRemoved",
                         "DeidentificationMethod")
# The image plane without a pixel spacing cannot place frames: then the SEG references instances, not positions.
PLANE_KEYWORDS = ("ImageOrientationPatient", "ImagePositionPatient", "SliceThickness", "SpacingBetweenSlices")
# The Patient and Study attributes highdicom reads from the first source: empty unless copied above.
BLANK_KEYWORDS = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID",
                  "StudyDate", "StudyTime", "ReferringPhysicianName")


def identity_removed(ds: Dataset) -> bool:
    return str(ds.get("PatientIdentityRemoved", "") or "").strip().upper() == "YES"


def reference_dataset(ds: Dataset, uids: dict[str, str] | None = None) -> Dataset:
    """A copy of ``ds`` with only the allow-listed attributes; ``uids`` replaces the four instance UIDs."""
    reference = Dataset()
    for keyword in REFERENCE_KEYWORDS + (DEIDENTIFIED_KEYWORDS if identity_removed(ds) else ()):
        if keyword in ds:
            reference[keyword] = ds[keyword]
    if "PixelSpacing" not in reference:
        for keyword in PLANE_KEYWORDS:
            if keyword in reference:
                delattr(reference, keyword)
    for keyword in BLANK_KEYWORDS:
        if keyword not in reference:
            setattr(reference, keyword, "")
    for keyword, value in (uids or {}).items():
        setattr(reference, keyword, value)
    name = str(reference.PatientName)
    if name and "^" not in name and "=" not in name:
        reference.PatientName = f"{name}^"  # a one-component name (a pseudonym) is a family name in DICOM PN
    reference.file_meta = FileMetaDataset()
    reference.file_meta.MediaStorageSOPClassUID = reference.SOPClassUID
    reference.file_meta.MediaStorageSOPInstanceUID = reference.SOPInstanceUID
    if "TransferSyntaxUID" in getattr(ds, "file_meta", {}):
        reference.file_meta.TransferSyntaxUID = ds.file_meta.TransferSyntaxUID
    return reference


def segmentation_dicom(references: Sequence[Dataset], masks: Sequence[np.ndarray], *, model_name: str,
                       model_version: str, software_version: str) -> bytes:
    """A BINARY DICOM Segmentation with one segment, Lesion (SNOMED CT 52988006, category morphologically
    abnormal structure 49755003), one frame per source instance, made by an AUTOMATIC algorithm."""
    import highdicom as hd
    from pydicom.sr.codedict import codes
    from pydicom.uid import generate_uid

    algorithm = hd.AlgorithmIdentificationSequence(name=model_name[:64] or "segmenter",
                                                   family=codes.cid7162.ArtificialIntelligence,
                                                   version=model_version[:64] or "unversioned")
    description = hd.seg.SegmentDescription(
        segment_number=1, segment_label=SEGMENT_LABEL,
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Lesion,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC, algorithm_identification=algorithm)
    seg = hd.seg.Segmentation(
        source_images=list(references), pixel_array=np.stack([np.asarray(m, dtype=bool) for m in masks]),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY, segment_descriptions=[description],
        series_instance_uid=generate_uid(), series_number=SEG_SERIES_NUMBER, sop_instance_uid=generate_uid(),
        instance_number=1, manufacturer=MANUFACTURER, manufacturer_model_name=model_name[:64] or "segmenter",
        software_versions=software_version, device_serial_number="0", content_label="LESION",
        content_description="AI lesion segmentation, not reviewed", omit_empty_frames=False)
    buffer = io.BytesIO()
    seg.save_as(buffer)
    return buffer.getvalue()


def read_segmentation(data: bytes) -> Any:
    """The SEG read back with highdicom (for callers and tests that check what was written)."""
    import highdicom as hd

    return hd.seg.segread(io.BytesIO(data))
