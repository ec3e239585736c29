"""Raw free text linked to persons by key or MRN, with each person's identities merged across institutions."""

from __future__ import annotations

from medllm_pipelines.lib.deidentify.text.corpus import dialogue_turns, identities_by_person, linked_texts
from medllm_pipelines_tests.lib.deidentify.small_text_corpus import DIALOGUES, NOTES, PERSONS, RAW_PATIENTS


def test_texts_are_linked_by_key_or_mrn_and_unreadable_dialogues_have_no_turns() -> None:
    texts = linked_texts(NOTES, DIALOGUES, PERSONS)
    assert [t.pseudonym for t in texts if t.kind == "note"][8] is None  # k404 is nobody
    assert [t.pseudonym for t in texts if t.kind == "dialogue"] == ["p_0", "p_1", "p_2"]
    assert dialogue_turns("not json") == [] and dialogue_turns('{"a": 1}') == []


def test_a_person_registered_twice_has_both_identities() -> None:
    identity = identities_by_person(RAW_PATIENTS, PERSONS)["p_0"]
    assert identity["name_zh"] == ["王建国"] and identity["name_en"] == ["Jianguo Wang"]
    assert set(identity["mrn"]) == {"MRN00000", "884213"}
