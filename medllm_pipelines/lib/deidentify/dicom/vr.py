"""Values by value representation (VR): dummies, limits, shifted dates, remapped UIDs, raw encoding.

What PS3.5 says a value of each VR may hold, and how this package writes
one: ASCII values (UIDs, dates, codes) go back as raw elements encoded here,
so pydicom neither decodes nor re-validates them (the header's hot path).
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Callable
from datetime import date, timedelta
from functools import lru_cache
from typing import Any

from pydicom import config
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag, Tag

UidKey = Callable[[str], str]
Encoding = tuple[bool, bool]  # (implicit VR, little endian) of the raw elements read

VR_MAX_LENGTH = {"SH": 16, "LO": 64, "ST": 1024, "LT": 10240, "UT": None, "UC": None, "PN": 64, "AE": 16}
DUMMY_VALUES = {"PN": "ANONYMOUS", "LO": "ANONYMOUS", "SH": "ANON", "ST": "ANONYMOUS", "LT": "ANONYMOUS",
                "UT": "ANONYMOUS", "UC": "ANONYMOUS", "DA": "19000101", "TM": "000000", "DT": "19000101000000",
                "CS": "ANON", "AS": "000Y", "DS": "0", "IS": "0"}


# unlisted attributes of these (dictionary) VRs hold codes, numbers, UIDs of classes or pixels: kept
KEEP_VRS = frozenset({"CS", "DS", "IS", "US", "SS", "UL", "SL", "UV", "SV", "FL", "FD", "AT", "AS", "OB", "OW",
                      "OF", "OD", "OL", "OV", "UI", "DA", "TM", "DT", "UR", "OB or OW"})
BINARY_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})
NUMBER_VRS = frozenset({"US", "SS", "UL", "SL", "UV", "SV", "FL", "FD", "AT"})


def remap_uid(uid: str, uid_key: UidKey) -> str:
    """``2.25.<128-bit int>`` from the keyed digest of ``uid`` (PS3.5 B.2 UUID-derived form)."""
    digest = hashlib.sha256(uid_key(uid.strip().rstrip("\x00")).encode("utf-8")).digest()
    return f"2.25.{int.from_bytes(digest[:16], 'big')}"


def shift_da(value: str, days: int) -> str | None:
    """A DA value (or DA range ``a-b``) moved by ``days``; None when not a full date."""
    parts = value.strip().split("-")
    out = []
    for part in parts:
        if not part:
            out.append("")
            continue
        if len(part) != 8 or not part.isdigit():
            return None
        try:
            moved = date(int(part[:4]), int(part[4:6]), int(part[6:8])) + timedelta(days=days)
        except ValueError:
            return None
        out.append(f"{moved:%Y%m%d}")
    return "-".join(out)


def shift_dt(value: str, days: int) -> str | None:
    """A DT value moved by ``days``: the date part shifts, time and offset stay."""
    value = value.strip()
    if len(value) < 8:
        return None
    moved = shift_da(value[:8], days)
    return None if moved is None else moved + value[8:]


def new_element(tag: BaseTag, vr: str, value: Any) -> DataElement:
    """A new element from values this module made (already valid for the VR): no re-validation."""
    return DataElement(tag, vr, value, validation_mode=config.IGNORE)


def encoding_of(ds: Dataset) -> Encoding | None:
    """How the dataset's raw elements are encoded (None when it was built in memory)."""
    for tag in ds.keys():  # noqa: SIM118 - iterating a Dataset yields elements
        raw = ds.get_item(tag)
        if getattr(raw, "is_raw", False):
            return bool(raw.is_implicit_VR), bool(raw.is_little_endian)
    return None


def set_ascii(ds: Dataset, tag: BaseTag, vr: str, values: list[str], encoding: Encoding | None) -> None:
    """Replace an element by ASCII values, encoded here as a raw element the writer copies as is."""
    text = "\\".join(values)
    if encoding is None or not text.isascii():
        ds[tag] = new_element(tag, vr, values if len(values) > 1 else (values[0] if values else ""))
        return
    data = text.encode("ascii")
    if len(data) % 2:
        data += b"\x00" if vr == "UI" else b" "
    ds[tag] = RawDataElement(Tag(tag), vr, len(data), data, 0, encoding[0], encoding[1])


def encode_element(tag: int, vr: str, value: str, encoding: Encoding) -> bytes:
    """One ASCII element in the dataset's own transfer syntax (tag, VR if explicit, length, value)."""
    implicit, little = encoding
    order = "<" if little else ">"
    data = value.encode("ascii")
    if len(data) % 2:
        data += b" "
    head = struct.pack(f"{order}HH", tag >> 16, tag & 0xFFFF)
    if implicit:
        return head + struct.pack(f"{order}I", len(data)) + data
    return head + vr.encode("ascii") + struct.pack(f"{order}H", len(data)) + data


@lru_cache(maxsize=64)
def code_sequence_value(codes: tuple[tuple[str, str], ...], encoding: Encoding) -> bytes:
    """DeidentificationMethodCodeSequence items, encoded once (defined lengths): writing a
    freshly built sequence costs pydicom more than the whole rest of the header."""
    order = "<" if encoding[1] else ">"
    out = b""
    for code, meaning in codes:
        item = (encode_element(0x00080100, "SH", code, encoding) + encode_element(0x00080102, "SH", "DCM", encoding)
                + encode_element(0x00080104, "LO", meaning, encoding))
        out += struct.pack(f"{order}HHI", 0xFFFE, 0xE000, len(item)) + item
    return out


def empty_value(vr: str) -> Any:
    """Z on a binary or numeric VR: an empty value of the type pydicom writes for it."""
    if vr in BINARY_VRS:
        return b""
    if vr in NUMBER_VRS:
        return None
    return ""


PLAIN_CHARSETS = {"": "utf-8", "ISO_IR 6": "utf-8", "ISO_IR 192": "utf-8", "ISO_IR 100": "latin-1"}


def plain_codec(ds: Dataset) -> str | None:
    """The Python codec of the dataset's character set when it is a single plain one."""
    charset = ds.get_item(0x00080005)
    value = getattr(charset, "value", b"") or b""
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    if isinstance(value, (list, MultiValue)):
        return None
    return PLAIN_CHARSETS.get(str(value).strip(" \x00"))


def code_item(code: str, meaning: str) -> Dataset:
    """A DCM code item built in memory, for datasets with no raw encoding to copy."""
    item = Dataset()
    item[0x00080100] = new_element(Tag(0x00080100), "SH", code)
    item[0x00080102] = new_element(Tag(0x00080102), "SH", "DCM")
    item[0x00080104] = new_element(Tag(0x00080104), "LO", meaning)
    return item
