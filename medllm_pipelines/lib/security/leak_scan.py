"""Find direct identifiers of the raw zone anywhere they must not be.

The needles are the identifiers of the synthetic/real patients (decrypted in
memory only); the haystacks are de-identified tables, files, metadata. A hit
reports *where* (table.column or file) and how many, never the value found.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import ahocorasick
import pandas as pd

IDENTIFIER_COLUMNS = ("mrn", "resident_id", "name_zh", "name_en", "phone", "email", "address")
MIN_NEEDLE_CHARS = {"name_zh": 2}
DEFAULT_MIN_CHARS = 6
_DIGITS = frozenset("0123456789")


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


def scan_frame(frame: pd.DataFrame, needles: dict[str, set[str]] | IdentifierMatcher, location: str) -> list[LeakHit]:
    """Exact-cell and substring hits of any needle in any text or numeric column.

    Numeric columns count: a digits-only identifier (phone, MRN) read from CSV
    arrives as int64, or float64 once a value is missing.
    """
    matcher = _matcher(needles)
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
        found = matcher.count("\x00".join(values.tolist()))
        hits.extend(LeakHit(f"{location}.{column}", kind, found[kind]) for kind in matcher.kinds if found[kind])
    return hits


def scan_text(text: str, needles: dict[str, set[str]] | IdentifierMatcher, location: str) -> list[LeakHit]:
    matcher = _matcher(needles)
    found = matcher.count(text)
    return [LeakHit(location, kind, found[kind]) for kind in matcher.kinds if found[kind]]


def scan_files(paths: Iterable[Path], needles: dict[str, set[str]] | IdentifierMatcher, root: Path) -> list[LeakHit]:
    """Byte-level scan of files (UTF-8 encodings of every needle)."""
    matcher = _matcher(needles)
    hits: list[LeakHit] = []
    for path in paths:
        try:
            data = path.read_bytes()
        except OSError:
            continue
        found = matcher.count(data)
        hits.extend(LeakHit(str(path.relative_to(root)), kind, found[kind], matcher.mask(data, kind))
                    for kind in matcher.kinds if found[kind])
    return hits


def _matcher(needles: dict[str, set[str]] | IdentifierMatcher) -> IdentifierMatcher:
    return needles if isinstance(needles, IdentifierMatcher) else IdentifierMatcher(needles)


class IdentifierMatcher:
    """All needles in one Aho-Corasick automaton, matched over the UTF-8 bytes of a haystack.

    Bytes are mapped 1:1 onto code points (latin-1) so that text, JSON and
    binary files are all searched for the UTF-8 encoding of each identifier,
    in one pass however many identifiers there are. An all-digit identifier
    (MRN, phone) does not count inside a longer number or a fractional part:
    otherwise every byte count and timestamp would eventually "contain" some
    MRN; 13812345678.0 (a phone read back from a float column) still counts.
    """

    def __init__(self, needles: dict[str, set[str]]) -> None:
        self._automaton = ahocorasick.Automaton()
        self.kinds = tuple(needles)  # the caller's order: hits are reported in it
        self.size = 0
        for kind, values in needles.items():
            for value in values:
                key = value.encode("utf-8").decode("latin-1")
                if not key:
                    continue
                existing = self._automaton.get(key, None)
                kinds = (existing[1] | {kind}) if existing else frozenset({kind})
                self._automaton.add_word(key, (len(key), kinds, key.isdigit()))
                self.size += existing is None
        self._empty = self.size == 0
        if not self._empty:
            self._automaton.make_automaton()

    def _hits(self, text: str) -> Iterator[tuple[int, int, frozenset[str]]]:
        """(start, end, kinds) of every counted occurrence, the digit-boundary rule applied."""
        if self._empty:
            return
        for last, (length, kinds, digits) in self._automaton.iter(text):
            start, end = last - length + 1, last + 1
            if digits and (_digit_before(text, start) or (end < len(text) and text[end] in _DIGITS)):
                continue
            yield start, end, kinds

    def count(self, data: bytes | str) -> Counter[str]:
        """Identifier kind -> occurrences in ``data``."""
        found: Counter[str] = Counter()
        for _, _, kinds in self._hits(_as_latin1(data)):
            found.update(kinds)
        return found

    def mask(self, data: bytes | str, kind: str | None = None, width: int = 40) -> str:
        """The window around the first hit (of ``kind``, if given), every identifier in it replaced by ``<kind>``."""
        text = _as_latin1(data)
        first = next((h for h in self._hits(text) if kind is None or kind in h[2]), None)
        if first is None:
            return ""
        lo, hi = max(0, first[0] - width), min(len(text), first[1] + width)
        window = text[lo:hi]
        spans = sorted(((e - n + 1, e + 1, min(k)) for e, (n, k, _) in self._automaton.iter(window)),
                       key=lambda s: (s[0], -s[1]))
        out, cursor = [], 0
        for start, stop, name in spans:
            if start < cursor:
                continue
            out.append(window[cursor:start])
            out.append(f"<{name}>")
            cursor = stop
        out.append(window[cursor:])
        return "".join(out).encode("latin-1").decode("utf-8", errors="replace")


def _as_latin1(data: bytes | str) -> str:
    return (data.encode("utf-8") if isinstance(data, str) else data).decode("latin-1")


def _digit_before(text: str, start: int) -> bool:
    if start == 0:
        return False
    if text[start - 1] in _DIGITS:
        return True
    return start >= 2 and text[start - 1] == "." and text[start - 2] in _DIGITS
