"""One HL7 v2 message: its segments and fields, its header checks and version, and dates.

:func:`split_message` turns a decoded message into a :class:`Message` (lists
of fields per segment, site-defined and undefined segments kept aside with a
warning); :func:`strict_finding` asks hl7apy whether the message conforms to
its declared version (an advisory finding, never a rejection); :class:`Fields`
reads components with HL7 escapes undone; :func:`hl7_datetime` turns HL7
dates into ISO 8601.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

from medllm_pipelines.lib.ingest.hl7_framing import Rejected

# (message type, trigger event) -> the message structure hl7apy validates against.
SUPPORTED_MESSAGES: dict[tuple[str, str], str] = {
    ("ADT", "A01"): "ADT_A01",
    ("ADT", "A04"): "ADT_A01",
    ("ADT", "A08"): "ADT_A01",
    ("ORU", "R01"): "ORU_R01",
    # MDM events that carry the document's content share the MDM_T02 structure.
    ("MDM", "T02"): "MDM_T02",
    ("MDM", "T04"): "MDM_T02",
    ("MDM", "T06"): "MDM_T02",
    ("MDM", "T08"): "MDM_T02",
    ("MDM", "T10"): "MDM_T02",
}
# Versions whose MSH-9 has a third (message structure) component.
_VERSIONS_WITH_STRUCTURE = ("2.3.1", "2.4", "2.5", "2.5.1", "2.6", "2.7", "2.7.1", "2.8", "2.8.1", "2.8.2")
DEFAULT_VERSION = "2.5"  # read a message whose MSH-12 names no v2.x version as this one

_SEGMENT_ID = re.compile(r"^[A-Z][A-Z0-9]{2}$")
_VERSION = re.compile(r"^2\.\d+(?:\.\d+)?$")
_LANGUAGE = re.compile(r"^[A-Za-z]{2,3}(?:[-_][A-Za-z0-9]{2,8})*$")
_DTM = re.compile(
    r"^(?P<y>\d{4})(?:(?P<mo>\d{2})(?:(?P<d>\d{2})(?:(?P<h>\d{2})(?:(?P<mi>\d{2})(?:(?P<s>\d{2})"
    r"(?:\.(?P<f>\d{1,4}))?)?)?)?)?)?(?P<tz>[+-]\d{4})?$"
)
_HL7APY_ERROR = re.compile(r"^(Missing required child|Child limit exceeded|Invalid child|Wrong child)\s+[A-Za-z0-9_.]+$")
_HL7APY_ELEMENT = re.compile(r"<(?:Field|Segment|Group|Component|SubComponent|Message) ([A-Z0-9_]+)")

# Fields this parser maps, per segment. hl7apy validates these, the fields the
# version makes required, and the message structure; a malformed *optional*
# field we never read (say, an odd OBR-32 as in the spec's own ORU example)
# is not worth a warning.
MAPPED_FIELDS: dict[str, frozenset[int]] = {
    "MSH": frozenset({1, 2, 7, 9, 10, 12, 18, 19}),
    "PID": frozenset({3, 5, 7, 8, 11, 13, 14}),
    "PV1": frozenset({2, 19, 44, 45}),
    "OBR": frozenset({2, 3, 4, 7}),
    "OBX": frozenset({1, 2, 3, 4, 5, 6, 11, 14}),
    "DG1": frozenset({1, 3, 5, 6}),
    "TXA": frozenset({4, 6, 12, 19}),
}


# --- dates ------------------------------------------------------------------------
def hl7_datetime(value: str | None, where: str) -> str | None:
    """An HL7 DT/DTM/TS value -> the ISO 8601 text the cleaning stage reads; None when empty.

    Raises :class:`Rejected` (``unparseable_date``) naming ``where`` (e.g. "PID-7").
    """
    if value is None:
        return None
    text = value.strip().split("^", 1)[0]  # TS: the DTM is the first component
    if not text:
        return None
    match = _DTM.match(text)
    if match is None:
        raise Rejected("unparseable_date", f"{where} is not an HL7 date/time")
    parts = match.groupdict()
    try:
        offset = ""
        if parts["tz"]:
            sign, hours, minutes = parts["tz"][0], int(parts["tz"][1:3]), int(parts["tz"][3:5])
            if hours > 14 or minutes > 59:
                raise ValueError("offset out of range")
            offset = f"{sign}{hours:02d}:{minutes:02d}"
        year = int(parts["y"])
        month = int(parts["mo"] or 1)
        day = int(parts["d"] or 1)
        dt.date(year, month, day)
        if parts["mo"] is None:
            return f"{year:04d}"
        if parts["d"] is None:
            return f"{year:04d}-{month:02d}"
        if parts["h"] is None:
            return f"{year:04d}-{month:02d}-{day:02d}"
        moment = dt.time(int(parts["h"]), int(parts["mi"] or 0), int(parts["s"] or 0))
        iso = f"{year:04d}-{month:02d}-{day:02d}T{moment.isoformat()}"
        if parts["f"]:
            iso += "." + parts["f"]
        return iso + offset
    except ValueError:
        raise Rejected("unparseable_date", f"{where} is not a valid calendar date/time") from None


def version_digits(value: str | None) -> str | None:
    """MSH-7 as a sortable number ``YYYYMMDDHHMMSS`` (missing parts are zeros)."""
    if not value:
        return None
    digits = value.split("^", 1)[0].split(".", 1)[0][:14]
    digits = re.split(r"[+-]", digits, maxsplit=1)[0]
    return digits.ljust(14, "0") if digits.isdigit() else None


# --- one message -------------------------------------------------------------------
@dataclass
class Message:
    """A message as lists of fields, after the checks hl7apy cannot express."""

    declared_version: str  # MSH-12 as sent (empty when not a 2.x version)
    version: str  # the version hl7apy reads it with
    message_type: str  # "ADT^A01"
    structure: str
    control_id: str
    sent_at: str | None
    language: str | None
    segments: list[tuple[str, list[str]]]  # (segment id, fields) with fields[n] = field n; kept-aside ones excluded
    numbers: list[int]  # the 1-based position in the message of each segment in ``segments``
    separators: tuple[str, str, str, str, str]  # field, component, repetition, escape, subcomponent


Warn = Callable[[str, str], None]


def _version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


@cache
def _hl7apy_version(declared: str) -> str:
    """``declared`` if hl7apy has its tables, else the nearest lower version it has (the lowest if none is lower)."""
    from hl7apy import SUPPORTED_LIBRARIES

    if declared in SUPPORTED_LIBRARIES:
        return declared
    known = sorted(SUPPORTED_LIBRARIES, key=_version_tuple)
    lower = [v for v in known if _version_tuple(v) <= _version_tuple(declared)]
    return lower[-1] if lower else known[0]


def split_message(text: str, warn: Warn) -> Message:
    lines = [line.lstrip(" \t") for line in re.split(r"\r\n|\n\r|\r|\n", text) if line.strip()]
    if not lines or not lines[0].startswith("MSH"):
        raise Rejected("missing_msh", "message does not start with an MSH segment")
    msh = lines[0]
    if len(msh) < 8:
        raise Rejected("invalid_header", "MSH is too short to hold its separators")
    field_sep = msh[3]
    encoding = msh[4:8]
    if field_sep.isalnum() or field_sep.isspace() or len(set(encoding + field_sep)) != 5 or any(
            c.isalnum() or c.isspace() for c in encoding):
        raise Rejected("invalid_header", "MSH-1/MSH-2 separators are not valid")
    component, repetition, escape, subcomponent = encoding
    msh_fields = msh.split(field_sep)
    fields = ["MSH", field_sep, *msh_fields[1:]]  # fields[n] = MSH-n
    type_parts = [part.strip() for part in (fields[9] if len(fields) > 9 else "").split(component)]
    if len(type_parts) < 2 or not type_parts[0] or not type_parts[1]:
        raise Rejected("invalid_header", "MSH-9 has no message type and trigger event")
    declared = (fields[12] if len(fields) > 12 else "").split(component, 1)[0].strip()
    if _VERSION.match(declared):
        version = _hl7apy_version(declared)
        if version != declared:
            warn("version_fallback", f"MSH-12 names v{declared}, which hl7apy has no tables for: read as v{version}")
    else:
        declared, version = "", DEFAULT_VERSION
        warn("version_assumed", f"MSH-12 names no HL7 v2.x version: read as v{version}")
    language = (fields[19] if len(fields) > 19 else "").split(component, 1)[0].strip()
    segments: list[tuple[str, list[str]]] = [("MSH", fields)]
    numbers = [1]
    for number, line in enumerate(lines[1:], start=2):
        segment_id = line[:3]
        if not _SEGMENT_ID.match(segment_id) or (len(line) > 3 and line[3] != field_sep):
            raise Rejected("bad_segment", f"segment {number} has no valid segment id (damaged message text)")
        if segment_id in ("MSH", "FHS", "BHS", "BTS", "FTS"):
            raise Rejected("bad_segment", f"segment {number} ({segment_id}) cannot occur inside a message")
        if segment_id.startswith("Z"):
            warn("z_segment", f"segment {number} ({segment_id}) is site-defined: kept aside")
            continue
        if not _known_segment(segment_id, version):
            warn("undefined_segment", f"segment {number} ({segment_id}) is not defined in v{version}: kept aside")
            continue
        segments.append((segment_id, line.split(field_sep)))
        numbers.append(number)
    return Message(
        declared_version=declared,
        version=version,
        message_type=f"{type_parts[0]}^{type_parts[1]}",
        structure=SUPPORTED_MESSAGES.get((type_parts[0], type_parts[1]), ""),
        control_id=fields[10] if len(fields) > 10 else "",
        sent_at=fields[7] if len(fields) > 7 else None,
        language=language if _LANGUAGE.match(language) else None,
        segments=segments,
        numbers=numbers,
        separators=(field_sep, component, repetition, escape, subcomponent),
    )


@cache
def _known_segment(segment_id: str, version: str) -> bool:
    from hl7apy import find_reference
    from hl7apy.core import Segment
    from hl7apy.exceptions import ChildNotFound

    try:
        find_reference(segment_id, (Segment,), version)
    except ChildNotFound:
        return False
    return True


def strict_finding(message: Message) -> str | None:
    """hl7apy's first strict-validation finding for the message (structure, segment order and
    cardinality, required and mapped fields of its version), or None when it conforms."""
    from hl7apy.consts import VALIDATION_LEVEL
    from hl7apy.exceptions import HL7apyException
    from hl7apy.parser import parse_message

    where = f"not a conforming {message.structure} (v{message.version})"
    field_sep, component = message.separators[0], message.separators[1]
    msh = list(message.segments[0][1])
    event = message.structure.split("_")[1] if message.structure.startswith("ADT") else msh[9].split(component)[1]
    if message.version in _VERSIONS_WITH_STRUCTURE:
        msh[9] = component.join([message.structure.split("_")[0], event, message.structure])
    else:  # older versions name the structure by type^event: validate A04/A08 as A01, their shared structure
        msh[9] = component.join(message.structure.split("_"))
    msh += [""] * (13 - len(msh))
    msh[12] = message.version  # hl7apy reads with the version's tables, which may be the fallback
    try:
        lines = ["MSH" + field_sep + field_sep.join(_kept_fields("MSH", msh, message.version)[2:])]
        lines.extend(
            field_sep.join([segment_id, *_kept_fields(segment_id, fields, message.version)[1:]])
            for segment_id, fields in message.segments[1:]
        )
        parsed = parse_message("\r".join(lines), validation_level=VALIDATION_LEVEL.TOLERANT, find_groups=True)
        if parsed.name is None:
            return f"hl7apy has no {message.structure} structure for v{message.version}"
        parsed.validate()
    except (HL7apyException, ValueError, AttributeError, KeyError, IndexError, TypeError) as exc:
        detail = str(exc).strip()
        if _HL7APY_ERROR.match(detail):
            return f"{where}: {detail}"
        element = _HL7APY_ELEMENT.search(detail)
        if element:
            return f"{where}: invalid {element.group(1)}"
        return f"{where}: {type(exc).__name__}"
    except Exception as exc:  # hl7apy only advises here; nothing it raises may cost the message
        return f"{where}: hl7apy failed ({type(exc).__name__})"
    return None


@cache
def _required_fields(segment_id: str, version: str) -> frozenset[int]:
    from hl7apy import find_reference
    from hl7apy.core import Segment

    reference = find_reference(segment_id, (Segment,), version)["ref"]
    required = set()
    for name, _, (minimum, _maximum), _kind in reference[1]:
        if minimum >= 1:
            required.add(int(name.rsplit("_", 1)[1]))
    return frozenset(required)


def _kept_fields(segment_id: str, fields: list[str], version: str) -> list[str]:
    """``fields`` with every field blanked that is neither mapped nor required by the version."""
    keep = MAPPED_FIELDS.get(segment_id, frozenset()) | _required_fields(segment_id, version)
    kept = [value if number in keep or number == 0 else "" for number, value in enumerate(fields)]
    if segment_id == "MSH":
        kept[1], kept[2] = fields[1], fields[2]
    while len(kept) > 1 and kept[-1] == "":
        kept.pop()
    return kept


# --- field access -----------------------------------------------------------------
_FORMATTING = re.compile(r"\\\.([a-z]{2})[^\\]*\\")


class Fields:
    """Field/component access on one segment, with HL7 escapes undone."""

    def __init__(self, fields: list[str], separators: tuple[str, str, str, str, str]) -> None:
        self.fields = fields
        _, self.component, self.repetition, self.escape, self.subcomponent = separators

    def raw(self, number: int) -> str:
        return self.fields[number].strip() if number < len(self.fields) else ""

    def repetitions(self, number: int) -> list[list[str]]:
        raw = self.raw(number)
        if not raw:
            return []
        return [rep.split(self.component) for rep in raw.split(self.repetition)]

    def component_of(self, number: int, index: int, repetition: int = 0) -> str:
        reps = self.repetitions(number)
        if repetition >= len(reps) or index - 1 >= len(reps[repetition]):
            return ""
        return self.unescape(reps[repetition][index - 1]).strip()

    def first_subcomponent(self, text: str) -> str:
        return text.split(self.subcomponent, 1)[0]

    def unescape(self, text: str) -> str:
        if self.escape not in text:
            return text
        e = self.escape
        if e == "\\":  # formatting commands of FT/TX text: line breaks, the rest dropped
            text = _FORMATTING.sub(lambda m: "\n" if m.group(1) in ("br", "sp") else "", text)
        for code, char in (("F", "|"), ("S", self.component), ("T", self.subcomponent), ("R", self.repetition)):
            text = text.replace(f"{e}{code}{e}", char)
        text = text.replace(f"{e}H{e}", "").replace(f"{e}N{e}", "")
        return text.replace(f"{e}E{e}", e)


def nth_component(parts: list[str], index: int) -> str:
    """Component ``index`` (1-based) of a split field, stripped; "" when absent."""
    return parts[index - 1].strip() if index - 1 < len(parts) else ""
