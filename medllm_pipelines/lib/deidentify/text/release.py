"""De-identified notes, dialogues and recorded consultations: every detected identifier replaced by a consistent
per-patient surrogate.

Rows whose person is unknown or whose text is empty are counted by reason,
never released. Surrogates are keyed per patient (Vault HMAC) and redrawn
when they would spell a real patient's identifier; dates move by the
patient's offset (the one the DICOM de-identification uses). ``text_id`` is a
keyed hash of the raw row, so a dialogue's equals the ``item_key`` its
triage annotations carry.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import pandas as pd

from medllm_pipelines.lib.deidentify.persons import PersonIndex
from medllm_pipelines.lib.deidentify.text.corpus import Identity, dialogue_turns
from medllm_pipelines.lib.deidentify.text.detector import Detector
from medllm_pipelines.lib.deidentify.text.silver import (
    AvoidingSurrogates,
    HmacMany,
    counts_by_label,
    deidentify_turns,
    known_identifiers,
    patient_surrogates,
)
from medllm_pipelines.lib.deidentify.text.spans import ENTITY_TYPES, Span
from medllm_pipelines.lib.deidentify.text.surrogates import replace_spans
from medllm_pipelines.lib.deidentify.text.training import DETECT_BATCH
from medllm_pipelines.lib.security.leak_scan import identifier_needles

DATE_SHIFT = "per patient, keyed, +-365 days (the DICOM offset)"


@dataclass
class TextRelease:
    """A released text table and its reconciliation: ``records_in`` = rows out + removed by reason."""

    frame: pd.DataFrame
    records_in: int
    removed: dict[str, int]
    surrogates: dict[str, AvoidingSurrogates]

    def as_metadata(self) -> dict[str, Any]:
        frame = self.frame
        replaced = {label: int(frame[f"replaced_{label.lower()}"].sum()) if len(frame) else 0
                    for label in ENTITY_TYPES}
        return {
            "records_in": self.records_in,
            "records_out": len(frame),
            **{f"removed[{reason}]": count for reason, count in self.removed.items()},
            "reconciled": self.records_in == len(frame) + sum(self.removed.values()),
            "persons": int(frame["patient_pseudonym"].nunique()) if len(frame) else 0,
            "spans_replaced_by_type": replaced,
            "texts_without_identifier_found": int((frame["spans_replaced"] == 0).sum()) if len(frame) else 0,
            "surrogates_redrawn_to_avoid_real_identifiers": sum(s.redrawn for s in self.surrogates.values()),
            "date_shift": DATE_SHIFT,
        }


def surrogates_avoiding(patients: pd.DataFrame, hmac_many: HmacMany,
                        pseudonyms: list[str]) -> dict[str, AvoidingSurrogates]:
    """Each patient's surrogate factory, never drawing a value that is a real patient's identifier."""
    forbidden = {value for values in identifier_needles(patients).values() for value in values}
    return patient_surrogates(pseudonyms, hmac_many, forbidden=forbidden)


def _counts_columns(spans_per_text: Sequence[Sequence[Span]]) -> dict[str, list[int]]:
    counts = [counts_by_label(spans, ENTITY_TYPES) for spans in spans_per_text]
    columns = {f"replaced_{label.lower()}": [c[label] for c in counts] for label in ENTITY_TYPES}
    columns["spans_replaced"] = [len(spans) for spans in spans_per_text]
    return columns


def _released(kept: pd.DataFrame, text_ids: list[str], **columns: Any) -> pd.DataFrame:
    return pd.DataFrame({
        "text_id": text_ids,
        "patient_pseudonym": kept["patient_pseudonym"].astype(str),
        "institution": kept["institution"].astype(str),
        "language": kept["language"].fillna("").astype(str),
        **columns,
    })


def deidentify_notes(notes: pd.DataFrame, patients: pd.DataFrame, persons: PersonIndex,
                     identities: dict[str, Identity], detector: Detector, hmac_many: HmacMany) -> TextRelease:
    """Every linked, non-empty note with its identifiers replaced (batched detection)."""
    from medllm_pipelines.lib.label.importers import keyed_ids

    person = [persons.by_key.get((i, k)) for i, k in zip(notes["institution"], notes["patient_key"], strict=True)]
    notes = notes.assign(patient_pseudonym=person)
    has_text = notes["text"].map(lambda t: isinstance(t, str) and bool(t.strip()))
    linked = notes["patient_pseudonym"].notna()
    removed = {"unlinked_person": int((~linked).sum()), "empty_text": int((linked & ~has_text).sum())}
    kept = notes[linked & has_text].reset_index(drop=True)
    surrogates = surrogates_avoiding(patients, hmac_many, kept["patient_pseudonym"].tolist())
    texts = kept["text"].tolist()
    known = [known_identifiers(identities.get(p, {})) for p in kept["patient_pseudonym"]]
    spans_per_text: list[list[Span]] = []
    for begin in range(0, len(texts), DETECT_BATCH):
        spans_per_text += detector.detect_many(texts[begin:begin + DETECT_BATCH], known=known[begin:begin + DETECT_BATCH])
    clean = [replace_spans(text, spans, surrogates[p])
             for text, spans, p in zip(texts, spans_per_text, kept["patient_pseudonym"], strict=True)]
    raw_ids = [f"note:{i}:{k}" for i, k in zip(kept["institution"], kept["resource_key"], strict=True)]
    frame = _released(kept, keyed_ids(raw_ids, hmac_many, "n_"), text=clean, **_counts_columns(spans_per_text))
    return TextRelease(frame, len(notes), removed, surrogates)


def _deidentify_conversations(frame: pd.DataFrame, patients: pd.DataFrame, persons: PersonIndex,
                              identities: dict[str, Identity], detector: Detector, hmac_many: HmacMany, *,
                              id_column: str, raw_prefix: str, key_prefix: str,
                              record_column: str | None = None, keep_columns: Sequence[str] = ()) -> TextRelease:
    """Every linked conversation with readable turns, de-identified turn by turn (detection over the whole,
    ``record_column`` included as one more passage, so that a name said in the talk is found in the record too)."""
    from medllm_pipelines.lib.label.importers import keyed_ids

    person = [persons.by_mrn.get((i, m)) for i, m in zip(frame["institution"], frame["patient_mrn"], strict=True)]
    frame = frame.assign(patient_pseudonym=person)
    turns = frame["turns_json"].map(dialogue_turns)
    linked, has_turns = frame["patient_pseudonym"].notna(), turns.map(bool)
    removed = {"unlinked_person": int((~linked).sum()), "no_readable_turns": int((linked & ~has_turns).sum())}
    keep = linked & has_turns
    kept, kept_turns = frame[keep].reset_index(drop=True), turns[keep].tolist()
    records = kept[record_column].fillna("").astype(str).tolist() if record_column else [None] * len(kept)
    surrogates = surrogates_avoiding(patients, hmac_many, kept["patient_pseudonym"].tolist())
    clean_turns, clean_records, spans_per_text = [], [], []
    for dialogue, record, pseudonym in zip(kept_turns, records, kept["patient_pseudonym"], strict=True):
        passages = [str(t.get("text", "")) for t in dialogue] + ([record] if record is not None else [])
        texts, spans = deidentify_turns(passages, detector=detector, surrogate_for=surrogates[pseudonym],
                                        known=known_identifiers(identities.get(pseudonym, {})))
        if record is not None:
            clean_records.append(texts.pop())
        clean_turns.append([{"speaker": str(t.get("speaker", "")), "text": x} for t, x in zip(dialogue, texts, strict=True)])
        spans_per_text.append(spans)
    raw_ids = [f"{raw_prefix}:{i}:{d}" for i, d in zip(kept["institution"], kept[id_column], strict=True)]
    extra = {column: kept[column].astype(str).tolist() for column in keep_columns}
    released = _released(
        kept, keyed_ids(raw_ids, hmac_many, key_prefix), **extra,
        turn_count=[len(t) for t in clean_turns],
        text=["\n".join(turn["text"] for turn in t) for t in clean_turns],
        turns_json=[orjson.dumps(t).decode("utf-8") for t in clean_turns],
        **({record_column: clean_records} if record_column else {}),
        **_counts_columns(spans_per_text),
    )
    return TextRelease(released, len(frame), removed, surrogates)


def deidentify_dialogues(dialogues: pd.DataFrame, patients: pd.DataFrame, persons: PersonIndex,
                         identities: dict[str, Identity], detector: Detector, hmac_many: HmacMany) -> TextRelease:
    """Every linked dialogue with readable turns, de-identified turn by turn (detection over the whole)."""
    return _deidentify_conversations(dialogues, patients, persons, identities, detector, hmac_many,
                                     id_column="dialogue_id", raw_prefix="triage", key_prefix="i_")


def deidentify_consultations(visits: pd.DataFrame, patients: pd.DataFrame, persons: PersonIndex,
                             identities: dict[str, Identity], detector: Detector, hmac_many: HmacMany) -> TextRelease:
    """Every linked recorded visit: its transcript turn by turn and the doctor's signed record, de-identified with
    the same per-patient surrogates (a name in both becomes the same surrogate in both)."""
    return _deidentify_conversations(visits, patients, persons, identities, detector, hmac_many,
                                     id_column="visit_id", raw_prefix="consultation", key_prefix="c_",
                                     record_column="record_text", keep_columns=("visit_kind", "department"))
