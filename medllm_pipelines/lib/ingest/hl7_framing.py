"""Framing HL7 v2 files: the message units of a landed file, and their text.

A landed HL7 file holds many messages, framed one of three ways, all accepted:
MLLP (``<VT> message <FS><CR>``), HL7 batch and file envelopes
(``FHS``/``BHS`` ... ``BTS``/``FTS``, also inside an MLLP frame), or bare
messages one after another. Segments end in ``\\r``, ``\\n``, ``\\r\\n`` (or
``\\n\\r``); a blank line also ends a message; a UTF-8 byte-order mark is
dropped. This module splits bytes into units and decodes each unit's text by
its MSH-18 character set; reading the message is ``hl7_message.py``'s work.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

CHARSETS = {
    "": "utf-8", "UNICODE UTF-8": "utf-8", "UNICODE": "utf-8", "UTF-8": "utf-8", "ISO IR192": "utf-8",
    "ASCII": "ascii", "ISO IR6": "ascii", "8859/1": "latin-1", "ISO IR100": "latin-1", "8859/15": "iso8859-15",
    "GB 18030-2000": "gb18030", "GB18030": "gb18030",
}

BOM = b"\xef\xbb\xbf"
MLLP_START, MLLP_END = b"\x0b", b"\x1c"
_BATCH_SEGMENTS = (b"FHS", b"BHS", b"BTS", b"FTS")


class Rejected(Exception):
    """A message that cannot be ingested; ``reason`` names fields, never values."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


@dataclass(frozen=True)
class RawMessage:
    """One framed unit of a file: its bytes, its position (0-based), and a framing fault if any."""

    position: int
    data: bytes
    problem: tuple[str, str] | None = None  # (code, reason) found while framing
    byte_order_mark: bool = False


def _segments_of(data: bytes) -> list[bytes]:
    return re.split(rb"\r\n|\n\r|\r|\n", data)


def split_hl7_messages(content: bytes) -> Iterator[RawMessage]:
    """The messages of a landed file, in order, with their positions."""
    if MLLP_START in content:
        yield from _split_mllp(content)
    else:
        yield from _split_unframed(content, 0)


def _split_mllp(content: bytes) -> Iterator[RawMessage]:
    position = 0
    pieces = content.split(MLLP_END)
    for index, piece in enumerate(pieces):
        stripped = piece.strip(b"\r\n\t ")
        if stripped.startswith(BOM):
            stripped = stripped[len(BOM):].lstrip(b"\r\n\t ")
        if not stripped:
            continue
        if not stripped.startswith(MLLP_START):
            yield RawMessage(position, stripped, ("malformed_frame", "bytes outside an MLLP frame (no start block)"))
            position += 1
            continue
        frames = stripped[1:].split(MLLP_START)
        for number, body in enumerate(frames):
            unterminated = number < len(frames) - 1 or index == len(pieces) - 1
            # a frame may hold a batch or several messages: each is its own unit
            units = list(_split_unframed(body, position)) or [RawMessage(position, body)]
            if unterminated:  # the cut is in the frame's last message
                last = units[-1]
                cut = ("malformed_frame", "MLLP frame has no end block (cut short)")
                units[-1] = RawMessage(last.position, last.data, cut, last.byte_order_mark)
            yield from units
            position += len(units)


def _split_unframed(content: bytes, first_position: int) -> Iterator[RawMessage]:
    position = first_position
    current: list[bytes] = []
    current_bom = False

    def flush() -> Iterator[RawMessage]:
        nonlocal position, current, current_bom
        if current:
            yield RawMessage(position, b"\r".join(current), byte_order_mark=current_bom)
            position += 1
            current = []
            current_bom = False

    for segment in _segments_of(content):
        bom = segment.startswith(BOM)
        if bom:
            segment = segment[len(BOM):]
        segment = segment.lstrip(b" \t\x0b")
        if not segment.strip():
            yield from flush()  # a blank line ends a message
            continue
        head = segment[:3]
        if head in _BATCH_SEGMENTS:
            yield from flush()
            continue
        if head == b"MSH":
            yield from flush()
        current.append(segment)
        current_bom = current_bom or bom
    yield from flush()


def decode_message(data: bytes, byte_order_mark: bool) -> str:
    """A unit's text, in the character set MSH-18 names (UTF-8 after a byte-order mark).

    Raises :class:`Rejected` (``unsupported_charset``, ``encoding_error``).
    """
    if data.startswith(BOM):
        data, byte_order_mark = data[len(BOM):], True
    if byte_order_mark:  # the sender said UTF-8 in the one way that cannot be misread
        encoding = "utf-8"
    else:
        header = data.split(b"\r", 1)[0].split(b"\n", 1)[0]
        charset = ""
        if header.startswith(b"MSH") and len(header) > 3:
            text = header.decode("latin-1")
            fields = text.split(text[3])
            charset = fields[17].split("~", 1)[0].strip().upper() if len(fields) > 17 else ""
        found = CHARSETS.get(charset)
        if found is None:
            raise Rejected("unsupported_charset", "MSH-18 names a character set this parser does not read")
        encoding = found
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as exc:
        raise Rejected("encoding_error", f"message is not valid {encoding} (byte offset {exc.start} in the message)") from None


def is_blank_file(content: bytes) -> bool:
    """Nothing but framing bytes, whitespace and byte-order marks: the file holds no message."""
    return not content.replace(BOM, b"").strip(b"\r\n\t \x0b\x1c")
