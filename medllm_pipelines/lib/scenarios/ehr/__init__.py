"""Scenario A2 (clause 6.2.2): generative electronic health records.

A dialogue or dictation becomes a structured note of one of three kinds (outpatient, inpatient daily progress,
operation), its diagnoses coded in ICD-10 and its drugs normalised, rendered as text and as a FHIR R4
Composition, editable until signed. Versioning and encryption at rest are the document store's
(``lib/scenarios/store.py``).
"""

from __future__ import annotations

from medllm_pipelines.lib.scenarios.ehr.drafter import (
    LANGUAGES,
    MAX_TEXT_CHARS,
    SOURCES,
    NoteDrafter,
    pattern_leak_check,
    render_fields,
)
from medllm_pipelines.lib.scenarios.ehr.kinds import KINDS, NOTE_KINDS, NoteKind
from medllm_pipelines.lib.scenarios.ehr.terminology import Terminology, load_terminology

__all__ = [
    "KINDS",
    "LANGUAGES",
    "MAX_TEXT_CHARS",
    "NOTE_KINDS",
    "SOURCES",
    "NoteDrafter",
    "NoteKind",
    "Terminology",
    "load_terminology",
    "pattern_leak_check",
    "render_fields",
]
