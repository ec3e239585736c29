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
(:attr:`ParsedFeed.warnings`, counted in ``warnings_by_code``), never as rejections:

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

Modules: ``hl7_framing.py`` (units and their text), ``hl7_message.py`` (one
message's segments, version and strict check), ``hl7_mapping.py`` (rows);
this one reads a file through them into one :class:`~.feed.ParsedFeed`.
"""

from __future__ import annotations

from typing import Any

import orjson

from medllm_pipelines.lib.common.records import QuarantineRecord, sha256_bytes
from medllm_pipelines.lib.ingest.feed import FeedWarning, ParsedFeed
from medllm_pipelines.lib.ingest.hl7_framing import (
    BOM,
    RawMessage,
    Rejected,
    decode_message,
    is_blank_file,
    split_hl7_messages,
)
from medllm_pipelines.lib.ingest.hl7_mapping import HL7_TABLES, MappedMessage, MessageMapper
from medllm_pipelines.lib.ingest.hl7_message import Message, Warn, split_message, strict_finding, version_digits
from medllm_pipelines.lib.ingest.tables import LINEAGE_COLUMNS

STAGE = "ingest"

_RESOURCE_TYPE = {"patients": "Patient", "encounters": "Encounter", "observations": "Observation",
                  "conditions": "Condition", "notes": "DocumentReference"}


def _read_message(
    raw: RawMessage, institution: str | None, warn: Warn, seen_type: list[str]
) -> tuple[Message, MappedMessage | None]:
    """One framed unit -> its message and rows (None when out of scope); raises :class:`Rejected`."""
    if raw.problem is not None:
        raise Rejected(*raw.problem)
    text = decode_message(raw.data, raw.byte_order_mark)
    if raw.byte_order_mark or raw.data.startswith(BOM):
        warn("byte_order_mark", "message text starts with a UTF-8 byte-order mark: dropped")
    message = split_message(text, warn)
    seen_type.append(message.message_type)
    if not message.structure:
        return message, None
    finding = strict_finding(message)
    if finding is not None:
        warn("nonconforming_structure", finding)
    return message, MessageMapper(message, institution, warn).map()


def parse_hl7_object(content: bytes, *, institution: str | None, source_object: str, asset: str) -> ParsedFeed:
    """Parse one landed HL7 v2 file (many messages) into FHIR-table rows.

    ``resources_seen`` counts the rows a good message maps to, plus one per
    quarantine record (a message, or an ORU patient group without identity)
    and one per out-of-scope message, so ``result.reconciliation()`` holds.
    Never raises on the content: whatever one message raises is that message's
    quarantine record, and the file goes on.
    """
    result = ParsedFeed(rows={table: [] for table in HL7_TABLES})

    def quarantine(position: int | None, message_type: str | None, code: str, reason: str) -> None:
        result.resources_seen += 1
        result.quarantine.append(
            QuarantineRecord(STAGE, asset, institution, source_object, position, message_type, code, reason)
        )

    if is_blank_file(content):
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
        pending: list[FeedWarning] = []

        def warn(code: str, reason: str, position: int = raw.position) -> None:
            pending.append(FeedWarning(position, seen_type[0] if seen_type else None, code, reason))

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
    mapped: dict[str, list[dict[str, Any]]], message: Message, position: int, institution: str | None,
    source_object: str,
) -> dict[str, list[dict[str, Any]]]:
    version = version_digits(message.sent_at)
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
