"""HL7 v2.x messages as interface engines accept them -> the same rows as the FHIR parser.

A landed HL7 file holds many messages, framed one of three ways, all accepted:
MLLP (``<VT> message <FS><CR>``, as an interface engine captures them), HL7
batch and file envelopes (``FHS``/``BHS`` ... ``BTS``/``FTS``, also inside an
MLLP frame), or bare messages one after another. Segments end in ``\\r``,
``\\n``, ``\\r\\n`` (or ``\\n\\r``); a blank line also ends a message; a UTF-8 byte-order
mark is dropped. ``source_position`` is the message's index in the file
(0-based, every framed or MSH-started unit counts).

In scope: ADT^A01/A04/A08 (patients, encounters, OBX vital signs, DG1
diagnoses), ORU^R01 of any shape (one or more patient groups, each with any
number of OBR/OBX groups; OBX before an OBR, without PV1, ...) and MDM^T02
(also T04/T06/T08/T10, which carry content): TXA + OBX text -> ``notes``, the
columns FHIR DocumentReference fills. Tables ``patients``, ``encounters``,
``observations``, ``conditions``, ``notes``, with the FHIR parser's columns and
lineage columns. Well-formed messages of other types (ADT^A03, ACK ...) are
counted as out of scope.

Leniency - what real senders do, accepted and recorded as warnings
(:attr:`ParsedHl7.warnings`, counted in ``warnings_by_code``), never as rejections:

* ``version_fallback``: MSH-12 names a version hl7apy has no tables for (2.9,
  2.7.2 ...): read with the nearest lower one it has (2.8.2 ...);
  ``version_assumed``: MSH-12 empty or not 2.x, read as v2.5;
* ``z_segment`` / ``undefined_segment``: a site-defined segment, or one the
  version does not define (PRT, CTD in v2.5.1 ...), is kept aside, not mapped;
* ``nonconforming_structure``: hl7apy's strict validation of the declared
  version (structure, segment order and cardinality, required fields, the
  fields we map) finds a fault - hl7apy reports the first finding per message;
  the mapping reads the segments itself, so the rows do not depend on it;
* ``unparseable_date`` / ``invalid_value``: a date that is not an HL7 date, an
  NM value that is not a number: that column is left empty, the row kept
  (cleaning's rules then decide, e.g. a patient without birth date);
* ``uncoded_observation`` (an OBX without OBX-3) and ``segment_before_pid``
  (PV1/OBR/OBX/DG1/TXA before any PID): not mapped;
* ``patient_identifier_not_mr``: the MRN came from a PID-3 repetition that is
  not typed ``MR`` (see below); ``byte_order_mark``.

Quarantined (one record per message, with a reason code and its position; the
reason names segments and fields, never values): only what cannot be used - no
MSH (``missing_msh``), unusable separators or no MSH-9 message type
(``invalid_header``), a character set it cannot decode (``unsupported_charset``,
``encoding_error``), a line that is not a segment at all, i.e. damaged text
(``bad_segment``), a cut MLLP frame (``malformed_frame``), no patient identity
(no PID, or no PID-3 value: ``missing_required_field``; an ORU patient group
without one is set aside alone, its message's other groups proceed), and any
exception raised while reading one message (``parser_error``: only its type is
named). The file always goes on with the next message.

Differences met in published samples (``../shared/conformance/hl7v2``): files
with a UTF-8 BOM and LF segment ends; v2.3, v2.4, v2.5.1 and v2.8 messages
(v2.8 XPN/XAD with more components than hl7apy's tables allow); MSH-9 without
the structure component; PRT/CTD/SFT segments in a v2.5.1 ORU; an ORU with
OBX before its OBR, TXA, SPM and several OBR groups; PID-3 typed ``A`` or
untyped, or with an MRN plus an SSN; a birth date of nine digits; trailing
blanks after the last field; MDM^T02 with TXA and OBX HD/ED content; a batch
without MSH (``python-hl7_sample_bad_batch_MALFORMED.hl7``, quarantined).

Mapping decisions:

* dates: HL7 ``YYYY[MM[DD[HH[MM[SS[.S+]]]]]][+/-ZZZZ]`` -> ISO 8601 (``2024``,
  ``2024-03``, ``2024-03-05``, ``2024-03-05T09:30:00+08:00``); a time without an
  offset stays naive and is read in the institution's zone by cleaning;
  ``birth_date`` keeps the date part only, as FHIR ``birthDate`` does;
* OBX-3 coded ``LN`` -> LOINC (``http://loinc.org``); ``L`` or ``99zzz`` (site-
  local) -> the institution's local lab code system; OBX-6 with coding system
  ``UCUM`` -> ``unit_system`` UCUM; value types NM (first repetition) and SN
  (plain ``^182``) give ``value``, others give none;
* DG1-3 ``I10`` -> ICD-10 (WHO), ``I10C`` -> ICD-10-CM, ``SCT`` -> SNOMED CT;
* PID-3: every repetition is considered, whatever its type. The one assigned by
  the PRC resident-ID authority (OID 2.16.156.10011.1.5, or type ``NNCHN``) is
  the 身份证号. The MRN is the first repetition of the best rank: ``MR``, then
  ``PI``, ``PT``, untyped (senders that do not type put their MRN there), ``PN``,
  ``AN``, then any other type in the order sent. With only a 身份证号, ``mrn``
  stays empty and the patient key is built from it. Each PID starts a patient
  group: the PV1, OBR/OBX, DG1, TXA that follow belong to that patient;
* MDM: one ``notes`` row per TXA; ``text`` joins the OBX-5 of text types (TX,
  FT, ST; ED with a ``text/*`` type, Base64 decoded) in order, formatting
  escapes (``\\.br\\``) as line breaks; ``content_type`` ``text/plain``, else the
  first ED's MIME type; ``date`` TXA-6 (origination), else TXA-4; ``status`` from
  TXA-19 (AV or empty -> current, OB -> superseded, CA -> entered-in-error);
  ``language`` MSH-19;
* keys: ``resource_key`` is a SHA-256 digest of (institution, assigning
  authority, MRN) for patients, of the visit number for encounters, of (order
  number, OBX-3, OBX-4) for observations, of TXA-12 for notes - stable across
  re-sent and updated (A08) messages, and never an identifier itself;
* ``version_id`` is MSH-7 as ``YYYYMMDDHHMMSS``, so cleaning's "latest version
  wins" keeps the newest message's data; ``content_hash`` hashes the mapped row,
  so a message re-sent with identical data is a duplicate.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import orjson

from medllm_pipelines.lib.common import codes
from medllm_pipelines.lib.common.records import QuarantineRecord, sha256_bytes
from medllm_pipelines.lib.ingest.fhir import LINEAGE_COLUMNS, ParsedFhir

STAGE = "ingest"
HL7_TABLES = ("patients", "encounters", "observations", "conditions", "notes")

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

# HL7 table 0396 coding systems -> our code system URIs.
LOINC_SYSTEMS = {"LN", "LOINC"}
UCUM_SYSTEMS = {"UCUM", codes.UCUM}
DIAGNOSIS_SYSTEMS = {"I10": codes.ICD10_WHO, "I10C": codes.ICD10_CM, "ICD10": codes.ICD10_WHO,
                     "SCT": codes.SNOMED_CT, "SNM": codes.SNOMED_CT}
PRC_RESIDENT_ID_OID = codes.PRC_RESIDENT_ID.removeprefix("urn:oid:")
# PID-3 identifier types (HL7 table 0203) in the order they are taken as the MRN; any
# other type ranks after these, untyped ("") with the patient-identifier types.
MRN_TYPE_RANK = {"MR": 0, "PI": 1, "PT": 2, "": 3, "PN": 4, "AN": 5}

SEX = {"M": "male", "F": "female", "O": "other", "A": "other", "U": "unknown", "N": "unknown"}
OBSERVATION_STATUS = {
    "F": "final", "C": "corrected", "P": "preliminary", "R": "preliminary", "S": "preliminary",
    "I": "registered", "X": "cancelled", "D": "entered-in-error", "W": "entered-in-error", "A": "amended",
}
ENCOUNTER_CLASS = {"I": "IMP", "O": "AMB", "E": "EMER", "P": "PRENC", "R": "AMB", "B": "AMB"}
DOCUMENT_STATUS = {"": "current", "AV": "current", "OB": "superseded", "CA": "entered-in-error"}  # TXA-19
TEXT_VALUE_TYPES = {"TX", "FT", "ST"}
CHARSETS = {
    "": "utf-8", "UNICODE UTF-8": "utf-8", "UNICODE": "utf-8", "UTF-8": "utf-8", "ISO IR192": "utf-8",
    "ASCII": "ascii", "ISO IR6": "ascii", "8859/1": "latin-1", "ISO IR100": "latin-1", "8859/15": "iso8859-15",
    "GB 18030-2000": "gb18030", "GB18030": "gb18030",
}

_BOM = b"\xef\xbb\xbf"
_MLLP_START, _MLLP_END = b"\x0b", b"\x1c"
_BATCH_SEGMENTS = (b"FHS", b"BHS", b"BTS", b"FTS")
_SEGMENT_ID = re.compile(r"^[A-Z][A-Z0-9]{2}$")
_VERSION = re.compile(r"^2\.\d+(?:\.\d+)?$")
_LANGUAGE = re.compile(r"^[A-Za-z]{2,3}(?:[-_][A-Za-z0-9]{2,8})*$")
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


class Rejected(Exception):
    """A message that cannot be ingested; ``reason`` names fields, never values."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


@dataclass(frozen=True)
class MessageWarning:
    """A message accepted despite a finding; ``reason`` names segments and fields, never values."""

    position: int
    message_type: str | None
    code: str
    reason: str


@dataclass
class ParsedHl7(ParsedFhir):
    """:class:`ParsedFhir` plus what an HL7 file adds: messages read and per-message warnings.

    ``warnings_by_code`` (code -> messages' findings) is what an asset puts in its
    metadata; warnings do not enter reconciliation: the message's rows are out.
    """

    messages_read: int = 0
    warnings: list[MessageWarning] = field(default_factory=list)
    warnings_by_code: dict[str, int] = field(default_factory=dict)

    def add_warnings(self, warnings: list[MessageWarning]) -> None:
        self.warnings.extend(warnings)
        for warning in warnings:
            self.warnings_by_code[warning.code] = self.warnings_by_code.get(warning.code, 0) + 1


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
    byte_order_mark: bool = False


def _segments_of(data: bytes) -> list[bytes]:
    return re.split(rb"\r\n|\n\r|\r|\n", data)


def split_hl7_messages(content: bytes) -> Iterator[RawMessage]:
    """The messages of a landed file, in order, with their positions."""
    if _MLLP_START in content:
        yield from _split_mllp(content)
    else:
        yield from _split_unframed(content, 0)


def _split_mllp(content: bytes) -> Iterator[RawMessage]:
    position = 0
    pieces = content.split(_MLLP_END)
    for index, piece in enumerate(pieces):
        stripped = piece.strip(b"\r\n\t ")
        if stripped.startswith(_BOM):
            stripped = stripped[len(_BOM):].lstrip(b"\r\n\t ")
        if not stripped:
            continue
        if not stripped.startswith(_MLLP_START):
            yield RawMessage(position, stripped, ("malformed_frame", "bytes outside an MLLP frame (no start block)"))
            position += 1
            continue
        frames = stripped[1:].split(_MLLP_START)
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
        bom = segment.startswith(_BOM)
        if bom:
            segment = segment[len(_BOM):]
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


# --- one message -------------------------------------------------------------------
@dataclass
class _Message:
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


def _decode(data: bytes, byte_order_mark: bool) -> str:
    if data.startswith(_BOM):
        data, byte_order_mark = data[len(_BOM):], True
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


def _split_message(text: str, warn: Warn) -> _Message:
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
    return _Message(
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


def _strict_finding(message: _Message) -> str | None:
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


class _Fields:
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


def _component(parts: list[str], index: int) -> str:
    return parts[index - 1].strip() if index - 1 < len(parts) else ""


def _key(*parts: str | None) -> str:
    return "hl7-" + hashlib.sha256("|".join(p or "" for p in parts).encode("utf-8")).hexdigest()[:32]


def _has_cjk(text: str) -> bool:
    return any("\u4e00" <= ch <= "\u9fff" for ch in text)


# --- mapping ------------------------------------------------------------------------
@dataclass
class _Mapped:
    rows: dict[str, list[dict[str, Any]]]
    unidentified: list[int]  # segment numbers of PIDs without an identifier (their groups set aside)


class _Mapper:
    def __init__(self, message: _Message, institution: str | None, warn: Warn) -> None:
        self.message = message
        self.institution = institution
        self.warn = warn
        self.patient_key: str | None = None
        self.encounter_key: str | None = None
        self.kind = message.message_type.split("^", 1)[0]

    def fields(self, segment: list[str]) -> _Fields:
        return _Fields(segment, self.message.separators)

    def date(self, value: str | None, where: str) -> str | None:
        """An HL7 date as ISO 8601; one that is not a date leaves the column empty, with a warning."""
        try:
            return hl7_datetime(value, where)
        except Rejected as rejected:
            self.warn(rejected.code, f"{rejected.reason}: left empty")
            return None

    def map(self) -> _Mapped:
        rows: dict[str, list[dict[str, Any]]] = {table: [] for table in HL7_TABLES}
        unidentified: list[int] = []
        if not any(segment_id == "PID" for segment_id, _ in self.message.segments):
            raise Rejected("missing_required_field", "message has no PID segment")
        seen_pid = False
        order_id: str | None = None
        order_time: str | None = None
        note: dict[str, Any] | None = None
        skipped_before_pid: list[str] = []
        for number, (segment_id, raw) in zip(self.message.numbers, self.message.segments, strict=True):
            seg = self.fields(raw)
            if segment_id == "PID":
                if note is not None:
                    rows["notes"].append(self._finish_note(note))
                    note = None
                patient = self._patient(seg, number)
                seen_pid = True
                order_id = order_time = None
                self.encounter_key = None
                if patient is None:
                    unidentified.append(number)
                    self.patient_key = None
                else:
                    rows["patients"].append(patient)
                continue
            if segment_id not in ("PV1", "OBR", "OBX", "DG1", "TXA"):
                continue
            if self.patient_key is None:
                if not seen_pid:
                    skipped_before_pid.append(segment_id)
                continue  # the group of a PID without identity is set aside with it
            if segment_id == "PV1":
                rows["encounters"].append(self._encounter(seg, number))
            elif segment_id == "OBR":
                order_id = seg.component_of(3, 1) or seg.component_of(2, 1) or self.message.control_id
                order_time = self.date(seg.raw(7), f"OBR-7 (segment {number})")
            elif segment_id == "TXA" and self.kind == "MDM":
                if note is not None:
                    rows["notes"].append(self._finish_note(note))
                note = self._note(seg, number)
            elif segment_id == "OBX":
                if self.kind == "MDM":
                    if note is None:
                        note = self._note(None, number)
                    self._add_note_content(note, seg)
                elif not seg.component_of(3, 1):
                    self.warn("uncoded_observation", f"OBX-3 (segment {number}) is empty: not mapped")
                else:
                    rows["observations"].append(self._observation(seg, number, order_id, order_time))
            elif segment_id == "DG1":
                rows["conditions"].append(self._condition(seg, number))
        if note is not None:
            rows["notes"].append(self._finish_note(note))
        if skipped_before_pid:
            where = ", ".join(sorted(set(skipped_before_pid)))
            self.warn("segment_before_pid", f"{where} before the first PID: not mapped")
        if not rows["patients"]:
            raise Rejected("missing_required_field", "PID-3 has no patient identifier")
        return _Mapped(rows, unidentified)

    def _patient(self, pid: _Fields, number: int) -> dict[str, Any] | None:
        resident_id = resident_authority = None
        best: tuple[int, str, str, str] | None = None  # (rank, value, authority, type)
        for rep in pid.repetitions(3):
            value = pid.unescape(_component(rep, 1))
            authority = _component(rep, 4)
            id_type = _component(rep, 5).upper()
            universal = authority.split(pid.subcomponent)[1] if pid.subcomponent in authority else ""
            if not value:
                continue
            if universal == PRC_RESIDENT_ID_OID or id_type == "NNCHN":
                if resident_id is None:
                    resident_id, resident_authority = value, authority
                continue
            rank = MRN_TYPE_RANK.get(id_type, len(MRN_TYPE_RANK))
            if best is None or rank < best[0]:
                best = (rank, value, authority, id_type)
        if best is None and resident_id is None:
            return None
        mrn = mrn_authority = None
        if best is not None:
            _, mrn, mrn_authority, id_type = best
            if id_type != "MR":
                self.warn("patient_identifier_not_mr",
                          f"PID-3 (segment {number}) has no MR identifier: MRN taken from type {id_type or 'untyped'}")
            self.patient_key = _key(self.institution, "patient", mrn_authority, mrn)
        else:
            self.patient_key = _key(self.institution, "resident", resident_authority, resident_id)
        name_zh = name_en = None
        for rep in pid.repetitions(5):
            family = pid.unescape(pid.first_subcomponent(_component(rep, 1)))
            given = pid.unescape(_component(rep, 2))
            if not (family or given):
                continue
            if _has_cjk(family + given):
                name_zh = name_zh or f"{family}{given}"
            else:
                name_en = name_en or " ".join(p for p in (given, family) if p)
        birth = self.date(pid.raw(7), f"PID-7 (segment {number}, date/time of birth)")
        phone = email = None
        for field_number in (13, 14):
            for rep in pid.repetitions(field_number):
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
            "_key": self.patient_key,
        }

    @staticmethod
    def _address(pid: _Fields) -> str | None:
        for rep in pid.repetitions(11):
            street = " ".join(p for p in pid.unescape(_component(rep, 1)).split(pid.subcomponent) if p.strip())
            other, city, state, postal = (pid.unescape(_component(rep, i)) for i in range(2, 6))
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

    def _encounter(self, pv1: _Fields, number: int) -> dict[str, Any]:
        visit = pv1.component_of(19, 1)
        self.encounter_key = (
            _key(self.institution, "visit", pv1.component_of(19, 4), visit) if visit
            else _key(self.institution, "message", self.message.control_id, "PV1", str(number))
        )
        start = self.date(pv1.raw(44), f"PV1-44 (segment {number}, admit date/time)")
        end = self.date(pv1.raw(45), f"PV1-45 (segment {number}, discharge date/time)")
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

    def _observation(self, obx: _Fields, number: int, order_id: str | None, order_time: str | None) -> dict[str, Any]:
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
            if _NUMBER.match(text):
                value = float(text)
            elif text:
                self.warn("invalid_value", f"OBX-5 (segment {number}) is not a number (value type NM): left empty")
        elif value_type == "SN" and raw_value:
            parts = raw_value.split(obx.repetition, 1)[0].split(obx.component)
            comparator, number_text = _component(parts, 1), _component(parts, 2)
            if comparator in ("", "=") and not _component(parts, 3) and _NUMBER.match(number_text):
                value = float(number_text)
        unit = obx.component_of(6, 1) or None
        unit_system = codes.UCUM if obx.component_of(6, 3) in UCUM_SYSTEMS else None
        effective = self.date(obx.raw(14), f"OBX-14 (segment {number})") or order_time
        status = OBSERVATION_STATUS.get(obx.component_of(11, 1).upper()) if obx.raw(11) else None
        return {
            "patient_key": self.patient_key,
            "status": status,
            "category": "laboratory" if self.kind == "ORU" else "vital-signs",
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
        recorded = self.date(dg1.raw(5), f"DG1-5 (segment {number})")
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

    # MDM: a TXA opens a document; the OBX that follow hold its content.
    def _note(self, txa: _Fields | None, number: int) -> dict[str, Any]:
        if txa is None:
            return {"status": "current", "date": None, "document": "", "number": number, "texts": [], "types": []}
        date = (self.date(txa.raw(6), f"TXA-6 (segment {number}, origination date/time)")
                or self.date(txa.raw(4), f"TXA-4 (segment {number}, activity date/time)"))
        document = "^".join(p for p in (txa.component_of(12, 1), txa.component_of(12, 2)) if p)
        return {"status": DOCUMENT_STATUS.get(txa.component_of(19, 1).upper()), "date": date, "document": document,
                "number": number, "texts": [], "types": []}

    def _add_note_content(self, note: dict[str, Any], obx: _Fields) -> None:
        value_type = obx.component_of(2, 1).upper()
        if value_type in TEXT_VALUE_TYPES:
            reps = obx.raw(5).split(obx.repetition) if obx.raw(5) else []
            text = "\n".join(obx.unescape(rep) for rep in reps)  # components of TX/FT are text, not structure
            if text.strip():
                note["texts"].append(text)
                note["types"].append("text/plain")
        elif value_type == "ED":
            parts = obx.raw(5).split(obx.component)
            mime = "/".join(p for p in (_component(parts, 2).lower(), _component(parts, 3).lower()) if p)
            note["types"].append(mime or None)
            data = _component(parts, 5)
            if mime.startswith("text/") and data:
                try:
                    decoded = (base64.b64decode(data, validate=False).decode("utf-8", errors="replace")
                               if _component(parts, 4).upper() == "BASE64" else obx.unescape(data))
                except (binascii.Error, ValueError):
                    decoded = ""
                if decoded.strip():
                    note["texts"].append(decoded)

    def _finish_note(self, note: dict[str, Any]) -> dict[str, Any]:
        texts, types = note["texts"], [t for t in note["types"] if t]
        return {
            "patient_key": self.patient_key,
            "status": note["status"],
            "date": note["date"],
            "content_type": "text/plain" if texts else (types[0] if types else None),
            "language": self.message.language,
            "text": "\n".join(texts) if texts else None,
            "_key": (_key(self.institution, "note", note["document"]) if note["document"]
                     else _key(self.institution, "note-message", self.message.control_id, str(note["number"]))),
        }


_RESOURCE_TYPE = {"patients": "Patient", "encounters": "Encounter", "observations": "Observation",
                  "conditions": "Condition", "notes": "DocumentReference"}


def _read_message(
    raw: RawMessage, institution: str | None, warn: Warn, seen_type: list[str]
) -> tuple[_Message, _Mapped | None]:
    """One framed unit -> its message and rows (None when out of scope); raises :class:`Rejected`."""
    if raw.problem is not None:
        raise Rejected(*raw.problem)
    text = _decode(raw.data, raw.byte_order_mark)
    if raw.byte_order_mark or raw.data.startswith(_BOM):
        warn("byte_order_mark", "message text starts with a UTF-8 byte-order mark: dropped")
    message = _split_message(text, warn)
    seen_type.append(message.message_type)
    if not message.structure:
        return message, None
    finding = _strict_finding(message)
    if finding is not None:
        warn("nonconforming_structure", finding)
    return message, _Mapper(message, institution, warn).map()


def parse_hl7_object(content: bytes, *, institution: str | None, source_object: str, asset: str) -> ParsedHl7:
    """Parse one landed HL7 v2 file (many messages) into FHIR-table rows.

    ``resources_seen`` counts the rows a good message maps to, plus one per
    quarantine record (a message, or an ORU patient group without identity)
    and one per out-of-scope message, so ``result.reconciliation()`` holds.
    Never raises on the content: whatever one message raises is that message's
    quarantine record, and the file goes on.
    """
    result = ParsedHl7(rows={table: [] for table in HL7_TABLES})

    def quarantine(position: int | None, message_type: str | None, code: str, reason: str) -> None:
        result.resources_seen += 1
        result.quarantine.append(
            QuarantineRecord(STAGE, asset, institution, source_object, position, message_type, code, reason)
        )

    if not content.replace(_BOM, b"").strip(b"\r\n\t \x0b\x1c"):
        quarantine(None, None, "empty_file", "file is empty")
        return result
    try:
        units = list(split_hl7_messages(content))
    except Exception as exc:  # framing is plain byte work; a failure here is a defect, recorded, not raised
        quarantine(None, None, "parser_error", f"file could not be split into messages ({type(exc).__name__})")
        return result
    for raw in units:
        result.messages_read += 1
        seen_type: list[str] = []
        pending: list[MessageWarning] = []

        def warn(code: str, reason: str, position: int = raw.position) -> None:
            pending.append(MessageWarning(position, seen_type[0] if seen_type else None, code, reason))

        try:
            message, mapped = _read_message(raw, institution, warn, seen_type)
            finished = _with_lineage(mapped.rows, message, raw.position, institution, source_object) if mapped else {}
        except Rejected as rejected:
            quarantine(raw.position, seen_type[0] if seen_type else None, rejected.code, rejected.reason)
            continue
        except Exception as exc:  # noqa: BLE001 - any defect on one message is that message's quarantine
            quarantine(raw.position, seen_type[0] if seen_type else None, "parser_error",
                       f"unexpected {type(exc).__name__} while reading the message")
            continue
        if mapped is None:
            result.resources_seen += 1
            result.out_of_scope += 1
            continue
        for number in mapped.unidentified:
            quarantine(raw.position, message.message_type, "missing_required_field",
                       f"PID-3 (segment {number}) has no patient identifier: its patient group is set aside")
        result.add_warnings(pending)
        for table, rows in finished.items():  # nothing below can raise: the message's rows go in whole
            result.rows[table].extend(rows)
            result.resources_seen += len(rows)
    return result


def _with_lineage(
    mapped: dict[str, list[dict[str, Any]]], message: _Message, position: int, institution: str | None,
    source_object: str,
) -> dict[str, list[dict[str, Any]]]:
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
                source_position=position,
            )
    return mapped
