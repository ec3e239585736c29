"""An HL7 v2.5 feed from a fourth, small institution (``whsy``), with seeded defects.

Many Chinese hospitals still deliver admissions and lab results as HL7 v2
messages from their HIS/LIS interface engine, not FHIR. ``whsy`` does: an
MLLP capture of ADT messages (``whsy/hl7/adt-0001.hl7``: A01 admissions, A04
outpatient registrations, A08 updates after discharge) and an HL7 batch file
of ORU^R01 lab results (``whsy/hl7/oru-0001.hl7``, FHS/BHS ... BTS/FTS).

Its patients are *second registrations* of persons already at one of the FHIR
institutions - same name, birth date, phone and address, a whsy MRN - and
about a third of them arrive without the 身份证号 in PID-3, so record linkage
has to find them by name and birth date. Identifiers in PID: MRN (type MR,
authority WHSY), 身份证号 (type NNCHN, authority OID 2.16.156.10011.1.5),
Chinese and pinyin names, birth date, sex, address, mobile phone and e-mail.
Labs are LOINC-coded (``LN``) with UCUM units; diagnoses are ICD-10 (``I10``).

Seeded defects (rates from ``DefectRates``, per message, listed in the
manifest with position = message index in the file):

* ``malformed_file``: a segment that is not a segment (a bad segment id);
* ``missing_required_field``: an ADT message whose MSH segment is missing;
* ``unparseable_date``: PID-7 or OBX-14 that is not an HL7 date.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import numpy as np

from medllm_pipelines.lib.common import codes
from medllm_pipelines.lib.synth import catalog
from medllm_pipelines.lib.synth.defects import (
    MALFORMED_FILE,
    MISSING_REQUIRED_FIELD,
    UNPARSEABLE_DATE,
    Defect,
    DefectRates,
)
from medllm_pipelines.lib.synth.determinism import random_uuid, stream
from medllm_pipelines.lib.synth.files import OutputTree
from medllm_pipelines.lib.synth.ground_truth import ClinicalProfile
from medllm_pipelines.lib.synth.institutions import (
    LABORATORY,
    LOCAL_OFFSET,
    VITAL_SIGNS,
    Institution,
    ObservationSpec,
)
from medllm_pipelines.lib.synth.people import Person, Registration
from medllm_pipelines.lib.synth.plans import PatientPlan, plan_patients
from medllm_pipelines.lib.synth.units import from_canonical

HL7V2_MESSAGES = "hl7v2_messages"
ADT_FILE = "whsy/hl7/adt-0001.hl7"
ORU_FILE = "whsy/hl7/oru-0001.hl7"
REGISTRATION_RATE = 0.08  # of persons with a 身份证号, also registered at whsy
MIN_REGISTRATIONS = 4
WITHOUT_RESIDENT_ID_RATE = 0.35
HL7_VERSION = "2.5"
RESIDENT_ID_AUTHORITY = "CHN&2.16.156.10011.1.5&ISO"
MRN_AUTHORITY = "WHSY"

_VT, _FS, _CR = "\x0b", "\x1c", "\r"


def _spec(concept: str, code: str, display: str, text: str, unit: str, decimals: int, category: str) -> ObservationSpec:
    return ObservationSpec(concept, codes.LOINC, code, display, text, unit, decimals, category)


WHSY = Institution(
    code="whsy",
    name="武汉市示范医院",
    language="zh",
    fhir_format=HL7V2_MESSAGES,
    diagnosis_system=codes.ICD10_WHO,
    medication_system=codes.ATC,
    timestamp_style=LOCAL_OFFSET,
    share=0.0,  # nobody's home institution: every patient here is a second registration
    zh_patient_share=1.0,
    mrn_prefix="WS",
    mrn_base=300_000,
    mrn_width=7,
    patients_per_bundle=0,
    observations=(
        _spec(codes.BODY_HEIGHT.name, "8302-2", "Body height", "身高", "cm", 0, VITAL_SIGNS),
        _spec(codes.BODY_WEIGHT.name, "29463-7", "Body weight", "体重", "kg", 1, VITAL_SIGNS),
        _spec(codes.BMI.name, "39156-5", "Body mass index (BMI) [Ratio]", "体重指数", "kg/m2", 1, VITAL_SIGNS),
        _spec(codes.SYSTOLIC_BP.name, "8480-6", "Systolic blood pressure", "收缩压", "mm[Hg]", 0, VITAL_SIGNS),
        _spec(codes.DIASTOLIC_BP.name, "8462-4", "Diastolic blood pressure", "舒张压", "mm[Hg]", 0, VITAL_SIGNS),
        _spec(codes.HEART_RATE.name, "8867-4", "Heart rate", "心率", "/min", 0, VITAL_SIGNS),
        _spec(codes.HBA1C.name, "4548-4", "Hemoglobin A1c/Hemoglobin.total in Blood", "糖化血红蛋白", "%", 1,
              LABORATORY),
        _spec(codes.FASTING_GLUCOSE.name, "14771-0", "Fasting glucose [Moles/volume] in Serum or Plasma",
              "空腹血糖", "mmol/L", 1, LABORATORY),
        _spec(codes.TOTAL_CHOLESTEROL.name, "14647-2", "Cholesterol [Moles/volume] in Serum or Plasma", "总胆固醇",
              "mmol/L", 2, LABORATORY),
    ),
)


@dataclass
class HL7FeedOutput:
    """What was written for the HL7 feed."""

    files: list[str] = field(default_factory=list)
    defects: list[Defect] = field(default_factory=list)
    messages: dict[str, int] = field(default_factory=dict)
    segments: dict[str, int] = field(default_factory=dict)
    persons: list[int] = field(default_factory=list)
    persons_without_resident_id: list[int] = field(default_factory=list)

    def counts(self, patient_records: int) -> dict[str, Any]:
        """The manifest's ``counts["whsy"]`` (indices and numbers only, no identifier)."""
        return {
            "patient_records": patient_records,
            "resources": {
                "Patient": self.segments.get("PID", 0),
                "Encounter": self.segments.get("PV1", 0),
                "Observation": self.segments.get("OBX", 0),
                "Condition": self.segments.get("DG1", 0),
            },
            "format": f"HL7 v{HL7_VERSION}: ADT^A01/A04/A08 as an MLLP capture, ORU^R01 as a batch file",
            "hl7_files": len(self.files),
            "hl7_messages": dict(sorted(self.messages.items())),
            "second_registration_of_persons": self.persons,
            "persons_without_resident_id_in_pid": self.persons_without_resident_id,
        }


def escape(text: str) -> str:
    """HL7 escaping of the delimiters ``| ^ & ~ \\`` inside a value."""
    return (text.replace("\\", "\\E\\").replace("|", "\\F\\").replace("^", "\\S\\").replace("&", "\\T\\")
            .replace("~", "\\R\\"))


def hl7_timestamp(moment: datetime) -> str:
    """A local (UTC+8) clock time as an HL7 DTM with its offset."""
    return moment.strftime("%Y%m%d%H%M%S") + "+0800"


def _number(value: float, decimals: int) -> str:
    return f"{round(value, decimals):.{decimals}f}"


class _Writer:
    """Renders one registration's plan as HL7 messages."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng
        self.control = 0
        self.visits = 0

    def next_visit(self) -> int:
        self.visits += 1
        return 2_000_000 + self.visits

    def control_id(self) -> str:
        self.control += 1
        return f"WHSY{self.control:08d}"

    @staticmethod
    def msh(moment: datetime, message_type: str, control_id: str) -> str:
        return (f"MSH|^~\\&|WHSY-HIS|WHSY|MEDLLM|MEDLLM|{hl7_timestamp(moment)}||{message_type}|{control_id}|P|"
                f"{HL7_VERSION}|||AL|NE|CHN|UNICODE UTF-8")

    @staticmethod
    def pid(registration: Registration, with_resident_id: bool) -> str:
        person = registration.person
        identifiers = [f"{escape(registration.mrn)}^^^{MRN_AUTHORITY}^MR"]
        if with_resident_id and person.resident_id:
            identifiers.append(f"{person.resident_id}^^^{RESIDENT_ID_AUTHORITY}^NNCHN")
        names = [f"{escape(person.family_zh or '')}^{escape(person.given_zh or '')}^^^^^L",
                 f"{escape(person.family_en)}^{escape(person.given_en)}^^^^^A"]
        address = person.address
        xad = (f"{escape(address.line)}^^{escape(address.city)}^{escape(address.state)}^{address.postal_code or ''}^"
               f"{address.country}^H^^{escape(address.district or '')}")
        telecom = f"^PRN^CP^^^^^^^^^{escape(person.phone)}~^NET^Internet^{escape(person.email)}"
        sex = {"male": "M", "female": "F"}[person.sex]
        return (f"PID|1||{'~'.join(identifiers)}||{'~'.join(names)}||{person.birth_date:%Y%m%d}|{sex}|||{xad}||"
                f"{telecom}")

    @staticmethod
    def pv1(visit_number: str, inpatient: bool, start: datetime, end: datetime | None) -> str:
        fields = ["PV1", "1", "I" if inpatient else "O", "内分泌科^^^WHSY" if inpatient else "门诊^^^WHSY"]
        fields += [""] * 15 + [f"{visit_number}^^^{MRN_AUTHORITY}^VN"]  # PV1-19
        fields += [""] * 24 + [hl7_timestamp(start), hl7_timestamp(end) if end else ""]  # PV1-44, PV1-45
        while fields[-1] == "":
            fields.pop()
        return "|".join(fields)

    @staticmethod
    def obx(set_id: int, spec: ObservationSpec, canonical: float, moment: datetime) -> str:
        value = _number(from_canonical(spec.concept, canonical, spec.unit), spec.decimals)
        return (f"OBX|{set_id}|NM|{spec.code}^{spec.display}^LN||{value}|{spec.unit}^{spec.unit}^UCUM|||||F|||"
                f"{hl7_timestamp(moment)}")

    @staticmethod
    def dg1(set_id: int, condition: str, hba1c: float, moment: datetime) -> str:
        coded = catalog.condition_coding(condition, codes.ICD10_WHO, hba1c)
        return f"DG1|{set_id}||{coded.code}^{escape(coded.display)}^I10||{hl7_timestamp(moment)}|F"


@dataclass
class _Message:
    message_type: str
    control_id: str
    segments: list[str]
    kind: str  # "adt" | "oru"


def _messages(plan: PatientPlan, with_resident_id: bool, writer: _Writer) -> list[_Message]:
    registration = plan.registration
    pid = writer.pid(registration, with_resident_id)
    vitals = [spec for spec in WHSY.observations if spec.category == VITAL_SIGNS]
    labs = [spec for spec in WHSY.observations if spec.category == LABORATORY]
    baseline_hba1c = plan.visits[0].values[codes.HBA1C.name]
    messages: list[_Message] = []
    for number, visit in enumerate(plan.visits):
        visit_number = f"V{writer.next_visit():07d}"
        event = "A01" if visit.inpatient else "A04"
        control = writer.control_id()
        segments = [writer.msh(visit.start, f"ADT^{event}^ADT_A01", control), f"EVN|{event}|{hl7_timestamp(visit.start)}",
                    pid, writer.pv1(visit_number, visit.inpatient, visit.start, None if visit.inpatient else visit.end)]
        vitals_at = visit.start + timedelta(minutes=5)
        segments += [writer.obx(i, spec, visit.values[spec.concept], vitals_at) for i, spec in enumerate(vitals, 1)]
        diagnoses = [d for d in plan.diagnoses if d.visit == number]
        segments += [writer.dg1(i, d.condition, baseline_hba1c, visit.start + timedelta(minutes=20))
                     for i, d in enumerate(diagnoses, 1)]
        messages.append(_Message(f"ADT^{event}", control, segments, "adt"))
        if visit.inpatient:  # the discharge arrives as an update of the same visit
            control = writer.control_id()
            update = [writer.msh(visit.end, "ADT^A08^ADT_A01", control), f"EVN|A08|{hl7_timestamp(visit.end)}", pid,
                      writer.pv1(visit_number, True, visit.start, visit.end)]
            messages.append(_Message("ADT^A08", control, update, "adt"))
        labs_at = visit.start + timedelta(minutes=int(writer.rng.integers(30, 120)))
        control = writer.control_id()
        order = f"L{writer.control:08d}"
        segments = [writer.msh(labs_at + timedelta(hours=2), "ORU^R01^ORU_R01", control), pid,
                    writer.pv1(visit_number, visit.inpatient, visit.start, None if visit.inpatient else visit.end),
                    f"OBR|1|{order}^WHSY-HIS|{order}^WHSY-LIS|LAB^常规生化^L|||{hl7_timestamp(labs_at)}"]
        segments += [writer.obx(i, spec, visit.values[spec.concept], labs_at) for i, spec in enumerate(labs, 1)]
        messages.append(_Message("ORU^R01", control, segments, "oru"))
    return messages


_BAD_SEGMENTS = ("this line is not a segment", "pid|broken lower-case segment id", "PI|two-letter id", "X1Y2|too long")


def _seed_defect(message: _Message, rates: DefectRates, rng: np.random.Generator) -> str | None:
    """Damage ``message`` in place with at most one defect; returns its type."""
    draw = rng.random()
    if draw < rates.malformed_file:
        at = int(rng.integers(1, len(message.segments) + 1))
        message.segments.insert(at, _BAD_SEGMENTS[int(rng.integers(len(_BAD_SEGMENTS)))])
        return MALFORMED_FILE
    draw -= rates.malformed_file
    if message.kind == "adt" and draw < rates.missing_required_field:
        message.segments.pop(0)  # only MLLP-framed messages can lose their header and still be found
        return MISSING_REQUIRED_FIELD
    draw -= rates.missing_required_field if message.kind == "adt" else 0.0
    if draw < rates.unparseable_date:
        target = "OBX" if message.kind == "oru" else "PID"
        for index, segment in enumerate(message.segments):
            if segment.startswith(target + "|"):
                fields = segment.split("|")
                slot = 14 if target == "OBX" else 7
                original = fields[slot]
                fields[slot] = ("19801345" if rng.random() < 0.5 else f"{original[6:8]}/{original[4:6]}/{original[:4]}")
                message.segments[index] = "|".join(fields)
                return UNPARSEABLE_DATE
    return None


def write_hl7_feed(
    tree: OutputTree,
    persons: list[Person],
    profiles: dict[int, ClinicalProfile],
    seed: int,
    rates: DefectRates,
    *,
    counts: dict[str, dict[str, Any]],
    defects: list[Defect],
) -> HL7FeedOutput:
    """Write whsy's two HL7 files; add its counts and defects to the manifest's collections."""
    rng = stream(seed, "hl7", WHSY.code)
    candidates = [person for person in persons if person.resident_id is not None]
    wanted = min(len(candidates), max(MIN_REGISTRATIONS, round(REGISTRATION_RATE * len(candidates))))
    chosen = sorted(int(i) for i in rng.choice(len(candidates), size=wanted, replace=False)) if wanted else []
    registrations = []
    for ordinal, candidate in enumerate(chosen):
        person = candidates[candidate]
        number = WHSY.mrn_base + ordinal * 29 + int(rng.integers(29))
        registrations.append(Registration(person, WHSY, ordinal, f"{WHSY.mrn_prefix}{number:0{WHSY.mrn_width}d}",
                                          random_uuid(rng), primary=False))
    plans = plan_patients(registrations, profiles, stream(seed, "hl7-plans", WHSY.code))
    writer = _Writer(stream(seed, "hl7-messages", WHSY.code))
    output = HL7FeedOutput(persons=[r.person.index for r in registrations])
    adt: list[_Message] = []
    oru: list[_Message] = []
    for plan in plans:
        with_resident_id = bool(rng.random() >= WITHOUT_RESIDENT_ID_RATE)
        if not with_resident_id:
            output.persons_without_resident_id.append(plan.registration.person.index)
        for message in _messages(plan, with_resident_id, writer):
            (adt if message.kind == "adt" else oru).append(message)
    defect_rng = stream(seed, "hl7-defects", WHSY.code)
    for relpath, messages in ((ADT_FILE, adt), (ORU_FILE, oru)):
        for position, message in enumerate(messages):
            for segment in message.segments:
                head = segment[:3]
                output.segments[head] = output.segments.get(head, 0) + 1
            output.messages[message.message_type] = output.messages.get(message.message_type, 0) + 1
            defect = _seed_defect(message, rates, defect_rng)
            if defect is not None:
                resource = {UNPARSEABLE_DATE: "Observation" if message.kind == "oru" else "Patient"}.get(defect)
                output.defects.append(Defect(defect, WHSY.code, relpath, position, resource or message.message_type,
                                             message.control_id))
        tree.write(relpath, _render(messages, framed=relpath == ADT_FILE))
        output.files.append(relpath)
    counts[WHSY.code] = output.counts(len(registrations))
    defects.extend(output.defects)
    return output


def _render(messages: list[_Message], *, framed: bool) -> bytes:
    if framed:  # an MLLP capture: <VT> segments <FS><CR> per message
        return "".join(f"{_VT}{_CR.join(m.segments)}{_CR}{_FS}{_CR}" for m in messages).encode("utf-8")
    stamp = "20260101000000+0800"
    head = [f"FHS|^~\\&|WHSY-LIS|WHSY|MEDLLM|MEDLLM|{stamp}", f"BHS|^~\\&|WHSY-LIS|WHSY|MEDLLM|MEDLLM|{stamp}"]
    body = [segment for message in messages for segment in message.segments]
    tail = [f"BTS|{len(messages)}", "FTS|1"]
    return (_CR.join(head + body + tail) + _CR).encode("utf-8")
