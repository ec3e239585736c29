"""Notes and dialogues released without their persons' identifiers, every row accounted for."""

from __future__ import annotations

import orjson
import pandas as pd

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


def test_consultations_release_transcript_and_record_with_one_surrogate_per_person() -> None:
    from medllm_pipelines.lib.deidentify.text.release import deidentify_consultations

    visits = pd.DataFrame({
        "institution": ["hzsf", "hzsf", "hzsf"], "visit_id": ["v0", "v1", "v2"],
        "patient_mrn": ["MRN00000", "MRN00001", "MRN99999"], "visit_kind": ["outpatient_consultation"] * 3,
        "language": ["zh"] * 3, "department": ["Respiratory Medicine"] * 3, "turn_count": [2, 2, 1],
        "turns_json": [orjson.dumps([{"speaker": "patient", "text": "我叫王建国，咳嗽3天了。"},
                                     {"speaker": "doctor", "text": "体温37.8℃。"}]).decode(),
                       orjson.dumps([{"speaker": "patient", "text": "咳嗽。"},
                                     {"speaker": "doctor", "text": "好的。"}]).decode(),
                       orjson.dumps([{"speaker": "patient", "text": "头痛。"}]).decode()],
        "record_text": ["主诉：咳嗽3天\n现病史：王建国诉咳嗽\n诊断：急性支气管炎 (J20.9)", "主诉：咳嗽1周", "主诉：头痛"],
    })
    released = deidentify_consultations(visits, RAW_PATIENTS, PERSONS, identities_by_person(RAW_PATIENTS, PERSONS),
                                        build_detector(), fake_hmac)
    meta = released.as_metadata()
    assert (meta["records_in"], meta["records_out"], meta["removed[unlinked_person]"]) == (3, 2, 1)
    assert meta["reconciled"] is True
    first = released.frame.iloc[0]
    assert "王建国" not in first["text"] and "王建国" not in first["record_text"]
    # the name said in the talk and written in the record becomes the same surrogate in both
    surrogate = first["record_text"].split("现病史：")[1].split("诉咳嗽")[0]
    assert surrogate and surrogate in first["text"]
    # clinical content is left as written: the note's fields, values and code survive
    assert "主诉：咳嗽3天" in first["record_text"] and "(J20.9)" in first["record_text"] and "37.8" in first["text"]
    assert list(released.frame.columns[:6]) == ["text_id", "patient_pseudonym", "institution", "language",
                                                "visit_kind", "department"]
    assert released.frame["text_id"].str.startswith("c_").all()
