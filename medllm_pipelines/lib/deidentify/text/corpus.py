"""The raw zone's free text as the text assets see it: notes and dialogues linked to persons, with their identities.

Notes are linked by (institution, patient key), dialogues by (institution,
MRN); a text whose person is unknown has no pseudonym and is counted, never
released. Identities are merged over every raw record of a person (a person
registered at two institutions has two names), for silver labels and for
the detector's known identifiers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
import pandas as pd

from medllm_pipelines.lib.deidentify.persons import PersonIndex
from medllm_pipelines.lib.deidentify.text.silver import merge_identities
from medllm_pipelines.lib.deidentify.text.spans import Span

NOTE_COLUMNS = ["patient_key", "language", "text", "institution", "resource_key"]
DIALOGUE_COLUMNS = ["dialogue_id", "patient_mrn", "language", "turn_count", "turns_json", "institution"]
Identity = dict[str, list[str]]


@dataclass
class LinkedText:
    """One raw note or dialogue (turns joined by newlines); ``spans``: its silver labels once projected."""

    kind: str  # note | dialogue
    pseudonym: str | None
    language: str
    text: str
    spans: tuple[Span, ...] = ()


def dialogue_turns(turns_json: str | None) -> list[dict[str, Any]]:
    """A dialogue's turns; an unreadable dialogue has none."""
    try:
        turns = orjson.loads(turns_json or "[]")
    except orjson.JSONDecodeError:
        return []
    return [t for t in turns if isinstance(t, dict)] if isinstance(turns, list) else []


def linked_texts(notes: pd.DataFrame, dialogues: pd.DataFrame, persons: PersonIndex) -> list[LinkedText]:
    """Every raw note and dialogue, pseudonym None when unlinked."""
    out = [LinkedText("note", persons.by_key.get((row.institution, row.patient_key)), row.language,
                      row.text if isinstance(row.text, str) else "")
           for row in notes[["institution", "patient_key", "language", "text"]].itertuples(index=False)]
    out += [LinkedText("dialogue", persons.by_mrn.get((row.institution, row.patient_mrn)), row.language,
                       "\n".join(str(t.get("text", "")) for t in dialogue_turns(row.turns_json)))
            for row in dialogues[["institution", "patient_mrn", "language", "turns_json"]].itertuples(index=False)]
    return out


def identities_by_person(patients: pd.DataFrame, persons: PersonIndex) -> dict[str, Identity]:
    """Pseudonym -> the person's identity fields over all their raw patient records."""
    records: dict[str, list[dict[str, Any]]] = {}
    for row in patients.to_dict("records"):
        person = persons.of_record(row.get("institution"), row.get("resource_key"), row.get("mrn"))
        if person is not None:
            records.setdefault(person, []).append(row)
    return {person: merge_identities(rows) for person, rows in records.items()}
