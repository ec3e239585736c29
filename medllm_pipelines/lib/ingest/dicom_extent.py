"""Whether a DICOM file is whole, read from element offsets and the file size (no pixel bytes read).

pydicom reads a cut file without complaint (the last value comes back short),
so completeness is decided here: the PixelData element (native or
encapsulated) and anything after it must end exactly at the end of the file.
A file on disk is checked without reading its pixels.
"""

from __future__ import annotations

import io
import os
import struct
from dataclasses import dataclass
from typing import Any, BinaryIO

DEFLATED_EXPLICIT_LE = "1.2.840.10008.1.2.1.99"


def expected_pixel_bytes(ds: Any) -> int:
    frames = int(ds.get("NumberOfFrames") or 1)
    return int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel") or 1) * int(ds.BitsAllocated) // 8 * frames


_UNDEFINED_LENGTH = 0xFFFFFFFF
_PREAMBLE_AND_PREFIX = 132  # 128-byte preamble + b"DICM"
_GROUP_LENGTH_ELEMENT = 12  # (0002,0000) UL, explicit VR


def ends_inside_element(ds: Any, size: int) -> bool:
    """Whether the file stops part-way through a data element: a cut transfer.

    pydicom reads such a file without complaint (the last value just comes back
    short, or the dataset is empty), which would otherwise be reported as
    missing fields. A complete Part-10 file ends exactly where its last
    element's value ends.
    """
    meta = getattr(ds, "file_meta", None)
    if meta is not None and meta.get("TransferSyntaxUID") == DEFLATED_EXPLICIT_LE:
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


def open_source(source: Source) -> tuple[BinaryIO, int, bool]:
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
