"""The note generator's dataset: each de-identified recorded visit as (transcript, the doctor's signed note).

``deidentify/consultations`` releases the transcript turns and the signed record of a visit under one keyed id
(``text_id``). A pair is the transcript as the generator reads it (``transcript``: one ``Speaker: text`` line per
turn) and the record as written; the record must read back into at least one note field (``parse_note``), or
the visit is counted under the reason it is not a pair. Only persons whose research consent is the spec's
(``deidentify/consent_registry``) are kept. Every released visit is a pair or counted under one reason
(reconciliation), and pairs are split patient-grouped with copies of one transcript kept together.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson
import pandas as pd

from medllm_pipelines.lib.common.structured_note import parse_note, transcript
from medllm_pipelines.lib.curate.datasets_text import text_near_duplicate_key
from medllm_pipelines.lib.curate.splits import NEAR_DUPLICATE_KEY, SplitConfig, SplitOutcome, assign_split_rows, check_leakage

NOTE_SPEC_ID = "note_generator"  # lib/curate/specs/note_generator.yaml
ID_COLUMN = "text_id"
DATASET_COLUMNS = [ID_COLUMN, "patient_pseudonym", "institution", "language", "visit_kind", "dialogue", "note",
                   "note_fields", NEAR_DUPLICATE_KEY]
SPLIT_COLUMNS = [ID_COLUMN, "patient_pseudonym", "institution", "language", "visit_kind", NEAR_DUPLICATE_KEY, "split",
                 "fold"]
NOTE_LEAKAGE_KEYS = ("patient_pseudonym", NEAR_DUPLICATE_KEY, ID_COLUMN)

# Why a released visit is not a pair.
DUPLICATE_VISIT = "duplicate_visit"
CONSENT_NOT_GRANTED = "consent_not_granted"
EMPTY_TRANSCRIPT = "empty_transcript"
RECORD_WITHOUT_NOTE_FIELDS = "record_without_note_fields"  # the signed record reads back into no field
REMOVAL_REASONS = (DUPLICATE_VISIT, CONSENT_NOT_GRANTED, EMPTY_TRANSCRIPT, RECORD_WITHOUT_NOTE_FIELDS)


@dataclass(frozen=True)
class NotePairs:
    """Transcript -> note pairs, and every released visit that is not one, by reason."""

    frame: pd.DataFrame
    records_in: int
    removed: dict[str, int] = field(default_factory=dict)

    def as_metadata(self) -> dict[str, Any]:
        frame = self.frame
        return {
            "records_in": self.records_in,
            "records_out": len(frame),
            **{f"removed[{reason}]": count for reason, count in self.removed.items()},
            "reconciled": self.records_in == len(frame) + sum(self.removed.values()),
            "persons": int(frame["patient_pseudonym"].nunique()) if len(frame) else 0,
            "note_fields_per_pair": round(float(frame["note_fields"].mean()), 2) if len(frame) else 0.0,
        }


def _turns(turns_json: Any) -> list[dict[str, str]]:
    try:
        turns = orjson.loads(turns_json) if isinstance(turns_json, str) and turns_json else []
    except orjson.JSONDecodeError:
        return []
    return [t for t in turns if isinstance(t, dict) and str(t.get("text") or "").strip()] if isinstance(turns, list) else []


def build_note_pairs(visits: pd.DataFrame, consent_registry: pd.DataFrame, consent: str = "granted") -> NotePairs:
    """Pairs from ``deidentify/consultations`` for persons whose consent is ``consent``; removals by reason."""
    records_in = len(visits)
    duplicated = visits[ID_COLUMN].duplicated(keep="first")
    rows = visits[~duplicated]
    granted = set(consent_registry.loc[consent_registry["consent_status"] == consent, "patient_pseudonym"])
    consented = rows["patient_pseudonym"].isin(granted)
    rows = rows[consented].reset_index(drop=True)
    languages = rows["language"].fillna("").astype(str).where(lambda s: s.isin(["en", "zh"]), "en")
    dialogue = [transcript(_turns(t), language) for t, language in zip(rows["turns_json"], languages, strict=True)]
    records = rows["record_text"].fillna("").astype(str)
    fields = [len(parse_note(text, language=language).fields) if text.strip() else 0
              for text, language in zip(records, languages, strict=True)]
    empty = pd.Series([not d.strip() for d in dialogue], index=rows.index)
    no_fields = ~empty & (pd.Series(fields, index=rows.index) == 0)
    keep = ~(empty | no_fields)
    frame = pd.DataFrame({
        ID_COLUMN: rows[ID_COLUMN].astype(str), "patient_pseudonym": rows["patient_pseudonym"].astype(str),
        "institution": rows["institution"].astype(str), "language": languages,
        "visit_kind": rows["visit_kind"].fillna("unspecified").astype(str) if "visit_kind" in rows else "unspecified",
        "dialogue": dialogue, "note": records, "note_fields": fields,
    })[keep].copy()
    frame[NEAR_DUPLICATE_KEY] = frame["dialogue"].map(text_near_duplicate_key)
    frame = frame[DATASET_COLUMNS].sort_values(ID_COLUMN).reset_index(drop=True)
    removed = {DUPLICATE_VISIT: int(duplicated.sum()), CONSENT_NOT_GRANTED: int((~consented).sum()),
               EMPTY_TRANSCRIPT: int(empty.sum()), RECORD_WITHOUT_NOTE_FIELDS: int(no_fields.sum())}
    return NotePairs(frame, records_in, removed)


def split_note_pairs(pairs: pd.DataFrame, config: SplitConfig) -> SplitOutcome:
    """Patient-grouped splits (stratified as the spec declares); copies of one transcript share a split."""
    assigned = assign_split_rows(pairs, config)
    splits = assigned[SPLIT_COLUMNS].sort_values(ID_COLUMN).reset_index(drop=True)
    stratum = config.stratify_by if config.stratify_by in splits.columns else None
    return SplitOutcome(splits, check_leakage(splits, NOTE_LEAKAGE_KEYS, label=stratum), config, len(pairs))
