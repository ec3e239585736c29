"""Note pairs from de-identified recorded visits: every visit a pair or counted by reason; splits without leakage."""

from __future__ import annotations

import numpy as np
import orjson
import pandas as pd

from medllm_pipelines.lib.common.structured_note import parse_note, render_note
from medllm_pipelines.lib.curate.datasets_notes import (
    CONSENT_NOT_GRANTED,
    DUPLICATE_VISIT,
    EMPTY_TRANSCRIPT,
    NOTE_LEAKAGE_KEYS,
    RECORD_WITHOUT_NOTE_FIELDS,
    build_note_pairs,
    split_note_pairs,
)
from medllm_pipelines.lib.curate.splits import SplitConfig, check_leakage
from medllm_pipelines.lib.synth.consultations import build_consultations


def _released(pairs, persons: list[str]) -> pd.DataFrame:
    return pd.DataFrame({
        "text_id": [f"c_{n:04d}" for n in range(len(pairs))], "patient_pseudonym": persons,
        "institution": "rvic", "language": [p.language for p in pairs], "visit_kind": [p.kind for p in pairs],
        "department": [p.department for p in pairs],
        "turns_json": [orjson.dumps(list(p.turns)).decode() for p in pairs],
        "record_text": [render_note(p.note) for p in pairs],
    })


def test_every_released_visit_is_a_pair_or_counted_under_its_reason() -> None:
    pairs = build_consultations(8, np.random.default_rng(3), kinds=("outpatient_consultation", "ward_round"))
    visits = _released(pairs, [f"p_{n % 6}" for n in range(8)])
    visits.loc[1, "record_text"] = "Seen and examined. Doing well."  # a free-text record: no note field
    visits.loc[2, "turns_json"] = "[]"
    visits = pd.concat([visits, visits.iloc[[0]]], ignore_index=True)  # one visit delivered twice
    consent = pd.DataFrame({"patient_pseudonym": [f"p_{n}" for n in range(6)],
                            "consent_status": ["granted"] * 5 + ["withdrawn"]})
    built = build_note_pairs(visits, consent)
    meta = built.as_metadata()
    assert meta["records_in"] == 9 and meta["reconciled"] is True
    assert {r: meta[f"removed[{r}]"] for r in (DUPLICATE_VISIT, CONSENT_NOT_GRANTED, EMPTY_TRANSCRIPT,
                                               RECORD_WITHOUT_NOTE_FIELDS)} == {
        DUPLICATE_VISIT: 1, CONSENT_NOT_GRANTED: 1, EMPTY_TRANSCRIPT: 1, RECORD_WITHOUT_NOTE_FIELDS: 1}
    assert "p_5" not in set(built.frame["patient_pseudonym"])
    row = built.frame.set_index("text_id").loc["c_0000"]
    assert row["dialogue"] == pairs[0].dialogue_text()  # the transcript as the generator reads it
    assert parse_note(row["note"], language=row["language"]) == pairs[0].note
    assert row["note_fields"] == len(pairs[0].note.fields)


def test_splits_keep_a_patient_and_copies_of_a_transcript_in_one_split() -> None:
    pairs = build_consultations(60, np.random.default_rng(5))
    visits = _released(pairs, [f"p_{n // 2}" for n in range(60)])
    visits = pd.concat([visits, visits.iloc[[0]].assign(text_id="c_copy", patient_pseudonym="p_other")],
                       ignore_index=True)
    consent = pd.DataFrame({"patient_pseudonym": [*{*visits["patient_pseudonym"]}], "consent_status": "granted"})
    built = build_note_pairs(visits, consent)
    outcome = split_note_pairs(built.frame, SplitConfig(seed=11, stratify_by="language"))
    assert outcome.report.passed
    assert check_leakage(outcome.splits, NOTE_LEAKAGE_KEYS, label="language").passed
    split_of = outcome.splits.set_index("text_id")["split"]
    assert split_of["c_copy"] == split_of["c_0000"]
    assert set(outcome.splits["split"]) == {"train", "validation", "test"} and len(outcome.splits) == 61
