"""Entity types, detected spans, and the normalisation detection runs on.

Detection runs on a normalised copy of the text (full-width forms folded to
ASCII, NFKC elsewhere) so that ``１３８００１３８０００`` and ``138 0013 8000`` reach the
same recognisers; every span is mapped back to offsets in the *original*
text, which is what gets replaced.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

NAME = "NAME"
ID_NUMBER = "ID_NUMBER"  # PRC resident identity number (身份证号, GB 11643)
MRN = "MRN"  # medical record / outpatient number
PHONE = "PHONE"
EMAIL = "EMAIL"
ADDRESS = "ADDRESS"
DATE = "DATE"
LOCATION = "LOCATION"  # hospitals, wards, cities, states, countries named in prose
ORGANIZATION = "ORGANIZATION"  # employers, companies, insurers, schools that identify

ENTITY_TYPES: tuple[str, ...] = (NAME, ID_NUMBER, MRN, PHONE, EMAIL, ADDRESS, DATE, LOCATION, ORGANIZATION)
# Tie-break when two equally confident spans of different types overlap:
# the more specific (validated) type wins.
TYPE_PRIORITY: dict[str, float] = {ID_NUMBER: 7, EMAIL: 6, PHONE: 5, MRN: 4, DATE: 3, ADDRESS: 2.5, LOCATION: 2,
                                  ORGANIZATION: 1.5, NAME: 1}


class Span(NamedTuple):
    """A detected identifier: ``text[start:end]`` of the original text.

    A tuple (cheap to create by the thousand, ordered by position).
    """

    start: int
    end: int
    label: str
    score: float = 1.0
    source: str = "pattern"  # pattern | tagger | propagated | known

    @property
    def length(self) -> int:
        return self.end - self.start

    def overlaps(self, other: Span) -> bool:
        return self.start < other.end and other.start < self.end


# Full-width ASCII variants (U+FF01..U+FF5E) and the ideographic space fold to
# ASCII one character for one character, so offsets do not move.
_FOLD = {code: code - 0xFEE0 for code in range(0xFF01, 0xFF5F)}
_FOLD[0x3000] = 0x20
_FOLD[0x00A0] = 0x20


@dataclass(frozen=True)
class Normalised:
    """The detection view of a text and the way back to the original offsets."""

    text: str
    original: str
    starts: np.ndarray | None  # original offset of each normalised char; None = identity

    def to_original(self, start: int, end: int) -> tuple[int, int]:
        if self.starts is None:
            return start, end
        last = len(self.text)
        begin = int(self.starts[start]) if start < last else len(self.original)
        if end >= last:
            finish = len(self.original)
        else:
            finish = int(self.starts[end])
            if finish <= begin:  # inside an expansion: take the whole source char
                finish = begin + 1
        return begin, finish


def normalise(text: str) -> Normalised:
    """Fold full-width forms (1:1) and, where still needed, NFKC per character."""
    folded = text.translate(_FOLD)
    if folded.isascii() or unicodedata.is_normalized("NFKC", folded):
        return Normalised(folded, text, None)
    pieces: list[str] = []
    starts: list[int] = []
    for index, char in enumerate(folded):
        piece = unicodedata.normalize("NFKC", char) or char
        pieces.append(piece)
        starts.extend([index] * len(piece))
    out = "".join(pieces)
    if len(out) == len(text) and all(s == i for i, s in enumerate(starts)):
        return Normalised(out, text, None)
    return Normalised(out, text, np.asarray(starts, dtype=np.int64))
