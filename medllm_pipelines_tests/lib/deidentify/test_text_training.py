"""The PHI tagger trained on the raw zone's texts, split by person, stored and loaded encrypted."""

from __future__ import annotations

import orjson
import pytest

from medllm_pipelines.lib.deidentify.text.corpus import identities_by_person, linked_texts
from medllm_pipelines.lib.deidentify.text.training import load_tagger, store_tagger, train_phi_tagger
from medllm_pipelines_tests.lib.deidentify.small_text_corpus import (
    DIALOGUES,
    NOTES,
    PERSONS,
    RAW_PATIENTS,
    MemoryZone,
)


@pytest.fixture(scope="module")
def trained():
    texts = linked_texts(NOTES, DIALOGUES, PERSONS)
    return train_phi_tagger(texts, identities_by_person(RAW_PATIENTS, PERSONS), generated=100, test_fraction=0.3)


def test_the_tagger_is_split_by_person_and_scored_on_the_held_out_ones(trained) -> None:
    assert trained.test and not {t.pseudonym for t in trained.train} & {t.pseudonym for t in trained.test}
    meta = trained.as_metadata()
    assert meta["held_out_measured"] is True and meta["texts_unlinked_or_empty"] == 3
    assert meta["texts_train"] + meta["texts_test"] == meta["texts_in"] - 3
    assert meta["conformance_text"].startswith("not present")
    assert "王建国" not in orjson.dumps(meta).decode()


def test_too_few_persons_train_on_everything_without_held_out_figures() -> None:
    texts = [t for t in linked_texts(NOTES, DIALOGUES, PERSONS) if t.pseudonym == "p_0"]
    alone = train_phi_tagger(texts, identities_by_person(RAW_PATIENTS, PERSONS), generated=50)
    assert alone.report is None and alone.test == [] and alone.as_metadata()["held_out_measured"] is False


def test_the_stored_tagger_is_the_one_loaded(trained) -> None:
    zone = MemoryZone()
    sha = store_tagger(zone, "deidentify_phi_tagger", trained.tagger, seed=0, run_id="r1")
    assert zone.tables["deidentify_phi_tagger"]["object_sha256"].tolist() == [sha]
    assert load_tagger(zone, "deidentify_phi_tagger").digest == trained.tagger.digest
