"""Mapping one HL7 v2 message to the rows of the parsed tables (``tables.py``).

A :class:`MessageMapper` walks the segments of one :class:`~.hl7_message.Message`:
each PID starts a patient group, and the PV1, OBR/OBX, DG1 and TXA that follow
belong to that patient; the decisions (identifier ranking, code systems,
MDM note text, stable row keys) are listed in ``hl7.py``'s docstring.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from dataclasses import dataclass
from typing import Any

from medllm_pipelines.lib.common import codes
from medllm_pipelines.lib.ingest.hl7_framing import Rejected
from medllm_pipelines.lib.ingest.hl7_message import Fields, Message, Warn, hl7_datetime, nth_component

HL7_TABLES = ("patients", "encounters", "observations", "conditions", "notes")

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
_NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)$")


def row_key(*parts: str | None) -> str:
    """A stable row key from identifying parts: a digest, never an identifier itself."""
    return "hl7-" + hashlib.sha256("|".join(p or "" for p in parts).encode("utf-8")).hexdigest()[:32]


def _has_cjk(text: str) -> bool:
    return any("\u4e00" <= ch <= "\u9fff" for ch in text)


# --- mapping ------------------------------------------------------------------------
@dataclass
class MappedMessage:
    """The rows one message maps to (with a ``_key`` each), and the patient groups set aside."""

    rows: dict[str, list[dict[str, Any]]]
    unidentified: list[int]  # segment numbers of PIDs without an identifier (their groups set aside)


class MessageMapper:
    """Maps one message's segments to rows; findings go to ``warn``, unusable input raises :class:`Rejected`."""

    def __init__(self, message: Message, institution: str | None, warn: Warn) -> None:
        self.message = message
        self.institution = institution
        self.warn = warn
        self.patient_key: str | None = None
        self.encounter_key: str | None = None
        self.kind = message.message_type.split("^", 1)[0]

    def fields(self, segment: list[str]) -> Fields:
        return Fields(segment, self.message.separators)

    def date(self, value: str | None, where: str) -> str | None:
        """An HL7 date as ISO 8601; one that is not a date leaves the column empty, with a warning."""
        try:
            return hl7_datetime(value, where)
        except Rejected as rejected:
            self.warn(rejected.code, f"{rejected.reason}: left empty")
            return None

    def map(self) -> MappedMessage:
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
        return MappedMessage(rows, unidentified)

    def _patient(self, pid: Fields, number: int) -> dict[str, Any] | None:
        resident_id = resident_authority = None
        best: tuple[int, str, str, str] | None = None  # (rank, value, authority, type)
        for rep in pid.repetitions(3):
            value = pid.unescape(nth_component(rep, 1))
            authority = nth_component(rep, 4)
            id_type = nth_component(rep, 5).upper()
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
            self.patient_key = row_key(self.institution, "patient", mrn_authority, mrn)
        else:
            self.patient_key = row_key(self.institution, "resident", resident_authority, resident_id)
        name_zh = name_en = None
        for rep in pid.repetitions(5):
            family = pid.unescape(pid.first_subcomponent(nth_component(rep, 1)))
            given = pid.unescape(nth_component(rep, 2))
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
                use, equipment = nth_component(rep, 2), nth_component(rep, 3)
                address = pid.unescape(nth_component(rep, 4))
                if (equipment == "Internet" or use == "NET") and address:
                    email = email or address
                    continue
                number_text = (pid.unescape(nth_component(rep, 12)) or pid.unescape(nth_component(rep, 1))
                               or "".join(nth_component(rep, i) for i in (6, 7)))
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
    def _address(pid: Fields) -> str | None:
        for rep in pid.repetitions(11):
            street = " ".join(p for p in pid.unescape(nth_component(rep, 1)).split(pid.subcomponent) if p.strip())
            other, city, state, postal = (pid.unescape(nth_component(rep, i)) for i in range(2, 6))
            county = pid.unescape(nth_component(rep, 9))
            if _has_cjk(street + city + state):
                head = state if state == city else f"{state}{city}"
                text = f"{head}{county}{street}{other}"
            else:
                tail = " ".join(p for p in (state, postal) if p)
                text = ", ".join(p for p in (street, other, city, tail) if p)
            if text:
                return text
        return None

    def _encounter(self, pv1: Fields, number: int) -> dict[str, Any]:
        visit = pv1.component_of(19, 1)
        self.encounter_key = (
            row_key(self.institution, "visit", pv1.component_of(19, 4), visit) if visit
            else row_key(self.institution, "message", self.message.control_id, "PV1", str(number))
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

    def _observation(self, obx: Fields, number: int, order_id: str | None, order_time: str | None) -> dict[str, Any]:
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
            comparator, number_text = nth_component(parts, 1), nth_component(parts, 2)
            if comparator in ("", "=") and not nth_component(parts, 3) and _NUMBER.match(number_text):
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
            "_key": row_key(self.institution, "observation", order_id or self.message.control_id, code, coding_system,
                         obx.component_of(4, 1)),
        }

    def _condition(self, dg1: Fields, number: int) -> dict[str, Any]:
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
            "_key": row_key(self.institution, "condition", self.patient_key, self.encounter_key, code, coding_system),
        }

    # MDM: a TXA opens a document; the OBX that follow hold its content.
    def _note(self, txa: Fields | None, number: int) -> dict[str, Any]:
        if txa is None:
            return {"status": "current", "date": None, "document": "", "number": number, "texts": [], "types": []}
        date = (self.date(txa.raw(6), f"TXA-6 (segment {number}, origination date/time)")
                or self.date(txa.raw(4), f"TXA-4 (segment {number}, activity date/time)"))
        document = "^".join(p for p in (txa.component_of(12, 1), txa.component_of(12, 2)) if p)
        return {"status": DOCUMENT_STATUS.get(txa.component_of(19, 1).upper()), "date": date, "document": document,
                "number": number, "texts": [], "types": []}

    def _add_note_content(self, note: dict[str, Any], obx: Fields) -> None:
        value_type = obx.component_of(2, 1).upper()
        if value_type in TEXT_VALUE_TYPES:
            reps = obx.raw(5).split(obx.repetition) if obx.raw(5) else []
            text = "\n".join(obx.unescape(rep) for rep in reps)  # components of TX/FT are text, not structure
            if text.strip():
                note["texts"].append(text)
                note["types"].append("text/plain")
        elif value_type == "ED":
            parts = obx.raw(5).split(obx.component)
            mime = "/".join(p for p in (nth_component(parts, 2).lower(), nth_component(parts, 3).lower()) if p)
            note["types"].append(mime or None)
            data = nth_component(parts, 5)
            if mime.startswith("text/") and data:
                try:
                    decoded = (base64.b64decode(data, validate=False).decode("utf-8", errors="replace")
                               if nth_component(parts, 4).upper() == "BASE64" else obx.unescape(data))
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
            "_key": (row_key(self.institution, "note", note["document"]) if note["document"]
                     else row_key(self.institution, "note-message", self.message.control_id, str(note["number"]))),
        }
