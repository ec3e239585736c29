"""A note as a FHIR R4 Composition: one section per field, typed by LOINC, the items as an XHTML list.

Plain dicts (JSON for the REST service), validated once against ``fhir.resources.R4B`` (the R4 models the ingest
stage reads with: ``lib/ingest/fhir_r4.py``) so an invalid resource is caught where it is built.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from typing import Any

from medllm_pipelines.lib.common import codes
from medllm_pipelines.lib.scenarios.ehr.kinds import NoteKind

__all__ = ["build_composition", "validate_composition"]

XHTML = "http://www.w3.org/1999/xhtml"
EMPTY_REASON = "http://terminology.hl7.org/CodeSystem/list-empty-reason"
LANGUAGE_TAGS = {"en": "en", "zh": "zh-CN"}
TITLES = {"outpatient": {"en": "Outpatient note", "zh": "门诊病历"},
          "progress": {"en": "Daily progress note", "zh": "日常病程记录"},
          "operation": {"en": "Operation note", "zh": "手术记录"}}


def _narrative(items: Sequence[str]) -> dict[str, str]:
    rows = "".join(f"<li>{html.escape(item)}</li>" for item in items)
    return {"status": "generated", "div": f'<div xmlns="{XHTML}"><ul>{rows}</ul></div>'}


def build_composition(kind: NoteKind, language: str, fields: Mapping[str, Sequence[str]], *, date: str,
                      author_display: str, patient_ref: str | None = None, status: str = "preliminary",
                      terminology: Sequence[Mapping[str, Any]] = ()) -> dict[str, Any]:
    """The Composition of a note; empty fields become sections with ``emptyReason`` "unavailable" (FHIR forbids
    a section with neither text nor entries nor a reason). A diagnosis coded by the terminology step shows its
    ICD-10 code after the item in the section's narrative (``section.code`` is the LOINC section type)."""
    coded: dict[tuple[str, str], str] = {
        (str(t["field"]), str(t["text"])): str(t["code"]) for t in terminology
        if t.get("system") == "ICD-10" and t.get("code")}
    sections = []
    for name in kind.fields:
        code, display = kind.sections[name]
        section: dict[str, Any] = {
            "title": kind.headers[language][name],
            "code": {"coding": [{"system": codes.LOINC, "code": code, "display": display}]},
        }
        items = list(fields.get(name, ()))
        if items:
            shown = [item if (name, item) not in coded or coded[(name, item)] in item
                     else f"{item} [ICD-10 {coded[(name, item)]}]" for item in items]
            section["text"] = _narrative(shown)
        else:
            section["emptyReason"] = {"coding": [{"system": EMPTY_REASON, "code": "unavailable",
                                                  "display": "Unavailable"}]}
        sections.append(section)
    composition: dict[str, Any] = {
        "resourceType": "Composition",
        "language": LANGUAGE_TAGS[language],
        "status": status,
        "type": {"coding": [kind.type_coding]},
        "date": date,
        "author": [{"display": author_display}],
        "title": TITLES[kind.name][language],
        "confidentiality": "R",
        "section": sections,
    }
    if patient_ref:
        composition["subject"] = {"reference": f"Patient/{patient_ref}"}
    return composition


def validate_composition(composition: Mapping[str, Any]) -> None:
    """Raise (pydantic ``ValidationError``) if ``composition`` is not a valid R4 Composition."""
    from fhir.resources.R4B.composition import Composition

    Composition.model_validate(dict(composition))
