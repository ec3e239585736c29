"""The triage spec's dataset: accepted department labels joined to the de-identified dialogue text.

The label stage accepts a department per dialogue (``label/triage_labels``,
``item_key``); the de-identification stage releases the dialogue under the same
key (``deidentify/dialogues``, ``text_id``). The model reads what the patient
said (the patient turns): the assistant's questions are the same in every
dialogue and carry no department. Every accepted label is either a row of the
dataset or counted under the reason it is not (reconciliation).

Near-duplicate dialogues (the same text once case, width and spacing are
normalised: a re-sent or copied dialogue) get one key, so that the split keeps
them in one split, as it keeps a patient's dialogues together.
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from medllm_pipelines.lib.curate.splits import NEAR_DUPLICATE_KEY, SplitConfig, SplitOutcome, assign_split_rows, check_leakage

TRIAGE_SPEC_ID = "triage"  # lib/curate/specs/triage.yaml
TEXT_COLUMN = "text"
LABEL_COLUMN = "label"
ID_COLUMN = "text_id"
PATIENT_SPEAKER = "patient"
DATASET_COLUMNS = [ID_COLUMN, "patient_pseudonym", "institution", "language", LABEL_COLUMN, "basis", TEXT_COLUMN,
                   NEAR_DUPLICATE_KEY]
SPLIT_COLUMNS = [ID_COLUMN, "patient_pseudonym", "institution", "language", LABEL_COLUMN, NEAR_DUPLICATE_KEY, "split",
                 "fold"]
# Keys whose values must never be found in two splits of the triage splits table.
TRIAGE_LEAKAGE_KEYS = ("patient_pseudonym", NEAR_DUPLICATE_KEY, ID_COLUMN)

# Why an accepted label is not a row of the dataset.
NO_DIALOGUE = "no_deidentified_dialogue"  # withheld or unlinked at de-identification
PERSON_MISMATCH = "label_and_dialogue_persons_differ"
NO_PATIENT_TEXT = "no_patient_text"
LABEL_NOT_IN_SPEC = "label_not_in_spec_classes"
DUPLICATE_LABEL = "duplicate_label_for_dialogue"
REMOVAL_REASONS = (DUPLICATE_LABEL, NO_DIALOGUE, PERSON_MISMATCH, NO_PATIENT_TEXT, LABEL_NOT_IN_SPEC)

_SPACES = re.compile(r"\s+")


@dataclass(frozen=True)
class TriageDataset:
    """Labelled dialogue rows, and every accepted label that is not one of them, by reason."""

    frame: pd.DataFrame
    records_in: int
    removed: dict[str, int] = field(default_factory=dict)

    def as_metadata(self) -> dict[str, Any]:
        return {
            "records_in": self.records_in,
            "records_out": len(self.frame),
            **{f"removed[{reason}]": count for reason, count in self.removed.items()},
            "reconciled": self.records_in == len(self.frame) + sum(self.removed.values()),
            "persons": int(self.frame["patient_pseudonym"].nunique()) if len(self.frame) else 0,
        }


def patient_text(turns_json: str | None, fallback: str | None = None) -> str:
    """What the patient said, turn per line; a dialogue without speakers is read whole."""
    try:
        turns = json.loads(turns_json) if isinstance(turns_json, str) and turns_json else []
    except ValueError:
        turns = []
    if not isinstance(turns, list):
        turns = []
    spoken = [str(t.get("text", "")) for t in turns if isinstance(t, dict) and t.get("speaker") == PATIENT_SPEAKER]
    if not spoken and not any(isinstance(t, dict) and t.get("speaker") for t in turns):
        spoken = [str(t.get("text", "")) for t in turns if isinstance(t, dict)] or [str(fallback or "")]
    return "\n".join(s.strip() for s in spoken if s and s.strip())


def text_near_duplicate_key(text: str) -> str:
    """Hash of the text after NFKC, case folding and collapsing spaces: copies of one dialogue collide."""
    normalised = _SPACES.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()
    return "x" + hashlib.sha256(normalised.encode("utf-8")).hexdigest()[:16]


def build_triage_dataset(labels: pd.DataFrame, dialogues: pd.DataFrame, classes: Sequence[str] | None = None) -> TriageDataset:
    """Accepted labels joined to released dialogues on ``item_key`` = ``text_id``; removals counted by reason."""
    records_in = len(labels)
    duplicated = labels["item_key"].duplicated(keep="first")
    kept = labels[~duplicated]
    released = dialogues.drop_duplicates(ID_COLUMN)[[ID_COLUMN, "patient_pseudonym", "language", "turns_json", "text"]]
    joined = kept.merge(released.rename(columns={ID_COLUMN: "item_key", "patient_pseudonym": "dialogue_pseudonym"}),
                        on="item_key", how="left")
    no_dialogue = joined["dialogue_pseudonym"].isna()
    mismatch = ~no_dialogue & (joined["dialogue_pseudonym"].astype(str) != joined["patient_pseudonym"].astype(str))
    joined[TEXT_COLUMN] = [patient_text(t, f) if not missing else ""
                           for t, f, missing in zip(joined["turns_json"], joined["text"], no_dialogue, strict=True)]
    no_text = ~no_dialogue & ~mismatch & (joined[TEXT_COLUMN].str.strip() == "")
    unknown_class = (~joined[LABEL_COLUMN].isin(list(classes)) if classes else pd.Series(False, index=joined.index))
    unknown_class = unknown_class & ~no_dialogue & ~mismatch & ~no_text
    keep = ~(no_dialogue | mismatch | no_text | unknown_class)
    frame = joined[keep].rename(columns={"item_key": ID_COLUMN}).copy()
    frame["language"] = frame["language"].fillna("").astype(str)
    frame[NEAR_DUPLICATE_KEY] = frame[TEXT_COLUMN].map(text_near_duplicate_key)
    frame = frame[DATASET_COLUMNS].sort_values(ID_COLUMN).reset_index(drop=True)
    removed = {
        DUPLICATE_LABEL: int(duplicated.sum()),
        NO_DIALOGUE: int(no_dialogue.sum()),
        PERSON_MISMATCH: int(mismatch.sum()),
        NO_PATIENT_TEXT: int(no_text.sum()),
        LABEL_NOT_IN_SPEC: int(unknown_class.sum()),
    }
    return TriageDataset(frame, records_in, removed)


def split_texts(dataset: pd.DataFrame, config: SplitConfig, leakage_keys: Sequence[str] = TRIAGE_LEAKAGE_KEYS) -> SplitOutcome:
    """Patient-grouped, label-stratified splits of labelled texts; near-duplicate texts kept together; leakage checked."""
    assigned = assign_split_rows(dataset, config)
    splits = assigned[SPLIT_COLUMNS].sort_values(ID_COLUMN).reset_index(drop=True)
    return SplitOutcome(splits, check_leakage(splits, leakage_keys, label=LABEL_COLUMN), config, len(dataset))
