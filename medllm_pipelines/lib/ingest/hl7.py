"""HL7 v2.x ADT (A01/A04/A08) and ORU^R01 messages -> the same rows as the FHIR parser.

A landed HL7 file holds many messages, framed one of three ways, all accepted:
MLLP (``<VT> message <FS><CR>``, as an interface engine captures them), an HL7
batch file (``FHS``/``BHS`` ... ``BTS``/``FTS`` around the messages), or bare
messages one after another. Segments end in ``\\r`` (``\\n`` and ``\\r\\n`` are
tolerated). Each message is parsed and validated with hl7apy (the maintained
HL7 v2 library: message structure, segment order and cardinality, required
fields of the declared version) and mapped to the rows of
``medllm_pipelines.lib.ingest.fhir`` - tables ``patients`` (PID), ``encounters``
(PV1), ``observations`` (OBX) and ``conditions`` (DG1) - with the same column
names and lineage columns. ``source_position`` is the message's index in the
file (0-based, every framed or MSH-started unit counts).

A message is atomic: if any part fails (no MSH, a bad segment, a date that is
not an HL7 date, a number that is not a number, a structure hl7apy rejects),
the whole message goes to quarantine with a specific reason code and its
position; the reason names segments and fields, never values (identifiers live
in PID). Well-formed messages of other types (ADT^A03, ACK ...) are counted as
out of scope.

Mapping decisions:

* dates: HL7 ``YYYY[MM[DD[HH[MM[SS[.S+]]]]]][+/-ZZZZ]`` -> ISO 8601 (``2024``,
  ``2024-03``, ``2024-03-05``, ``2024-03-05T09:30:00+08:00``); a time without an
  offset stays naive and is read in the institution's zone by cleaning;
  ``birth_date`` keeps the date part only, as FHIR ``birthDate`` does;
* OBX-3 coded ``LN`` -> LOINC (``http://loinc.org``); ``L`` or ``99zzz`` (site-
  local) -> the institution's local lab code system; OBX-6 with coding system
  ``UCUM`` -> ``unit_system`` UCUM; value types NM and SN (plain ``^182``) give
  ``value``, others give none;
* DG1-3 ``I10`` -> ICD-10 (WHO), ``I10C`` -> ICD-10-CM;
* PID-3: the repetition with identifier type ``MR`` is the MRN; the one
  assigned by the PRC resident-ID authority (OID 2.16.156.10011.1.5, type
  ``NNCHN``) is the 身份证号;
* keys: ``resource_key`` is a SHA-256 digest of (institution, assigning
  authority, MRN) for patients, of the visit number for encounters, of (order
  number, OBX-3, OBX-4) for observations - stable across re-sent and updated
  (A08) messages, and never an identifier itself;
* ``version_id`` is MSH-7 as ``YYYYMMDDHHMMSS``, so cleaning's "latest version
  wins" keeps the newest message's data; ``content_hash`` hashes the mapped row,
  so a message re-sent with identical data is a duplicate.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from typing import Any

import orjson

from medllm_pipelines.lib.common import codes
from medllm_pipelines.lib.common.records import QuarantineRecord, sha256_bytes
from medllm_pipelines.lib.ingest.fhir import LINEAGE_COLUMNS, ParsedFhir

STAGE = "ingest"
HL7_TABLES = ("patients", "encounters", "observations", "conditions")

# (message type, trigger event) -> the message structure hl7apy validates against.
SUPPORTED_MESSAGES: dict[tuple[str, str], str] = {
    ("ADT", "A01"): "ADT_A01",
    ("ADT", "A04"): "ADT_A01",
    ("ADT", "A08"): "ADT_A01",
    ("ORU", "R01"): "ORU_R01",
}
# Versions whose MSH-9 has a third (message structure) component.
_VERSIONS_WITH_STRUCTURE = ("2.3.1", "2.4", "2.5", "2.5.1", "2.6", "2.7", "2.7.1", "2.8", "2.8.1", "2.8.2")

# HL7 table 0396 coding systems -> our code system URIs.
LOINC_SYSTEMS = {"LN", "LOINC"}
UCUM_SYSTEMS = {"UCUM", codes.UCUM}
DIAGNOSIS_SYSTEMS = {"I10": codes.ICD10_WHO, "I10C": codes.ICD10_CM, "ICD10": codes.ICD10_WHO}
PRC_RESIDENT_ID_OID = codes.PRC_RESIDENT_ID.removeprefix("urn:oid:")

SEX = {"M": "male", "F": "female", "O": "other", "A": "other", "U": "unknown", "N": "unknown"}
OBSERVATION_STATUS = {
    "F": "final", "C": "corrected", "P": "preliminary", "R": "preliminary", "S": "preliminary",
    "I": "registered", "X": "cancelled", "D": "entered-in-error", "W": "entered-in-error", "A": "amended",
}
ENCOUNTER_CLASS = {"I": "IMP", "O": "AMB", "E": "EMER", "P": "PRENC", "R": "AMB", "B": "AMB"}
CHARSETS = {
    "": "utf-8", "UNICODE UTF-8": "utf-8", "UNICODE": "utf-8", "ASCII": "ascii", "8859/1": "latin-1",
    "GB 18030-2000": "gb18030", "GB18030": "gb18030",
}

_MLLP_START, _MLLP_END = b"\x0b", b"\x1c"
_BATCH_SEGMENTS = (b"FHS", b"BHS", b"BTS", b"FTS")
_SEGMENT_ID = re.compile(r"^[A-Z][A-Z0-9]{2}$")
_DTM = re.compile(
    r"^(?P<y>\d{4})(?:(?P<mo>\d{2})(?:(?P<d>\d{2})(?:(?P<h>\d{2})(?:(?P<mi>\d{2})(?:(?P<s>\d{2})"
    r"(?:\.(?P<f>\d{1,4}))?)?)?)?)?)?(?P<tz>[+-]\d{4})?$"
)
_NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)$")
_HL7APY_ERROR = re.compile(r"^(Missing required child|Child limit exceeded|Invalid child|Wrong child)\s+[A-Za-z0-9_.]+$")
_HL7APY_ELEMENT = re.compile(r"<(?:Field|Segment|Group|Component|SubComponent|Message) ([A-Z0-9_]+)")

# Fields this parser maps, per segment. hl7apy validates these, the fields the
# version makes required, and the message structure; a malformed *optional*
# field we never read (say, an odd OBR-32 as in the spec's own ORU example)
# does not cost the message.
MAPPED_FIELDS: dict[str, frozenset[int]] = {
    "MSH": frozenset({1, 2, 7, 9, 10, 12, 18}),
    "PID": frozenset({3, 5, 7, 8, 11, 13, 14}),
    "PV1": frozenset({2, 19, 44, 45}),
    "OBR": frozenset({2, 3, 4, 7}),
    "OBX": frozenset({1, 2, 3, 4, 5, 6, 11, 14}),
    "DG1": frozenset({1, 3, 5, 6}),
}


class Rejected(Exception):
    """A message that cannot be ingested; ``reason`` names fields, never values."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


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


def _version_digits(value: str | None) -> str | None:
    """MSH-7 as a sortable number ``YYYYMMDDHHMMSS`` (missing parts are zeros)."""
    if not value:
        return None
    digits = value.split("^", 1)[0].split(".", 1)[0][:14]
    digits = re.split(r"[+-]", digits, maxsplit=1)[0]
    return digits.ljust(14, "0") if digits.isdigit() else None


# --- framing ----------------------------------------------------------------------
@dataclass(frozen=True)
class RawMessage:
    position: int
    data: bytes
    problem: tuple[str, str] | None = None  # (code, reason) found while framing


def _segments_of(data: bytes) -> list[bytes]:
    return [segment for segment in re.split(rb"\r\n|\r|\n", data)]


def split_hl7_messages(content: bytes) -> Iterator[RawMessage]:
    """The messages of a landed file, in order, with their positions."""
    if _MLLP_START in content:
        yield from _split_mllp(content)
    else:
        yield from _split_unframed(content)


def _split_mllp(content: bytes) -> Iterator[RawMessage]:
    position = 0
    pieces = content.split(_MLLP_END)
    for index, piece in enumerate(pieces):
        stripped = piece.strip(b"\r\n\t ")
        if not stripped:
            continue
        if not stripped.startswith(_MLLP_START):
            yield RawMessage(position, stripped, ("malformed_frame", "bytes outside an MLLP frame (no start block)"))
            position += 1
            continue
        frames = stripped[1:].split(_MLLP_START)
        for number, body in enumerate(frames):
            unterminated = number < len(frames) - 1 or index == len(pieces) - 1
            problem = ("malformed_frame", "MLLP frame has no end block (cut short)") if unterminated else None
            yield RawMessage(position, body, problem)
            position += 1


def _split_unframed(content: bytes) -> Iterator[RawMessage]:
    position = 0
    current: list[bytes] = []

    def flush() -> Iterator[RawMessage]:
        nonlocal position, current
        if current:
            yield RawMessage(position, b"\r".join(current))
            position += 1
            current = []

    for segment in _segments_of(content):
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
    yield from flush()


# --- one message -------------------------------------------------------------------
@dataclass
class _Message:
    """A message as lists of fields, after the checks hl7apy cannot express."""

    version: str
    message_type: str  # "ADT^A01"
    structure: str
    control_id: str
    sent_at: str | None
    segments: list[tuple[str, list[str]]]  # (segment id, fields) with fields[n] = field n
    separators: tuple[str, str, str, str, str]  # field, component, repetition, escape, subcomponent


def _decode(data: bytes) -> str:
    header = data.split(b"\r", 1)[0].split(b"\n", 1)[0]
    charset = ""
    if header.startswith(b"MSH") and len(header) > 3:
        fields = header.decode("latin-1").split(header.decode("latin-1")[3])
        charset = fields[17].strip().upper() if len(fields) > 17 else ""
    encoding = CHARSETS.get(charset)
    if encoding is None:
        raise Rejected("unsupported_charset", "MSH-18 names a character set this parser does not read")
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as exc:
        raise Rejected("encoding_error", f"message is not valid {encoding} (byte offset {exc.start} in the message)") from None


def _split_message(text: str) -> _Message:
    lines = [line for line in re.split(r"\r\n|\r|\n", text) if line.strip()]
    if not lines or not lines[0].startswith("MSH"):
        raise Rejected("missing_msh", "message does not start with an MSH segment")
    msh = lines[0]
    if len(msh) < 8:
        raise Rejected("invalid_header", "MSH is too short to hold its separators")
    field_sep = msh[3]
    encoding = msh[4:8]
    if field_sep.isalnum() or len(set(encoding + field_sep)) != 5 or any(c.isalnum() for c in encoding):
        raise Rejected("invalid_header", "MSH-1/MSH-2 separators are not valid")
    component, repetition, escape, subcomponent = encoding
    msh_fields = msh.split(field_sep)
    fields = ["MSH", field_sep, *msh_fields[1:]]  # fields[n] = MSH-n
    if len(fields) <= 12 or not fields[9] or not fields[12]:
        raise Rejected("invalid_header", "MSH-9 (message type) or MSH-12 (version) is missing")
    type_parts = fields[9].split(component)
    if len(type_parts) < 2 or not type_parts[0] or not type_parts[1]:
        raise Rejected("invalid_header", "MSH-9 has no message type and trigger event")
    version = fields[12].split(component, 1)[0].strip()
    if not re.fullmatch(r"2\.\d(\.\d)?", version):
        raise Rejected("invalid_header", "MSH-12 is not an HL7 v2.x version")
    segments: list[tuple[str, list[str]]] = [("MSH", fields)]
    for number, line in enumerate(lines[1:], start=2):
        segment_id = line[:3]
        if not _SEGMENT_ID.match(segment_id) or (len(line) > 3 and line[3] != field_sep):
            raise Rejected("bad_segment", f"segment {number} has no valid segment id")
        if segment_id.startswith("Z"):
            continue  # site-defined segments: not mapped, not validated
        if segment_id in ("MSH", "FHS", "BHS", "BTS", "FTS"):
            raise Rejected("bad_segment", f"segment {number} ({segment_id}) cannot occur inside a message")
        segments.append((segment_id, line.split(field_sep)))
    return _Message(
        version=version,
        message_type=f"{type_parts[0]}^{type_parts[1]}",
        structure=SUPPORTED_MESSAGES.get((type_parts[0], type_parts[1]), ""),
        control_id=fields[10] if len(fields) > 10 else "",
        sent_at=fields[7] if len(fields) > 7 else None,
        segments=segments,
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


def _validate_with_hl7apy(message: _Message) -> None:
    """Structure, segment order/cardinality and required fields, as hl7apy knows the version."""
    from hl7apy import SUPPORTED_LIBRARIES
    from hl7apy.consts import VALIDATION_LEVEL
    from hl7apy.exceptions import HL7apyException
    from hl7apy.parser import parse_message

    if message.version not in SUPPORTED_LIBRARIES:
        raise Rejected("unsupported_version", "MSH-12 names an HL7 version hl7apy does not support")
    for number, (segment_id, _) in enumerate(message.segments, start=1):
        if not _known_segment(segment_id, message.version):
            raise Rejected("bad_segment", f"segment {number} is not an HL7 v{message.version} segment")
    field_sep, component = message.separators[0], message.separators[1]
    msh = list(message.segments[0][1])
    event = message.structure.split("_")[1] if message.structure.startswith("ADT") else msh[9].split(component)[1]
    if message.version in _VERSIONS_WITH_STRUCTURE:
        msh[9] = component.join([message.structure.split("_")[0], event, message.structure])
    else:  # older versions name the structure by type^event: validate A04/A08 as A01, their shared structure
        msh[9] = component.join(message.structure.split("_"))
    lines = ["MSH" + field_sep + field_sep.join(_kept_fields("MSH", msh, message.version)[2:])]
    lines.extend(
        field_sep.join([segment_id, *_kept_fields(segment_id, fields, message.version)[1:]])
        for segment_id, fields in message.segments[1:]
    )
    try:
        parsed = parse_message("\r".join(lines), validation_level=VALIDATION_LEVEL.TOLERANT, find_groups=True)
        if parsed.name is None:
            raise Rejected("invalid_structure", f"hl7apy has no {message.structure} structure for v{message.version}")
        parsed.validate()
    except Rejected:
        raise
    except (HL7apyException, ValueError, AttributeError, KeyError, IndexError, TypeError) as exc:
        detail = str(exc).strip()
        if _HL7APY_ERROR.match(detail):
            raise Rejected("invalid_structure", f"not a conforming {message.structure} (v{message.version}): {detail}") from None
        element = _HL7APY_ELEMENT.search(detail)
        if element:
            raise Rejected(
                "invalid_field", f"not a conforming {message.structure} (v{message.version}): invalid {element.group(1)}"
            ) from None
        raise Rejected(
            "invalid_structure", f"not a conforming {message.structure} (v{message.version}): {type(exc).__name__}"
        ) from None


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
class _Fields:
    """Field/component access on one segment, with HL7 escapes undone."""

    def __init__(self, fields: list[str], separators: tuple[str, str, str, str, str]) -> None:
        self.fields = fields
        _, self.component, self.repetition, self.escape, self.subcomponent = separators

    def raw(self, number: int) -> str:
        return self.fields[number] if number < len(self.fields) else ""

    def repetitions(self, number: int) -> list[list[str]]:
        raw = self.raw(number)
        if not raw:
            return []
        return [rep.split(self.component) for rep in raw.split(self.repetition)]

    def component_of(self, number: int, index: int, repetition: int = 0) -> str:
        reps = self.repetitions(number)
        if repetition >= len(reps) or index - 1 >= len(reps[repetition]):
            return ""
        return self.unescape(reps[repetition][index - 1])

    def unescape(self, text: str) -> str:
        if self.escape not in text:
            return text
        e = self.escape
        for code, char in (("F", "|"), ("S", self.component), ("T", self.subcomponent), ("R", self.repetition)):
            text = text.replace(f"{e}{code}{e}", char)
        text = text.replace(f"{e}H{e}", "").replace(f"{e}N{e}", "")
        return text.replace(f"{e}E{e}", e)


def _component(parts: list[str], index: int) -> str:
    return parts[index - 1] if index - 1 < len(parts) else ""


def _key(*parts: str | None) -> str:
    return "hl7-" + hashlib.sha256("|".join(p or "" for p in parts).encode("utf-8")).hexdigest()[:32]


def _has_cjk(text: str) -> bool:
    return any("\u4e00" <= ch <= "\u9fff" for ch in text)


# --- mapping ------------------------------------------------------------------------
class _Mapper:
    def __init__(self, message: _Message, institution: str | None) -> None:
        self.message = message
        self.institution = institution
        self.patient_key: str | None = None
        self.encounter_key: str | None = None

    def fields(self, segment: list[str]) -> _Fields:
        return _Fields(segment, self.message.separators)

    def map(self) -> dict[str, list[dict[str, Any]]]:
        rows: dict[str, list[dict[str, Any]]] = {table: [] for table in HL7_TABLES}
        pids = [f for sid, f in self.message.segments if sid == "PID"]
        if not pids:
            raise Rejected("missing_required_field", "message has no PID segment")
        rows["patients"].append(self._patient(self.fields(pids[0])))
        order_id: str | None = None
        order_time: str | None = None
        in_oru = self.message.message_type.startswith("ORU")
        for number, (segment_id, raw) in enumerate(self.message.segments, start=1):
            seg = self.fields(raw)
            if segment_id == "PV1":
                rows["encounters"].append(self._encounter(seg))
            elif segment_id == "OBR":
                order_id = seg.component_of(3, 1) or seg.component_of(2, 1) or self.message.control_id
                order_time = hl7_datetime(seg.raw(7), f"OBR-7 (segment {number})")
            elif segment_id == "OBX":
                rows["observations"].append(self._observation(seg, number, order_id, order_time, in_oru))
            elif segment_id == "DG1":
                rows["conditions"].append(self._condition(seg, number))
        return rows

    def _patient(self, pid: _Fields) -> dict[str, Any]:
        mrn = mrn_authority = resident_id = None
        fallback: tuple[str, str] | None = None
        for rep in pid.repetitions(3):
            value = pid.unescape(_component(rep, 1))
            authority = _component(rep, 4)
            id_type = _component(rep, 5)
            universal = authority.split(pid.subcomponent)[1] if pid.subcomponent in authority else ""
            if not value:
                continue
            if (universal == PRC_RESIDENT_ID_OID or id_type == "NNCHN") and resident_id is None:
                resident_id = value
            elif id_type == "MR" and mrn is None:
                mrn, mrn_authority = value, authority
            elif id_type in ("", "PI", "PT") and fallback is None:
                fallback = (value, authority)
        if mrn is None and fallback is not None:  # senders that do not type their identifiers
            mrn, mrn_authority = fallback
        if mrn is None:
            raise Rejected("missing_required_field", "PID-3 has no patient identifier (type MR, PI or untyped)")
        self.patient_key = _key(self.institution, "patient", mrn_authority, mrn)
        patient_key = self.patient_key
        name_zh = name_en = None
        for rep in pid.repetitions(5):
            family, given = pid.unescape(_component(rep, 1)), pid.unescape(_component(rep, 2))
            if not (family or given):
                continue
            if _has_cjk(family + given):
                name_zh = name_zh or f"{family}{given}"
            else:
                name_en = name_en or " ".join(p for p in (given, family) if p)
        birth = hl7_datetime(pid.raw(7), "PID-7 (date/time of birth)")
        phone = email = None
        for number in (13, 14):
            for rep in pid.repetitions(number):
                use, equipment = _component(rep, 2), _component(rep, 3)
                address = pid.unescape(_component(rep, 4))
                if (equipment == "Internet" or use == "NET") and address:
                    email = email or address
                    continue
                number_text = (pid.unescape(_component(rep, 12)) or pid.unescape(_component(rep, 1))
                               or "".join(_component(rep, i) for i in (6, 7)))
                if number_text:
                    phone = phone or number_text
        return {
            "mrn": mrn,
            "resident_id": resident_id,
            "name_zh": name_zh,
            "name_en": name_en,
            "gender": SEX.get(pid.component_of(8, 1).upper()) if pid.raw(8) else None,
            "birth_date": birth[:10] if birth else None,
            "phone": phone,
            "email": email,
            "address": self._address(pid),
            "_key": patient_key,
        }

    @staticmethod
    def _address(pid: _Fields) -> str | None:
        for rep in pid.repetitions(11):
            street, other, city, state, postal = (pid.unescape(_component(rep, i)) for i in range(1, 6))
            county = pid.unescape(_component(rep, 9))
            if _has_cjk(street + city + state):
                head = state if state == city else f"{state}{city}"
                text = f"{head}{county}{street}{other}"
            else:
                tail = " ".join(p for p in (state, postal) if p)
                text = ", ".join(p for p in (street, other, city, tail) if p)
            if text:
                return text
        return None

    def _encounter(self, pv1: _Fields) -> dict[str, Any]:
        visit = pv1.component_of(19, 1)
        self.encounter_key = (
            _key(self.institution, "visit", pv1.component_of(19, 4), visit) if visit
            else _key(self.institution, "message", self.message.control_id, "PV1")
        )
        start = hl7_datetime(pv1.raw(44), "PV1-44 (admit date/time)")
        end = hl7_datetime(pv1.raw(45), "PV1-45 (discharge date/time)")
        event = self.message.message_type.split("^")[1]
        status = "finished" if end else ("arrived" if event == "A04" else "in-progress")
        return {
            "patient_key": self.patient_key,
            "status": status,
            "encounter_class": ENCOUNTER_CLASS.get(pv1.component_of(2, 1)),
            "start": start,
            "end": end,
            "_key": self.encounter_key,
        }

    def _observation(self, obx: _Fields, number: int, order_id: str | None, order_time: str | None,
                     in_oru: bool) -> dict[str, Any]:
        code = obx.component_of(3, 1)
        coding_system = obx.component_of(3, 3)
        if coding_system in LOINC_SYSTEMS:
            system: str | None = codes.LOINC
        elif coding_system == "L" or coding_system.startswith("99"):
            system = codes.local_lab_system(self.institution or "unknown")
        else:
            system = None
        value_type = obx.component_of(2, 1)
        raw_value = obx.raw(5)
        value: float | None = None
        if value_type == "NM" and raw_value:
            text = raw_value.split(obx.repetition, 1)[0].strip()
            if not _NUMBER.match(text):
                raise Rejected("invalid_value", f"OBX-5 (segment {number}) is not a number (value type NM)")
            value = float(text)
        elif value_type == "SN" and raw_value:
            parts = raw_value.split(obx.component)
            comparator, number_text = _component(parts, 1), _component(parts, 2).strip()
            if comparator in ("", "=") and not _component(parts, 3) and _NUMBER.match(number_text):
                value = float(number_text)
        unit = obx.component_of(6, 1) or None
        unit_system = codes.UCUM if obx.component_of(6, 3) in UCUM_SYSTEMS else None
        effective = hl7_datetime(obx.raw(14), f"OBX-14 (segment {number})") or order_time
        status = OBSERVATION_STATUS.get(obx.component_of(11, 1).upper()) if obx.raw(11) else None
        return {
            "patient_key": self.patient_key,
            "status": status,
            "category": "laboratory" if in_oru else "vital-signs",
            "code_system": system,
            "code": code or None,
            "display": obx.component_of(3, 2) or None,
            "value": value,
            "unit": unit,
            "unit_system": unit_system,
            "effective": effective,
            "_key": _key(self.institution, "observation", order_id or self.message.control_id, code, coding_system,
                         obx.component_of(4, 1)),
        }

    def _condition(self, dg1: _Fields, number: int) -> dict[str, Any]:
        code = dg1.component_of(3, 1)
        coding_system = dg1.component_of(3, 3)
        recorded = hl7_datetime(dg1.raw(5), f"DG1-5 (segment {number})")
        return {
            "patient_key": self.patient_key,
            "code_system": DIAGNOSIS_SYSTEMS.get(coding_system),
            "code": code or None,
            "display": dg1.component_of(3, 2) or None,
            "clinical_status": "active",
            "onset": None,
            "recorded_date": recorded,
            "_key": _key(self.institution, "condition", self.patient_key, self.encounter_key, code, coding_system),
        }


_RESOURCE_TYPE = {"patients": "Patient", "encounters": "Encounter", "observations": "Observation",
                  "conditions": "Condition"}


def parse_hl7_object(content: bytes, *, institution: str | None, source_object: str, asset: str) -> ParsedFhir:
    """Parse one landed HL7 v2 file (many messages) into FHIR-table rows.

    ``resources_seen`` counts the rows a good message maps to, plus one per
    quarantined message and one per out-of-scope message, so
    ``result.reconciliation()`` holds.
    """
    result = ParsedFhir(rows={table: [] for table in HL7_TABLES})

    def quarantine(position: int | None, message_type: str | None, code: str, reason: str) -> None:
        result.resources_seen += 1
        result.quarantine.append(
            QuarantineRecord(STAGE, asset, institution, source_object, position, message_type, code, reason)
        )

    if not content.strip(b"\r\n\t \x0b\x1c"):
        quarantine(None, None, "empty_file", "file is empty")
        return result
    for raw in split_hl7_messages(content):
        message_type: str | None = None
        try:
            if raw.problem is not None:
                raise Rejected(*raw.problem)
            message = _split_message(_decode(raw.data))
            message_type = message.message_type
            if not message.structure:
                result.resources_seen += 1
                result.out_of_scope += 1
                continue
            _validate_with_hl7apy(message)
            mapped = _Mapper(message, institution).map()
        except Rejected as rejected:
            quarantine(raw.position, message_type, rejected.code, rejected.reason)
            continue
        version = _version_digits(message.sent_at)
        for table, rows in mapped.items():
            for row in rows:
                resource_key = row.pop("_key")
                body = {k: v for k, v in row.items() if k not in LINEAGE_COLUMNS}
                row.update(
                    institution=institution,
                    resource_type=_RESOURCE_TYPE[table],
                    resource_key=resource_key,
                    version_id=version,
                    content_hash=sha256_bytes(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)),
                    source_object=source_object,
                    source_position=raw.position,
                )
                result.rows[table].append(row)
                result.resources_seen += 1
    return result
