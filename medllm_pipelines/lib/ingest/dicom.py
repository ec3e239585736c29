"""DICOM Part-10 files -> a header index row per instance, and study/series summaries.

Dates in the index are ISO 8601 (``study_date`` ``YYYY-MM-DD``; ``study_datetime``
with the ``TimezoneOffsetFromUTC`` offset when the file has one).

Only headers are parsed (``stop_before_pixels=True``): pixel data stay in the
encrypted raw object and are decoded lazily by the stage that needs them
(:func:`read_pixels`). Completeness is still checked - from the PixelData
element's offset and declared length (or its fragment items) against the file
size - so a truncated file is quarantined, not half-ingested.

What modalities write, and what becomes of it (:func:`index_dicom`):

* every transfer syntax pydicom knows is indexed; whether its pixel data can
  be decoded *here* (a decoder plugin installed for it: GDCM, pylibjpeg,
  pyjpegls, Pillow) is recorded per instance (``pixel_decodable`` and the
  reason when not), so that an image nobody can decode is withheld from
  models with that reason instead of failing the stage that reads pixels;
* a transfer syntax UID pydicom does not know, a sequence that does not
  parse, a missing SOP Instance UID, a cut file: that file is quarantined
  with a reason code, and the partition goes on;
* multi-frame objects (enhanced CT/MR, classic multi-frame) are indexed per
  frame as well (:data:`DICOM_FRAME_COLUMNS`: position, orientation, spacing,
  stack and temporal indices from the functional groups);
* a DICOMDIR is read as the index of its study folder, not as an image: its
  records are counted and its references checked against the instances
  delivered with it (missing referenced files are counted, not fatal).

Any other exception raised while reading one file becomes a quarantine
record (``unreadable_dicom``) naming the exception type only.

Completeness from offsets is ``dicom_extent.py``'s; a whole institution's
index (tables, reconciliation, study/series summaries) ``dicom_partition.py``'s.
"""

from __future__ import annotations

import datetime as dt
import io
import re
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from medllm_pipelines.lib.common.records import QuarantineRecord
from medllm_pipelines.lib.ingest.dicom_extent import (
    DEFLATED_EXPLICIT_LE,
    Source,
    ends_inside_element,
    expected_pixel_bytes,
    open_source,
    pixel_data_extent,
)

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
    "study_datetime",
    "burned_in_annotation",
    "private_tag_count",
    "series_number",
    "instance_number",
    "transfer_syntax_uid",
    "pixel_data_offset",
    "pixel_data_bytes",
    "file_bytes",
    "pixel_decodable",
    "pixel_undecodable_reason",
    "header_warnings",
]

DICOM_FRAME_COLUMNS = [
    "sop_instance_uid",
    "frame_number",
    "image_position_patient",
    "image_orientation_patient",
    "pixel_spacing",
    "slice_thickness",
    "stack_id",
    "in_stack_position",
    "temporal_position_index",
    "dimension_index_values",
    "frame_acquisition_datetime",
]

MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"
_UID = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")


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


@dataclass
class DicomDirectory:
    """What a DICOMDIR lists: record counts by type and the (file id, SOP Instance UID) it references."""

    records_by_type: dict[str, int]
    references: list[tuple[str, str | None]]


@dataclass
class DicomIndexed:
    """One file's outcome: an instance row (+ its frames), a directory, or a quarantine record."""

    instance: dict[str, Any] | None = None
    frames: list[dict[str, Any]] = field(default_factory=list)
    directory: DicomDirectory | None = None
    quarantine: QuarantineRecord | None = None


def index_dicom_object(
    content: Source, *, institution: str | None, source_object: str, asset: str
) -> tuple[dict[str, Any] | None, QuarantineRecord | None]:
    """Index one image file; returns (row, None) or (None, quarantine record).

    A DICOMDIR is not an image: it comes back as a ``not_an_image`` record
    here; :func:`index_dicom` reads it as a directory.
    """
    indexed = index_dicom(content, institution=institution, source_object=source_object, asset=asset)
    if indexed.directory is not None:
        return None, QuarantineRecord(STAGE, asset, institution, source_object, None, "DICOM", "not_an_image",
                                      "a DICOMDIR (media storage directory), not an image instance")
    return indexed.instance, indexed.quarantine


def index_dicom(content: Source, *, institution: str | None, source_object: str, asset: str) -> DicomIndexed:
    """Index one file (header only: ``stop_before_pixels=True``); never raises for what the file holds.

    Whether the pixel data are complete is decided from element offsets and
    the file size, so a file on disk (a path or an open file) is indexed
    without reading its pixels.
    """
    stream, size, owned = open_source(content)
    try:
        return _index(stream, size, institution=institution, source_object=source_object, asset=asset)
    except Exception as exc:  # noqa: BLE001 - one bad file must never fail the step: it is quarantined
        return DicomIndexed(quarantine=QuarantineRecord(
            STAGE, asset, institution, source_object, None, "DICOM", "unreadable_dicom",
            f"indexing failed: {type(exc).__name__}",
        ))
    finally:
        if owned:
            stream.close()


def pixel_decodability(transfer_syntax: Any) -> tuple[bool, str | None]:
    """Can the pixel data of this transfer syntax be decoded on this machine? (and why not)"""
    if transfer_syntax is None or not transfer_syntax.is_compressed:
        return True, None
    from pydicom.pixels import get_decoder

    try:
        decoder = get_decoder(transfer_syntax)
    except NotImplementedError:
        return False, f"pydicom has no pixel data decoder for {transfer_syntax.name}"
    if not decoder.is_available:
        return False, f"no decoder plugin installed for {transfer_syntax.name}"
    return True, None


def _check_sequences(ds: Any, depth: int = 0) -> str | None:
    """Parse every sequence (pydicom defers it); the keyword of the first that does not parse, else None."""
    from pydicom.datadict import dictionary_VR, keyword_for_tag

    if depth > 16:
        return "<nesting deeper than 16>"
    for tag in list(ds.keys()):
        raw = ds.get_item(tag)
        vr = getattr(raw, "VR", None)
        if vr is None and not tag.is_private:
            try:
                vr = dictionary_VR(tag)
            except KeyError:
                vr = None
        if vr != "SQ":
            continue
        try:
            items = list(ds[tag].value)
        except Exception:  # noqa: BLE001 - the reason is that the sequence does not parse
            return keyword_for_tag(tag) or f"private {tag}"
        for item in items:
            broken = _check_sequences(item, depth + 1)
            if broken:
                return broken
    return None


def _directory(ds: Any) -> DicomDirectory:
    counts: dict[str, int] = {}
    references: list[tuple[str, str | None]] = []
    for record in ds.get("DirectoryRecordSequence") or []:
        kind = str(record.get("DirectoryRecordType") or "UNKNOWN")
        counts[kind] = counts.get(kind, 0) + 1
        file_id = record.get("ReferencedFileID")
        if file_id:
            parts = [str(file_id)] if isinstance(file_id, str) else [str(p) for p in file_id]
            uid = record.get("ReferencedSOPInstanceUIDInFile")
            references.append(("/".join(parts), str(uid) if uid else None))
    return DicomDirectory(dict(sorted(counts.items())), references)


def _index(stream: BinaryIO, size: int, *, institution: str | None, source_object: str, asset: str) -> DicomIndexed:
    import pydicom
    from pydicom.errors import InvalidDicomError

    def reject(code: str, reason: str) -> DicomIndexed:
        return DicomIndexed(quarantine=QuarantineRecord(STAGE, asset, institution, source_object, None, "DICOM", code, reason))

    if size == 0:
        return reject("empty_file", "file is empty (0 bytes)")
    start = stream.tell()
    try:
        ds = pydicom.dcmread(stream, stop_before_pixels=True)
    except InvalidDicomError:
        return reject("not_dicom", "no DICOM Part-10 preamble/DICM prefix")
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types for damaged streams
        return reject("unreadable_dicom", f"DICOM parse failed: {type(exc).__name__}")
    header_end = stream.tell() - start
    meta = getattr(ds, "file_meta", None)
    transfer_syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    if transfer_syntax is not None and not transfer_syntax.is_transfer_syntax:
        return reject("unknown_transfer_syntax", "TransferSyntaxUID is not a transfer syntax pydicom knows")
    at_pixel_data = False
    if header_end < size:
        stream.seek(start + header_end)
        peek = stream.read(4)
        at_pixel_data = len(peek) == 4 and peek in (b"\xe0\x7f\x10\x00", b"\x7f\xe0\x00\x10")
    # Before any element is accessed: access converts raw elements and drops their offsets.
    cut_short = ends_inside_element(ds, header_end if at_pixel_data else size)
    cut_reason = f"file ends inside a data element ({size} bytes)"
    storage_class = meta.get("MediaStorageSOPClassUID") if meta is not None else None
    if storage_class == MEDIA_STORAGE_DIRECTORY or "DirectoryRecordSequence" in ds:
        if cut_short:
            return reject("truncated_file", cut_reason)
        broken = _check_sequences(ds)
        if broken:
            return reject("broken_sequence", f"the sequence {broken} does not parse")
        return DicomIndexed(directory=_directory(ds))
    if not ds.get("SOPInstanceUID"):
        if cut_short:
            return reject("truncated_file", cut_reason)
        return reject("missing_sop_instance_uid", "SOPInstanceUID is missing: the instance cannot be identified")
    if cut_short:
        return reject("truncated_file", cut_reason)
    broken = _check_sequences(ds)
    if broken:
        return reject("broken_sequence", f"the sequence {broken} does not parse")
    if not at_pixel_data:
        if header_end < size:
            return reject("truncated_file", "file ends inside the PixelData element header")
        return reject("missing_required_field", "no PixelData element")
    if transfer_syntax == DEFLATED_EXPLICIT_LE:
        extent = None  # deflated: offsets refer to the inflated stream
    else:
        little = transfer_syntax is None or transfer_syntax.is_little_endian
        implicit = transfer_syntax is not None and transfer_syntax.is_implicit_VR
        extent = pixel_data_extent(stream, start + header_end, start + size, little, implicit)
        if not extent.complete:
            return reject("truncated_file", extent.problem or cut_reason)
    if extent is not None and extent.declared_bytes is not None and (transfer_syntax is None or not transfer_syntax.is_compressed):
        try:
            expected = expected_pixel_bytes(ds)
        except (AttributeError, TypeError, ValueError):
            return reject("missing_required_field", "image geometry (Rows/Columns/BitsAllocated) missing")
        if extent.declared_bytes < expected:
            return reject("truncated_file", f"pixel data truncated: {extent.declared_bytes} of {expected} bytes")
    decodable, undecodable_reason = pixel_decodability(transfer_syntax)
    header_warnings = []
    for keyword in ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"):
        value = ds.get(keyword)
        if not value:
            header_warnings.append(f"{keyword}_missing")  # type 1, but the instance is still usable
        elif len(str(value)) > 64 or not _UID.fullmatch(str(value)):
            header_warnings.append(f"{keyword}_invalid")
    # keys(), not iteration: iterating a Dataset converts every element's value.
    private_count = sum(1 for tag in ds.keys() if tag.is_private)  # noqa: SIM118
    sop_instance_uid = str(ds.SOPInstanceUID)
    row = {
        "study_uid": _text(ds, "StudyInstanceUID"),
        "series_uid": _text(ds, "SeriesInstanceUID"),
        "sop_instance_uid": sop_instance_uid,
        "sop_class_uid": _text(ds, "SOPClassUID"),
        "modality": _text(ds, "Modality"),
        "rows": _int(ds, "Rows"),
        "columns": _int(ds, "Columns"),
        "bits_allocated": _int(ds, "BitsAllocated"),
        "samples_per_pixel": _int(ds, "SamplesPerPixel") or 1,
        "number_of_frames": _int(ds, "NumberOfFrames") or 1,
        "patient_id": _text(ds, "PatientID"),
        "patient_name": _text(ds, "PatientName"),
        "patient_birth_date": dicom_date(_text(ds, "PatientBirthDate")),
        "other_patient_ids": _other_ids(ds),
        "institution_name": _text(ds, "InstitutionName"),
        "accession_number": _text(ds, "AccessionNumber"),
        "study_date": dicom_date(_text(ds, "StudyDate")),
        "study_datetime": dicom_datetime(_text(ds, "StudyDate"), _text(ds, "StudyTime"),
                                         _text(ds, "TimezoneOffsetFromUTC")),
        "burned_in_annotation": _text(ds, "BurnedInAnnotation"),
        "private_tag_count": private_count,
        "series_number": _int(ds, "SeriesNumber"),
        "instance_number": _int(ds, "InstanceNumber"),
        "transfer_syntax_uid": str(transfer_syntax) if transfer_syntax else None,
        "pixel_data_offset": extent.value_offset if extent else None,
        "pixel_data_bytes": extent.declared_bytes if extent else None,
        "file_bytes": size,
        "pixel_decodable": decodable,
        "pixel_undecodable_reason": undecodable_reason,
        "header_warnings": ";".join(header_warnings) or None,
    }
    return DicomIndexed(instance=row, frames=frame_rows(ds, sop_instance_uid, row["number_of_frames"]))


def _first_item(ds: Any, keyword: str) -> Any:
    value = ds.get(keyword) if ds is not None else None
    if not value:
        return None
    try:
        return value[0]
    except (IndexError, TypeError):
        return None


def _multi(value: Any) -> str | None:
    if value is None or value == "":
        return None
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return "\\".join(str(v) for v in value)
    return str(value)


def _float(value: Any) -> float | None:
    try:
        return float(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def frame_rows(ds: Any, sop_instance_uid: str, number_of_frames: int) -> list[dict[str, Any]]:
    """One row per frame: geometry and dimension indices from the per-frame functional groups (enhanced
    objects), else the shared groups, else the instance's own attributes (single-frame, classic)."""
    shared = _first_item(ds, "SharedFunctionalGroupsSequence")
    per_frame = ds.get("PerFrameFunctionalGroupsSequence") or []

    def group(item: Any, keyword: str) -> Any:
        return _first_item(item, keyword) or _first_item(shared, keyword)

    rows = []
    for index in range(max(1, number_of_frames)):
        item = per_frame[index] if index < len(per_frame) else None
        position = group(item, "PlanePositionSequence")
        orientation = group(item, "PlaneOrientationSequence")
        measures = group(item, "PixelMeasuresSequence")
        content = _first_item(item, "FrameContentSequence")
        rows.append({
            "sop_instance_uid": sop_instance_uid,
            "frame_number": index + 1,
            "image_position_patient": _multi((position or ds).get("ImagePositionPatient")),
            "image_orientation_patient": _multi((orientation or ds).get("ImageOrientationPatient")),
            "pixel_spacing": _multi((measures or ds).get("PixelSpacing")),
            "slice_thickness": _float((measures or ds).get("SliceThickness")),
            "stack_id": _text(content, "StackID") if content is not None else None,
            "in_stack_position": _int(content, "InStackPositionNumber") if content is not None else None,
            "temporal_position_index": _int(content, "TemporalPositionIndex") if content is not None else None,
            "dimension_index_values": _multi(content.get("DimensionIndexValues")) if content is not None else None,
            "frame_acquisition_datetime": _text(content, "FrameAcquisitionDateTime") if content is not None else None,
        })
    return rows


def dicom_date(value: str | None) -> str | None:
    """DICOM DA (``YYYYMMDD``, or the old ``YYYY.MM.DD``) -> ISO 8601 ``YYYY-MM-DD``; None if not a date."""
    if not value:
        return None
    digits = value.strip().replace(".", "")
    if len(digits) != 8 or not digits.isdigit():
        return None
    try:
        return dt.date(int(digits[:4]), int(digits[4:6]), int(digits[6:])).isoformat()
    except ValueError:
        return None


def dicom_datetime(date: str | None, time: str | None, offset: str | None) -> str | None:
    """StudyDate + StudyTime (+ TimezoneOffsetFromUTC ``+HHMM``) -> ISO 8601, with the offset when known."""
    day = dicom_date(date)
    if day is None or not time:
        return None
    clock = time.strip().split(".", 1)[0]
    if len(clock) < 2 or not clock.isdigit() or len(clock) % 2:
        return None
    hour, minute, second = int(clock[:2]), int(clock[2:4] or 0), int(clock[4:6] or 0)
    if hour > 23 or minute > 59 or second > 60:
        return None
    text = f"{day}T{hour:02d}:{minute:02d}:{min(second, 59):02d}"
    if offset and len(offset.strip()) == 5 and offset.strip()[0] in "+-" and offset.strip()[1:].isdigit():
        zone = offset.strip()
        text += f"{zone[0]}{zone[1:3]}:{zone[3:5]}"
    return text


def _int(ds: Any, keyword: str) -> int | None:
    value = ds.get(keyword)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def read_pixels(content: bytes) -> Any:
    """Decode the pixel array of a raw object (only the de-identify stage does this)."""
    import pydicom

    return pydicom.dcmread(io.BytesIO(content)).pixel_array


PIXELS_UNDECODABLE = "pixels_undecodable"
PIXEL_DECODE_FAILED = "pixel_decode_failed"


def decoded_pixels(content: bytes, undecodable_reason: str | None = None) -> tuple[Any | None, str | None]:
    """(pixel array, None), or (None, reason code) when the pixels cannot be decoded here.

    ``undecodable_reason`` is what the index found (no decoder for the transfer
    syntax); a decoder that fails on the data is reported as
    ``pixel_decode_failed`` with the exception type, never a value.
    """
    import numpy as np

    if undecodable_reason:
        return None, PIXELS_UNDECODABLE
    try:
        return np.asarray(read_pixels(content)), None
    except Exception as exc:  # noqa: BLE001 - one image a decoder cannot read is withheld, not fatal
        return None, f"{PIXEL_DECODE_FAILED}:{type(exc).__name__}"
