"""Notes and dialogues released without their persons' identifiers, every row accounted for."""

from __future__ import annotations

import orjson

from medllm_pipelines.lib.deidentify.text import build_detector
from medllm_pipelines.lib.deidentify.text.corpus import identities_by_person
from medllm_pipelines.lib.deidentify.text.release import deidentify_dialogues, deidentify_notes
from medllm_pipelines_tests.lib.deidentify.small_text_corpus import (
    DIALOGUES,
    NAMES,
    NOTES,
    PERSONS,
    RAW_PATIENTS,
    fake_hmac,
)


def test_notes_are_released_without_their_persons_identifiers_and_reconcile() -> None:
    released = deidentify_notes(NOTES, RAW_PATIENTS, PERSONS, identities_by_person(RAW_PATIENTS, PERSONS),
                                build_detector(), fake_hmac)
    meta = released.as_metadata()
    assert (meta["records_in"], meta["records_out"]) == (10, 8) and meta["reconciled"] is True
    assert (meta["removed[unlinked_person]"], meta["removed[empty_text]"]) == (1, 1)
    text = "\n".join(released.frame["text"])
    assert not [n for n in NAMES if n in text] and "13800138000" not in text
    assert released.frame["text_id"].str.startswith("n_").all() and released.frame["text_id"].is_unique


def test_dialogues_keep_their_turns_and_one_surrogate_per_person() -> None:
    released = deidentify_dialogues(DIALOGUES, RAW_PATIENTS, PERSONS, identities_by_person(RAW_PATIENTS, PERSONS),
                                    build_detector(), fake_hmac)
    assert released.as_metadata()["removed[no_readable_turns]"] == 2 and len(released.frame) == 1
    turns = orjson.loads(released.frame["turns_json"].iloc[0])
    assert [t["speaker"] for t in turns] == ["patient", "nurse"] and "王建国" not in released.frame["text"].iloc[0]
