"""The structured clinical note: its fields, how it is written as text, and how a written note is read back.

Shared by the synthetic hospital (gold notes of dialogue -> note pairs), the note generator (its training
targets are ``render_note`` of the gold fields) and the evaluation (``parse_note`` of what the model wrote,
compared field by field). One line per field, ``Header: item; item``; Chinese notes use the Chinese headers
and the full-width separators. ICD-10 codes are written in parentheses after each diagnosis.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

FIELDS = ("chief_complaint", "history", "findings", "assessment", "medications", "plan")
HEADERS = {
    "en": {"chief_complaint": "Chief complaint", "history": "History", "findings": "Findings",
           "assessment": "Assessment", "medications": "Medications", "plan": "Plan"},
    "zh": {"chief_complaint": "主诉", "history": "现病史", "findings": "查体及检查", "assessment": "诊断",
           "medications": "用药", "plan": "处理"},
}
SEPARATOR = {"en": "; ", "zh": "；"}
_ITEM_SPLIT = re.compile(r"\s*[;；]\s*")
_HEADER_TO_FIELD = {header.casefold(): name for headers in HEADERS.values() for name, header in headers.items()}
_LINE = re.compile(r"^\s*([^:：\n]{1,30}?)\s*[:：]\s*(.*)$")
ICD10_PATTERN = re.compile(r"\b([A-TV-Z][0-9]{2}(?:\.[0-9A-Z]{1,4})?)\b")


@dataclass(frozen=True)
class StructuredNote:
    """A note as fields of items (a field may be empty: nothing said about it)."""

    fields: Mapping[str, tuple[str, ...]]
    language: str = "en"
    icd10_codes: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        unknown = set(self.fields) - set(FIELDS)
        if unknown:
            raise ValueError(f"unknown note fields {sorted(unknown)}; a note has {', '.join(FIELDS)}")
        if self.language not in HEADERS:
            raise ValueError(f"note language must be one of {sorted(HEADERS)}, got {self.language!r}")
        if not self.icd10_codes:
            object.__setattr__(self, "icd10_codes", tuple(sorted(set(
                ICD10_PATTERN.findall(" ".join(self.fields.get("assessment", ())))))))

    def items(self, name: str) -> tuple[str, ...]:
        return tuple(self.fields.get(name, ()))


SPEAKER_LABELS = {"en": {"doctor": "Doctor", "patient": "Patient"}, "zh": {"doctor": "医生", "patient": "患者"}}


def transcript(turns: Sequence[Mapping[str, str]], language: str) -> str:
    """A conversation as the note generator reads it: one ``Speaker: text`` line per turn (an unknown speaker is
    written as given; a turn without one as its text)."""
    labels = SPEAKER_LABELS.get(language, SPEAKER_LABELS["en"])
    colon = "：" if language == "zh" else ": "
    lines = []
    for turn in turns:
        speaker, text = str(turn.get("speaker") or ""), str(turn.get("text") or "")
        lines.append(f"{labels.get(speaker, speaker)}{colon}{text}" if speaker else text)
    return "\n".join(lines)


def render_note(note: StructuredNote) -> str:
    """The note as text: one ``Header: items`` line per field, in FIELDS order, empty fields left out."""
    headers, separator = HEADERS[note.language], SEPARATOR[note.language]
    colon = "：" if note.language == "zh" else ": "
    return "\n".join(f"{headers[name]}{colon}{separator.join(note.items(name))}"
                     for name in FIELDS if note.items(name))


def parse_note(text: str, language: str | None = None) -> StructuredNote:
    """Read a written note back into fields; lines under an unknown header and free text are ignored.

    Tolerant of what a generator writes: either language's headers, either colon, either separator, repeated
    headers (items appended). ``language`` defaults to the one whose headers appear most.
    """
    found: dict[str, list[str]] = {}
    votes = {"en": 0, "zh": 0}
    for line in text.splitlines():
        match = _LINE.match(line)
        if not match:
            continue
        name = _HEADER_TO_FIELD.get(match.group(1).strip().casefold())
        if name is None:
            continue
        votes["zh" if re.search(r"[\u4e00-\u9fff]", match.group(1)) else "en"] += 1
        items = [item.strip(" 。.") for item in _ITEM_SPLIT.split(match.group(2)) if item.strip(" 。.")]
        found.setdefault(name, []).extend(items)
    chosen = language or max(votes, key=lambda k: (votes[k], k == "en"))
    return StructuredNote({name: tuple(items) for name, items in found.items()}, language=chosen)


def normalise_item(item: str) -> str:
    """Case, width and spacing folded, trailing punctuation dropped: how two items are compared."""
    import unicodedata

    folded = unicodedata.normalize("NFKC", item).casefold()
    return re.sub(r"\s+", " ", folded).strip(" .。,，")


def note_from_mapping(values: Mapping[str, Sequence[str] | str], language: str = "en") -> StructuredNote:
    """A StructuredNote from a JSON-like mapping (gold files store fields as lists or ``;``-joined strings)."""
    fields_ = {}
    for name, value in values.items():
        if name in FIELDS:
            items = _ITEM_SPLIT.split(value) if isinstance(value, str) else list(value)
            fields_[name] = tuple(i.strip() for i in items if i and i.strip())
    return StructuredNote(fields_, language=language)
