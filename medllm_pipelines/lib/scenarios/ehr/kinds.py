"""The three note kinds of clause 6.2.2: their fields, headers, LOINC codes, and how the generator's fields map
onto them.

Why a mapping: the note generator (``lib/train/generative``) is trained on outpatient-style notes (chief
complaint, history, findings, assessment, medications, plan). A daily progress note is written SOAP-style and an
operation note has its own sections (pre/post-operative diagnosis, procedure, anaesthesia, blood loss...), so the
generator's fields are mapped onto the kind's and the fields it cannot know (what the surgeon did, the blood loss)
are left empty for the clinician to fill in.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from medllm_pipelines.lib.common import codes
from medllm_pipelines.lib.common.structured_note import FIELDS as GENERATOR_FIELDS
from medllm_pipelines.lib.common.structured_note import HEADERS as OUTPATIENT_HEADERS

__all__ = ["NOTE_KINDS", "NoteKind", "note_kind"]

NOTE_KINDS = ("outpatient", "progress", "operation")


@dataclass(frozen=True)
class NoteKind:
    """One kind of note: its FHIR Composition type, fields in order, section codes and headers."""

    name: str
    loinc: str
    display: str
    fields: tuple[str, ...]
    sections: Mapping[str, tuple[str, str]]  # field -> (LOINC code, display)
    headers: Mapping[str, Mapping[str, str]]  # language -> field -> header
    from_generator: Mapping[str, tuple[str, ...]]  # field -> generator fields whose items it takes, in order
    diagnosis_fields: tuple[str, ...]
    medication_fields: tuple[str, ...]

    @property
    def type_coding(self) -> dict[str, str]:
        return {"system": codes.LOINC, "code": self.loinc, "display": self.display}

    def map_generator_fields(self, generated: Mapping[str, Sequence[str]]) -> dict[str, list[str]]:
        """The kind's fields filled from the generator's (every field present, empty when nothing maps)."""
        return {name: [item for source in self.from_generator.get(name, ()) for item in generated.get(source, ())]
                for name in self.fields}


_PLAN = ("18776-5", "Plan of care note")
_MEDICATIONS = ("10160-0", "History of Medication use Narrative")

OUTPATIENT = NoteKind(
    name="outpatient", loinc="11488-4", display="Consult note",
    fields=GENERATOR_FIELDS,
    sections={"chief_complaint": ("10154-3", "Chief complaint Narrative - Reported"),
              "history": ("10164-2", "History of Present illness Narrative"),
              "findings": ("29545-1", "Physical findings Narrative"),
              "assessment": ("51848-0", "Evaluation note"),
              "medications": _MEDICATIONS, "plan": _PLAN},
    headers=OUTPATIENT_HEADERS,
    from_generator={name: (name,) for name in GENERATOR_FIELDS},
    diagnosis_fields=("assessment",), medication_fields=("medications", "plan"),
)

PROGRESS = NoteKind(
    name="progress", loinc="11506-3", display="Progress note",
    fields=("subjective", "objective", "assessment", "medications", "plan"),
    sections={"subjective": ("61150-9", "Subjective Narrative"), "objective": ("61149-1", "Objective Narrative"),
              "assessment": ("51848-0", "Evaluation note"), "medications": _MEDICATIONS, "plan": _PLAN},
    headers={"en": {"subjective": "Subjective", "objective": "Objective", "assessment": "Assessment",
                    "medications": "Medications", "plan": "Plan"},
             "zh": {"subjective": "病情记录", "objective": "查体及检查", "assessment": "诊断及分析",
                    "medications": "用药", "plan": "诊疗计划"}},
    from_generator={"subjective": ("chief_complaint", "history"), "objective": ("findings",),
                    "assessment": ("assessment",), "medications": ("medications",), "plan": ("plan",)},
    diagnosis_fields=("assessment",), medication_fields=("medications", "plan"),
)

OPERATION = NoteKind(
    name="operation", loinc="11504-8", display="Surgical operation note",
    fields=("preoperative_diagnosis", "postoperative_diagnosis", "indications", "procedure", "anaesthesia",
            "findings", "complications", "estimated_blood_loss", "specimens", "medications", "plan"),
    sections={"preoperative_diagnosis": ("10219-4", "Surgical operation note preoperative Dx Narrative"),
              "postoperative_diagnosis": ("10218-6", "Surgical operation note postoperative Dx Narrative"),
              "indications": ("59768-2", "Procedure indications [interpretation] Narrative"),
              "procedure": ("29554-3", "Procedure Narrative"),
              "anaesthesia": ("59774-0", "Procedure anesthesia Narrative"),
              "findings": ("59776-5", "Procedure findings Narrative"),
              "complications": ("55109-3", "Complications Document"),
              "estimated_blood_loss": ("59770-8", "Procedure estimated blood loss Narrative"),
              "specimens": ("59773-2", "Procedure specimens taken Narrative"),
              "medications": _MEDICATIONS, "plan": _PLAN},
    headers={"en": {"preoperative_diagnosis": "Pre-operative diagnosis",
                    "postoperative_diagnosis": "Post-operative diagnosis", "indications": "Indications",
                    "procedure": "Procedure", "anaesthesia": "Anaesthesia", "findings": "Findings",
                    "complications": "Complications", "estimated_blood_loss": "Estimated blood loss",
                    "specimens": "Specimens", "medications": "Medications", "plan": "Post-operative plan"},
             "zh": {"preoperative_diagnosis": "术前诊断", "postoperative_diagnosis": "术后诊断",
                    "indications": "手术指征", "procedure": "手术名称", "anaesthesia": "麻醉方式",
                    "findings": "术中所见", "complications": "并发症", "estimated_blood_loss": "术中出血量",
                    "specimens": "标本", "medications": "用药", "plan": "术后处理"}},
    # the generator writes no procedure, anaesthesia, complications, blood loss or specimens: left empty
    from_generator={"preoperative_diagnosis": ("assessment",), "indications": ("chief_complaint", "history"),
                    "findings": ("findings",), "medications": ("medications",), "plan": ("plan",)},
    diagnosis_fields=("preoperative_diagnosis", "postoperative_diagnosis"), medication_fields=("medications", "plan"),
)

KINDS: dict[str, NoteKind] = {kind.name: kind for kind in (OUTPATIENT, PROGRESS, OPERATION)}


def note_kind(name: str) -> NoteKind:
    return KINDS[name]
