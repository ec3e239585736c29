"""The triage spec's dataset: accepted labels joined to de-identified dialogues, every removal counted, split by patient."""

from __future__ import annotations

import json

import pandas as pd

from medllm_pipelines.lib.curate.datasets_text import (
    DUPLICATE_LABEL,
    LABEL_NOT_IN_SPEC,
    NO_DIALOGUE,
    NO_PATIENT_TEXT,
    PERSON_MISMATCH,
    TRIAGE_LEAKAGE_KEYS,
    build_triage_dataset,
    patient_text,
    split_texts,
    text_near_duplicate_key,
)
from medllm_pipelines.lib.curate.spec import load_spec
from medllm_pipelines.lib.curate.splits import NEAR_DUPLICATE_KEY

CLASSES = ["Cardiology", "Dermatology"]


def _turns(*patient: str) -> str:
    turns = [{"speaker": "assistant", "text": "What brings you in?"}]
    turns += [{"speaker": "patient", "text": text} for text in patient]
    return json.dumps(turns)


def test_patient_text_keeps_what_the_patient_said_one_turn_per_line() -> None:
    assert patient_text(_turns("My chest hurts. ", "Two days.")) == "My chest hurts.\nTwo days."
    assert patient_text(json.dumps([{"text": "no speakers"}])) == "no speakers"
    assert patient_text("not json", fallback="the released text") == "the released text"


def test_copies_differing_in_case_width_and_spaces_share_a_near_duplicate_key() -> None:
    assert text_near_duplicate_key("Chest  PAIN\n") == text_near_duplicate_key("chest pain") \
        == text_near_duplicate_key("ｃｈｅｓｔ ｐａｉｎ")
    assert text_near_duplicate_key("chest pain") != text_near_duplicate_key("back pain")


def test_every_accepted_label_is_a_row_or_counted_under_its_reason() -> None:
    labels = pd.DataFrame({
        "item_key": ["d1", "d1", "d2", "d3", "d4", "d5"],
        "patient_pseudonym": ["p1", "p1", "p2", "p3", "p4", "p5"],
        "label": ["Cardiology", "Cardiology", "Dermatology", "Cardiology", "Cardiology", "Neurology"],
    }).assign(institution="rvic", basis="majority")
    dialogues = pd.DataFrame({
        "text_id": ["d1", "d3", "d4", "d5"],
        "patient_pseudonym": ["p1", "other", "p4", "p5"],
        "language": ["en", "en", "zh", "en"],
        "turns_json": [_turns("My chest is tight."), _turns("Rash."), json.dumps([{"speaker": "assistant", "text": "Hi"}]),
                       _turns("Headache.")],
        "text": ["", "", "", ""],
    })
    dataset = build_triage_dataset(labels, dialogues, CLASSES)
    assert dataset.frame["text_id"].tolist() == ["d1"] and dataset.frame["text"].tolist() == ["My chest is tight."]
    assert dataset.removed == {DUPLICATE_LABEL: 1, NO_DIALOGUE: 1, PERSON_MISMATCH: 1, NO_PATIENT_TEXT: 1,
                               LABEL_NOT_IN_SPEC: 1}
    meta = dataset.as_metadata()
    assert meta["reconciled"] is True and meta["records_in"] == 6 and meta["records_out"] == 1


def test_the_spec_split_keeps_patients_and_copies_in_one_split() -> None:
    rows = []
    for person in range(60):
        for visit in range(2):
            label = CLASSES[(person + visit) % 2]
            text = f"patient {person} visit {visit} {label}"
            rows.append({"text_id": f"d{person}-{visit}", "patient_pseudonym": f"p{person}", "institution": "hzsf",
                         "language": "en", "label": label, "text": text, NEAR_DUPLICATE_KEY: text_near_duplicate_key(text)})
    copy = dict(rows[0], text_id="copy", patient_pseudonym="p-other")  # the same text under another patient
    frame = pd.DataFrame([*rows, copy])
    outcome = split_texts(frame, load_spec("triage").split_config)
    splits = outcome.splits
    assert outcome.report.passed, outcome.report.verdict
    for key in TRIAGE_LEAKAGE_KEYS:
        assert (splits.groupby(key)["split"].nunique() == 1).all(), key
    assert set(splits["split"]) == {"train", "validation", "test"}
    assert splits.loc[splits["text_id"] == "copy", "split"].item() == splits.loc[splits["text_id"] == "d0-0", "split"].item()
