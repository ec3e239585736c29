"""The clinical_entities spec's dataset: accepted brat entities realigned to the de-identified dialogue text.

The label stage accepts SYMPTOM/DISEASE/DRUG (and PERSON/PHONE identifier)
spans with offsets into the raw brat text (speaker prefixes, every turn, real
names). The model reads the patient turns of the de-identified dialogue
(``deidentify/dialogues``), where the prefixes are gone and surrogates have
shifted the offsets. Each clinical span is realigned by its surface string:
the spans of a dialogue are taken in document order and each is searched in
the de-identified text from the end of the previous realigned span on (the
shift only grows, never reorders). A span whose surface string is missing,
was replaced, or overlaps one already placed is dropped and counted.
Identifier spans are never labels: they are counted as excluded. The brat
document and the released dialogue carry different keyed ids (``d_``/``i_``,
unlinkable without the key): a document is matched to the dialogue of the same
person whose text holds the most of its surface strings.

Accounting: every accepted entity row is a realigned span or counted under a
reason (``records_in == spans_out + sum(dropped)``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from medllm_pipelines.lib.curate.datasets_text import ID_COLUMN, TEXT_COLUMN, patient_text, text_near_duplicate_key
from medllm_pipelines.lib.curate.splits import NEAR_DUPLICATE_KEY, SplitConfig, SplitOutcome, assign_split_rows, check_leakage

ENTITY_SPEC_ID = "clinical_entities"  # lib/curate/specs/clinical_entities.yaml
ENTITY_TYPES = ("SYMPTOM", "DISEASE", "DRUG")
IDENTIFIER_TYPES = ("PERSON", "PHONE")
SPANS_COLUMN = "entities_json"  # [[start, end, type], ...] in the de-identified patient text
DATASET_COLUMNS = [ID_COLUMN, "document_key", "patient_pseudonym", "institution", "language", TEXT_COLUMN, SPANS_COLUMN, "n_entities",
                   NEAR_DUPLICATE_KEY]
SPLIT_COLUMNS = [ID_COLUMN, "patient_pseudonym", "institution", "language", "n_entities", NEAR_DUPLICATE_KEY, "split",
                 "fold"]
ENTITY_LEAKAGE_KEYS = ("patient_pseudonym", NEAR_DUPLICATE_KEY, ID_COLUMN)

# Why an accepted entity row is not a realigned span.
IDENTIFIER_SPAN = "identifier_type_never_a_label"
OTHER_TYPE = "type_not_in_spec"
NO_DIALOGUE = "no_deidentified_dialogue_of_the_person"
NO_MATCH = "no_dialogue_of_the_person_holds_the_surfaces"
PERSON_MISMATCH = "document_spans_of_several_persons"
NO_SURFACE = "no_surface_text"
NOT_FOUND = "surface_not_found_after_deidentification"
OVERLAP = "overlaps_a_realigned_span"
DROP_REASONS = (IDENTIFIER_SPAN, OTHER_TYPE, NO_DIALOGUE, NO_MATCH, PERSON_MISMATCH, NO_SURFACE, NOT_FOUND, OVERLAP)

Span = tuple[int, int, str]


@dataclass(frozen=True)
class EntityDataset:
    """One row per dialogue with realigned spans; every accepted entity row not realigned, by reason."""

    frame: pd.DataFrame
    records_in: int
    dropped: dict[str, int] = field(default_factory=dict)
    spans_by_type: dict[str, int] = field(default_factory=dict)

    @property
    def spans_out(self) -> int:
        return int(sum(self.spans_by_type.values()))

    def as_metadata(self) -> dict[str, Any]:
        return {
            "records_in": self.records_in,
            "spans_out": self.spans_out,
            "dialogues_out": len(self.frame),
            **{f"dropped[{reason}]": count for reason, count in self.dropped.items()},
            **{f"spans[{kind}]": count for kind, count in self.spans_by_type.items()},
            "reconciled": self.records_in == self.spans_out + sum(self.dropped.values()),
            "persons": int(self.frame["patient_pseudonym"].nunique()) if len(self.frame) else 0,
        }


def realign_spans(target: str, spans: Sequence[tuple[int, int, str, str | None]]) -> tuple[list[Span], dict[str, int]]:
    """Place ``(start, end, type, surface)`` spans of a source text in ``target`` by their surface strings.

    Spans are taken in source order; each is searched from the end of the
    previous placed span (monotonic alignment), then anywhere not yet taken,
    nearest to where the previous shift puts it. Returns the placed spans and
    the dropped counts by reason (NO_SURFACE, NOT_FOUND, OVERLAP).
    """
    placed: list[Span] = []
    dropped = {NO_SURFACE: 0, NOT_FOUND: 0, OVERLAP: 0}
    cursor, shift = 0, 0
    for start, end, kind, surface in sorted(spans, key=lambda s: (s[0], s[1])):
        if not isinstance(surface, str) or not surface.strip():
            dropped[NO_SURFACE] += 1
            continue
        found = target.find(surface, cursor)
        if found < 0:  # out of order in the source (overlapping annotations): nearest free occurrence
            expected, candidates, at = start - shift, [], target.find(surface)
            while at >= 0:
                candidates.append(at)
                at = target.find(surface, at + 1)
            free = [c for c in candidates if not any(c < e and s < c + len(surface) for s, e, _ in placed)]
            if not candidates:
                dropped[NOT_FOUND] += 1
                continue
            if not free:
                dropped[OVERLAP] += 1
                continue
            found = min(free, key=lambda c: (abs(c - expected), c))
        new = (found, found + len(surface), kind)
        if any(new[0] < e and s < new[1] for s, e, _ in placed):
            dropped[OVERLAP] += 1
            continue
        placed.append(new)
        cursor, shift = max(cursor, new[1]), start - found
    return sorted(placed), dropped


def _best_dialogue(candidates: pd.DataFrame, spans: list[tuple[int, int, str, str | None]]) -> tuple[Any, str, list[Span], dict[str, int]] | None:
    """The person's dialogue whose patient text holds the most of the document's surfaces (ties: fewest lost, id)."""
    best = None
    for text_id, row in candidates.sort_index().iterrows():
        text = patient_text(row.get("turns_json"), row.get("text"))
        placed, lost = realign_spans(text, spans)
        score = (len(placed), -sum(lost.values()), str(text_id))
        if placed and (best is None or score[:2] > best[0][:2]):
            best = (score, text_id, text, placed, lost)
    return None if best is None else best[1:]


def build_entity_dataset(entities: pd.DataFrame, dialogues: pd.DataFrame,
                         entity_types: Sequence[str] = ENTITY_TYPES) -> EntityDataset:
    """Accepted entities (label/clinical_entities) realigned to the released dialogues' patient text.

    The label stage keys a brat document (``d_...``) apart from the released
    dialogue (``i_...``), both by keyed hashes that cannot be joined without the
    key; the document is matched to the dialogue of the same person
    (``patient_pseudonym``) whose de-identified patient text holds the most of
    its surface strings in order.
    """
    records_in = len(entities)
    dropped = dict.fromkeys(DROP_REASONS, 0)
    kinds = entities["entity_type"].astype(str)
    dropped[IDENTIFIER_SPAN] = int(kinds.isin(IDENTIFIER_TYPES).sum())
    wanted = kinds.isin(list(entity_types))
    dropped[OTHER_TYPE] = int((~wanted & ~kinds.isin(IDENTIFIER_TYPES)).sum())
    clinical = entities[wanted]
    released = dialogues.drop_duplicates(ID_COLUMN).set_index(ID_COLUMN)
    by_person = {str(p): group for p, group in released.groupby(released["patient_pseudonym"].astype(str))}
    rows, by_type, matched = [], dict.fromkeys(entity_types, 0), set()
    for item_key, group in clinical.groupby("item_key", sort=True):
        persons = set(group["patient_pseudonym"].astype(str))
        if len(persons) != 1:
            dropped[PERSON_MISMATCH] += len(group)
            continue
        candidates = by_person.get(persons.pop())
        if candidates is None:
            dropped[NO_DIALOGUE] += len(group)
            continue
        best = _best_dialogue(candidates[~candidates.index.isin(matched)],
                              [(int(r.start), int(r.end), str(r.entity_type), r.text) for r in group.itertuples(index=False)])
        if best is None:
            dropped[NO_MATCH] += len(group)
            continue
        text_id, text, spans, lost = best
        matched.add(text_id)
        for reason, count in lost.items():
            dropped[reason] += count
        for _, _, kind in spans:
            by_type[kind] += 1
        dialogue = released.loc[text_id]
        rows.append({ID_COLUMN: text_id, "document_key": item_key, "patient_pseudonym": str(dialogue["patient_pseudonym"]),
                     "institution": str(group["institution"].iloc[0]), "language": str(dialogue.get("language") or ""),
                     TEXT_COLUMN: text, SPANS_COLUMN: json.dumps([list(s) for s in spans]), "n_entities": len(spans),
                     NEAR_DUPLICATE_KEY: text_near_duplicate_key(text)})
    frame = pd.DataFrame(rows, columns=DATASET_COLUMNS).sort_values(ID_COLUMN).reset_index(drop=True)
    return EntityDataset(frame, records_in, dropped, by_type)


def split_entity_dialogues(dataset: pd.DataFrame, config: SplitConfig) -> SplitOutcome:
    """Patient-grouped splits stratified by language; copies of a dialogue together; leakage checked."""
    assigned = assign_split_rows(dataset, config)
    splits = assigned[SPLIT_COLUMNS].sort_values(ID_COLUMN).reset_index(drop=True)
    return SplitOutcome(splits, check_leakage(splits, ENTITY_LEAKAGE_KEYS, label="language"), config, len(dataset))
