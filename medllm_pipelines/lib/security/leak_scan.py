"""Find direct identifiers of the raw zone anywhere they must not be.

The needles are the identifiers of the synthetic/real patients (decrypted in
memory only); the haystacks are de-identified tables, files, metadata. A hit
reports *where* (table.column or file) and how many, never the value found.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

IDENTIFIER_COLUMNS = ("mrn", "resident_id", "name_zh", "name_en", "phone", "email", "address")
MIN_NEEDLE_CHARS = {"name_zh": 2}
DEFAULT_MIN_CHARS = 6


@dataclass(frozen=True)
class LeakHit:
    location: str
    identifier_kind: str
    count: int
    context: str = ""  # surrounding bytes, the identifier masked


def identifier_needles(patients: pd.DataFrame) -> dict[str, set[str]]:
    """Identifier kind -> values to look for, from an identifiable patients table."""
    needles: dict[str, set[str]] = {}
    for column in IDENTIFIER_COLUMNS:
        if column not in patients.columns:
            continue
        minimum = MIN_NEEDLE_CHARS.get(column, DEFAULT_MIN_CHARS)
        values = {str(v) for v in patients[column].dropna() if len(str(v)) >= minimum}
        if values:
            needles[column] = values
    return needles


def scan_frame(frame: pd.DataFrame, needles: dict[str, set[str]], location: str) -> list[LeakHit]:
    """Exact-cell and substring hits of any needle in any text or numeric column.

    Numeric columns count: a digits-only identifier (phone, MRN) read from CSV
    arrives as int64, or float64 once a value is missing.
    """
    hits: list[LeakHit] = []
    scanned_columns = [
        c
        for c in frame.columns
        if frame[c].dtype == object
        or str(frame[c].dtype).startswith("string")
        or (pd.api.types.is_numeric_dtype(frame[c]) and not pd.api.types.is_bool_dtype(frame[c]))
    ]
    for column in scanned_columns:
        values = frame[column].dropna().astype(str)
        if values.empty:
            continue
        joined = "\x00".join(values.tolist()).encode("utf-8")
        for kind, candidates in needles.items():
            count = sum(_count_bytes(joined, needle.encode("utf-8")) for needle in candidates)
            if count:
                hits.append(LeakHit(f"{location}.{column}", kind, count))
    return hits


def scan_text(text: str, needles: dict[str, set[str]], location: str) -> list[LeakHit]:
    hits = []
    data = text.encode("utf-8")
    for kind, candidates in needles.items():
        count = sum(_count_bytes(data, needle.encode("utf-8")) for needle in candidates)
        if count:
            hits.append(LeakHit(location, kind, count))
    return hits


def _count_bytes(data: bytes, needle: bytes) -> int:
    """Occurrences of ``needle``; an all-digit needle (an MRN, a phone) must not sit inside a longer
    number, or every byte count and timestamp would eventually "contain" some MRN."""
    if needle not in data:
        return 0
    if needle.isdigit():
        # not inside a longer integer, not in a fractional part; 13812345678.0 still counts
        pattern = rb"(?<![0-9])(?<![0-9]\.)" + re.escape(needle) + rb"(?![0-9])"
        return len(re.findall(pattern, data))
    return data.count(needle)


def _masked_context(data: bytes, needle: bytes, all_needles: dict[str, set[bytes]], width: int = 40) -> str:
    """Where the first hit sits, every known identifier in the window masked by its kind."""
    index = data.find(needle)
    window = data[max(0, index - width) : index + len(needle) + width]
    for kind, candidates in all_needles.items():
        for candidate in sorted(candidates, key=len, reverse=True):
            if candidate in window:
                window = window.replace(candidate, f"<{kind}>".encode())
    return window.decode("utf-8", errors="replace")


def scan_files(paths: Iterable[Path], needles: dict[str, set[str]], root: Path) -> list[LeakHit]:
    """Byte-level scan of files (UTF-8 encodings of every needle)."""
    encoded = {kind: {n.encode("utf-8") for n in values} for kind, values in needles.items()}
    hits: list[LeakHit] = []
    for path in paths:
        try:
            data = path.read_bytes()
        except OSError:
            continue
        for kind, candidates in encoded.items():
            counts = {needle: _count_bytes(data, needle) for needle in candidates}
            found = {needle: n for needle, n in counts.items() if n}
            if found:
                first = next(iter(found))
                hits.append(
                    LeakHit(str(path.relative_to(root)), kind, sum(found.values()), _masked_context(data, first, encoded))
                )
    return hits
