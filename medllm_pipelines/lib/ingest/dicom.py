"""DICOM Part-10 files -> a header index row per instance, and study/series summaries.

Dates in the index are ISO 8601 (``study_date`` ``YYYY-MM-DD``; ``study_datetime``
with the ``TimezoneOffsetFromUTC`` offset when the file has one).

Only headers are parsed (``stop_before_pixels=True``): pixel data stay in the
encrypted raw object and are decoded lazily by the stage that needs them
(:func:`read_pixels`). Completeness is still checked - from the PixelData
element's offset and declared length (or its fragment items) against the file
size - so a truncated file is quarantined, not half-ingested.
"""

from __future__ import annotations

import datetime as dt
import io
import os
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, BinaryIO

from medllm_pipelines.lib.common.records import QuarantineRecord

if TYPE_CHECKING:
    import pandas as pd

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


Source = bytes | bytearray | memoryview | str | os.PathLike[str] | BinaryIO


def _open(source: Source) -> tuple[BinaryIO, int, bool]:
    """(stream, size in bytes, whether we opened it and must close it)."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        return io.BytesIO(data), len(data), True
    if isinstance(source, (str, os.PathLike)):
        handle = open(source, "rb")  # noqa: SIM115 - closed by the caller
        return handle, os.fstat(handle.fileno()).st_size, True
    position = source.tell()
    size = source.seek(0, io.SEEK_END)
    source.seek(position)
    return source, size - position, False


def _element_header(stream: BinaryIO, little_endian: bool, implicit_vr: bool) -> tuple[int, int, int] | None:
    """(tag, value length, header length) of the element at the stream's position; None if cut."""
    endian = "<" if little_endian else ">"
    head = stream.read(8)
    if len(head) < 8:
        return None
    group, element = struct.unpack(endian + "HH", head[:4])
    tag = (group << 16) | element
    if implicit_vr or group == 0xFFFE:  # item and delimiter tags never carry a VR
        (length,) = struct.unpack(endian + "L", head[4:8])
        return tag, length, 8
    vr = head[4:6]
    if vr in _LONG_VRS:
        more = stream.read(4)
        if len(more) < 4:
            return None
        (length,) = struct.unpack(endian + "L", more)
        return tag, length, 12
    (length,) = struct.unpack(endian + "H", head[6:8])
    return tag, length, 8


_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
_ITEM, _SEQUENCE_DELIMITER = 0xFFFEE000, 0xFFFEE0DD


@dataclass(frozen=True)
class PixelDataExtent:
    """Where the pixel data sit in the file, read from element headers only (no pixel bytes read)."""

    offset: int  # of the PixelData tag
    value_offset: int
    declared_bytes: int | None  # None: encapsulated (undefined length)
    complete: bool
    problem: str | None


def pixel_data_extent(stream: BinaryIO, offset: int, size: int, little_endian: bool, implicit_vr: bool) -> PixelDataExtent:
    """Check by offsets that the PixelData element (and anything after it) ends inside the file.

    Native pixel data: the declared length must fit in the file. Encapsulated
    (compressed) pixel data: every fragment item's length must fit and the
    sequence delimiter must be present. Elements after the pixel data (e.g.
    trailing padding) must end exactly at the end of the file.
    """
    stream.seek(offset)
    header = _element_header(stream, little_endian, implicit_vr)
    if header is None:
        return PixelDataExtent(offset, offset, None, False, "file ends inside the PixelData element header")
    _, length, header_bytes = header
    value_offset = offset + header_bytes
    if length != _UNDEFINED_LENGTH:
        end = value_offset + length
        if end > size:
            return PixelDataExtent(offset, value_offset, length, False,
                                   f"pixel data truncated: {max(0, size - value_offset)} of {length} bytes")
        trailing = _trailing_elements_end(stream, end, size, little_endian, implicit_vr)
        problem = None if trailing == size else "file ends inside an element after the pixel data"
        return PixelDataExtent(offset, value_offset, length, problem is None, problem)
    position = value_offset
    while True:
        stream.seek(position)
        item = _element_header(stream, little_endian, True)
        if item is None:
            return PixelDataExtent(offset, value_offset, None, False, "file ends inside encapsulated pixel data")
        tag, item_length, item_header = item
        if tag == _SEQUENCE_DELIMITER:
            end = position + item_header
            trailing = _trailing_elements_end(stream, end, size, little_endian, implicit_vr)
            problem = None if trailing == size else "file ends inside an element after the pixel data"
            return PixelDataExtent(offset, value_offset, None, problem is None, problem)
        if tag != _ITEM or item_length == _UNDEFINED_LENGTH:
            return PixelDataExtent(offset, value_offset, None, False, "encapsulated pixel data are malformed")
        position += item_header + item_length
        if position > size:
            return PixelDataExtent(offset, value_offset, None, False, "file ends inside a pixel data fragment")


def _trailing_elements_end(stream: BinaryIO, position: int, size: int, little_endian: bool, implicit_vr: bool) -> int:
    """Where the elements after the pixel data end (``size`` when the file is whole)."""
    while position < size:
        stream.seek(position)
        header = _element_header(stream, little_endian, implicit_vr)
        if header is None or header[1] == _UNDEFINED_LENGTH:
            return -1
        position += header[2] + header[1]
    return position


def index_dicom_object(
    content: Source, *, institution: str | None, source_object: str, asset: str
) -> tuple[dict[str, Any] | None, QuarantineRecord | None]:
    """Index one file; returns (row, None) or (None, quarantine record).

    Only the header is parsed (``stop_before_pixels=True``); whether the pixel
    data are complete is decided from element offsets and the file size, so a
    file on disk (a path or an open file) is indexed without reading its pixels.
    """
    stream, size, owned = _open(content)
    try:
        return _index(stream, size, institution=institution, source_object=source_object, asset=asset)
    finally:
        if owned:
            stream.close()


def _index(
    stream: BinaryIO, size: int, *, institution: str | None, source_object: str, asset: str
) -> tuple[dict[str, Any] | None, QuarantineRecord | None]:
    import pydicom
    from pydicom.errors import InvalidDicomError

    def reject(code: str, reason: str) -> tuple[None, QuarantineRecord]:
        return None, QuarantineRecord(STAGE, asset, institution, source_object, None, "DICOM", code, reason)

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
    at_pixel_data = False
    if header_end < size:
        stream.seek(start + header_end)
        peek = stream.read(4)
        at_pixel_data = len(peek) == 4 and peek in (b"\xe0\x7f\x10\x00", b"\x7f\xe0\x00\x10")
    # Before any element is accessed: access converts raw elements and drops their offsets.
    cut_short = _ends_inside_element(ds, header_end if at_pixel_data else size)
    cut_reason = f"file ends inside a data element ({size} bytes)"
    for keyword in ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"):
        if not ds.get(keyword):
            if cut_short:
                return reject("truncated_file", cut_reason)
            return reject("missing_required_field", f"{keyword} is missing")
    if cut_short:
        return reject("truncated_file", cut_reason)
    if not at_pixel_data:
        if header_end < size:
            return reject("truncated_file", "file ends inside the PixelData element header")
        return reject("missing_required_field", "no PixelData element")
    meta = getattr(ds, "file_meta", None)
    transfer_syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    if transfer_syntax == "1.2.840.10008.1.2.1.99":
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
    # keys(), not iteration: iterating a Dataset converts every element's value.
    private_count = sum(1 for tag in ds.keys() if tag.is_private)  # noqa: SIM118
    row = {
        "study_uid": str(ds.StudyInstanceUID),
        "series_uid": str(ds.SeriesInstanceUID),
        "sop_instance_uid": str(ds.SOPInstanceUID),
        "sop_class_uid": _text(ds, "SOPClassUID"),
        "modality": _text(ds, "Modality"),
        "rows": _int(ds, "Rows"),
        "columns": _int(ds, "Columns"),
        "bits_allocated": _int(ds, "BitsAllocated"),
        "samples_per_pixel": int(ds.get("SamplesPerPixel") or 1),
        "number_of_frames": int(ds.get("NumberOfFrames") or 1),
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
    }
    return row, None


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


def summarise_dicom_index(instances: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Study and series summaries over instance rows (``index_dicom_object`` rows, plus ``institution``).

    Series: instances, frames, modality, geometry, instance-number range and
    whether numbers are missing in it (a partly delivered series), SOP classes.
    Studies: series and instance counts, modalities, date, and whether all its
    instances agree on the patient (``consistent_patient``; a study whose
    files name two patients is a mix-up to look at, not to train on).
    """
    import pandas as pd

    frame = instances.copy()
    if "institution" not in frame.columns:
        frame["institution"] = None
    frame["institution"] = frame["institution"].astype("object")
    keys = ["institution", "study_uid", "series_uid"]
    if frame.empty:
        return pd.DataFrame(columns=STUDY_SUMMARY_COLUMNS), pd.DataFrame(columns=SERIES_SUMMARY_COLUMNS)

    def joined(values: pd.Series) -> str | None:
        found = sorted({str(v) for v in values.dropna()})
        return "\\".join(found) or None

    series_rows = []
    for (institution, study, series), group in frame.groupby(keys, dropna=False, sort=True):
        numbers = pd.to_numeric(group.get("instance_number"), errors="coerce").dropna().astype(int)
        first, last = (int(numbers.min()), int(numbers.max())) if len(numbers) else (None, None)
        missing = (last - first + 1 - numbers.nunique()) if first is not None else None
        series_rows.append({
            "institution": institution, "study_uid": study, "series_uid": series,
            "modality": joined(group["modality"]), "sop_class_uids": joined(group["sop_class_uid"]),
            "instances": len(group), "frames": int(group["number_of_frames"].fillna(1).sum()),
            "rows": joined(group["rows"]), "columns": joined(group["columns"]),
            "first_instance_number": first, "last_instance_number": last,
            "missing_instance_numbers": missing,
            "burned_in_annotation": bool((group["burned_in_annotation"].fillna("").str.upper() == "YES").any()),
        })
    series = pd.DataFrame(series_rows, columns=SERIES_SUMMARY_COLUMNS)
    study_rows = []
    for (institution, study), group in frame.groupby(["institution", "study_uid"], dropna=False, sort=True):
        patients = group["patient_id"].dropna().unique()
        study_rows.append({
            "institution": institution, "study_uid": study, "patient_id": patients[0] if len(patients) else None,
            "consistent_patient": len(patients) <= 1, "study_date": joined(group["study_date"]),
            "modalities": joined(group["modality"]), "series": group["series_uid"].nunique(),
            "instances": len(group), "frames": int(group["number_of_frames"].fillna(1).sum()),
        })
    return pd.DataFrame(study_rows, columns=STUDY_SUMMARY_COLUMNS), series


SERIES_SUMMARY_COLUMNS = [
    "institution", "study_uid", "series_uid", "modality", "sop_class_uids", "instances", "frames", "rows", "columns",
    "first_instance_number", "last_instance_number", "missing_instance_numbers", "burned_in_annotation",
]
STUDY_SUMMARY_COLUMNS = [
    "institution", "study_uid", "patient_id", "consistent_patient", "study_date", "modalities", "series", "instances",
    "frames",
]


def read_pixels(content: bytes) -> Any:
    """Decode the pixel array of a raw object (only the de-identify stage does this)."""
    import pydicom

    return pydicom.dcmread(io.BytesIO(content)).pixel_array
