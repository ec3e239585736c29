"""DICOM Part-10 files -> a header index row per instance.

Pixel data stay in the encrypted raw object; the index records whether they
are complete (a truncated file is quarantined, not half-ingested).
"""

from __future__ import annotations

import io
from typing import Any

from medllm_pipelines.lib.common.records import QuarantineRecord

STAGE = "ingest"

DICOM_INDEX_COLUMNS = [
    "study_uid",
    "series_uid",
    "sop_instance_uid",
    "sop_class_uid",
    "modality",
    "rows",
    "columns",
    "bits_allocated",
    "samples_per_pixel",
    "number_of_frames",
    "patient_id",
    "patient_name",
    "patient_birth_date",
    "other_patient_ids",
    "institution_name",
    "accession_number",
    "study_date",
    "burned_in_annotation",
    "private_tag_count",
]


def _text(ds: Any, keyword: str) -> str | None:
    value = ds.get(keyword)
    if value is None or value == "":
        return None
    return str(value)


def _other_ids(ds: Any) -> str | None:
    values: list[str] = []
    if ds.get("OtherPatientIDs"):
        raw = ds.OtherPatientIDs
        values.extend(str(v) for v in (raw if isinstance(raw, (list, tuple)) else [raw]))
    for item in ds.get("OtherPatientIDsSequence") or []:
        if item.get("PatientID"):
            values.append(str(item.PatientID))
    return "\\".join(values) or None


def expected_pixel_bytes(ds: Any) -> int:
    frames = int(ds.get("NumberOfFrames") or 1)
    return int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel") or 1) * int(ds.BitsAllocated) // 8 * frames


_UNDEFINED_LENGTH = 0xFFFFFFFF
_PREAMBLE_AND_PREFIX = 132  # 128-byte preamble + b"DICM"
_GROUP_LENGTH_ELEMENT = 12  # (0002,0000) UL, explicit VR


def _ends_inside_element(ds: Any, size: int) -> bool:
    """Whether the file stops part-way through a data element: a cut transfer.

    pydicom reads such a file without complaint (the last value just comes back
    short, or the dataset is empty), which would otherwise be reported as
    missing fields. A complete Part-10 file ends exactly where its last
    element's value ends.
    """
    meta = getattr(ds, "file_meta", None)
    if meta is not None and meta.get("TransferSyntaxUID") == "1.2.840.10008.1.2.1.99":
        return False  # deflated: offsets refer to the inflated stream
    tags = list(ds.keys())
    if not tags:
        group_length = meta.get("FileMetaInformationGroupLength") if meta is not None else None
        if not isinstance(group_length, int):
            return True
        return size != _PREAMBLE_AND_PREFIX + _GROUP_LENGTH_ELEMENT + group_length
    last = ds.get_item(tags[-1])
    length, value_tell = getattr(last, "length", None), getattr(last, "value_tell", None)
    if length is None or value_tell is None or length == _UNDEFINED_LENGTH:
        return False
    return value_tell + length != size


def index_dicom_object(
    content: bytes, *, institution: str | None, source_object: str, asset: str
) -> tuple[dict[str, Any] | None, QuarantineRecord | None]:
    """Index one file; returns (row, None) or (None, quarantine record)."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    def reject(code: str, reason: str) -> tuple[None, QuarantineRecord]:
        return None, QuarantineRecord(STAGE, asset, institution, source_object, None, "DICOM", code, reason)

    if not content:
        return reject("empty_file", "file is empty (0 bytes)")
    try:
        ds = pydicom.dcmread(io.BytesIO(content))
    except InvalidDicomError:
        return reject("not_dicom", "no DICOM Part-10 preamble/DICM prefix")
    except Exception as exc:  # pydicom raises many types for damaged streams
        return reject("unreadable_dicom", f"DICOM parse failed: {type(exc).__name__}")
    # Before any element is accessed: access converts raw elements and drops their offsets.
    cut_short = _ends_inside_element(ds, len(content))
    cut_reason = f"file ends inside a data element ({len(content)} bytes)"
    for keyword in ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"):
        if not ds.get(keyword):
            if cut_short:
                return reject("truncated_file", cut_reason)
            return reject("missing_required_field", f"{keyword} is missing")
    if "PixelData" in ds:
        transfer_syntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
        if transfer_syntax is None or not transfer_syntax.is_compressed:
            try:
                expected = expected_pixel_bytes(ds)
            except (AttributeError, TypeError, ValueError):
                return reject("missing_required_field", "image geometry (Rows/Columns/BitsAllocated) missing")
            actual = len(ds.PixelData)
            if actual < expected:
                return reject("truncated_file", f"pixel data truncated: {actual} of {expected} bytes")
    else:
        if cut_short:
            return reject("truncated_file", cut_reason)
        return reject("missing_required_field", "no PixelData element")
    if cut_short:
        return reject("truncated_file", cut_reason)
    private_count = sum(1 for element in ds if element.tag.is_private)
    row = {
        "study_uid": str(ds.StudyInstanceUID),
        "series_uid": str(ds.SeriesInstanceUID),
        "sop_instance_uid": str(ds.SOPInstanceUID),
        "sop_class_uid": _text(ds, "SOPClassUID"),
        "modality": _text(ds, "Modality"),
        "rows": int(ds.Rows),
        "columns": int(ds.Columns),
        "bits_allocated": int(ds.BitsAllocated),
        "samples_per_pixel": int(ds.get("SamplesPerPixel") or 1),
        "number_of_frames": int(ds.get("NumberOfFrames") or 1),
        "patient_id": _text(ds, "PatientID"),
        "patient_name": _text(ds, "PatientName"),
        "patient_birth_date": _text(ds, "PatientBirthDate"),
        "other_patient_ids": _other_ids(ds),
        "institution_name": _text(ds, "InstitutionName"),
        "accession_number": _text(ds, "AccessionNumber"),
        "study_date": _text(ds, "StudyDate"),
        "burned_in_annotation": _text(ds, "BurnedInAnnotation"),
        "private_tag_count": private_count,
    }
    return row, None


def read_pixels(content: bytes) -> Any:
    """Decode the pixel array of a raw object (only the de-identify stage does this)."""
    import pydicom

    return pydicom.dcmread(io.BytesIO(content)).pixel_array
