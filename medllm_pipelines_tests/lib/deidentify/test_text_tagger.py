"""The learned tagger and the combined detector on held-out synthetic notes and dialogues."""

from __future__ import annotations

import json

import numpy as np
import pytest

from medllm_pipelines.lib.deidentify.text import (
    Tagger,
    build_detector,
    evaluate_detector,
    normalise,
    perturbed,
    score_spans,
    train_tagger,
)
from medllm_pipelines_tests.lib.deidentify.conftest import TAGGER_SEED, DeidHospital

TARGET_RECALL = 0.99
TARGET_TYPES = ("NAME", "ID_NUMBER", "MRN", "PHONE", "ADDRESS")


def test_split_is_by_person(deid_hospital: DeidHospital) -> None:
    train_people = {t.person_index for t in deid_hospital.train}
    test_people = {t.person_index for t in deid_hospital.test}
    assert train_people and test_people and not train_people & test_people
    assert {t.kind for t in deid_hospital.test} == {"note", "dialogue"}


def test_gold_spans_cover_the_identities(deid_hospital: DeidHospital) -> None:
    identity = {row["person_index"]: row for row in deid_hospital.identities}
    for text in deid_hospital.texts:
        covered = {text.text[s.start:s.end] for s in text.spans}
        row = identity[text.person_index]
        assert row["phone"] in covered or row["phone"] not in text.text
        name = row["name_zh"] if text.language == "zh" and row["name_zh"] else row["name_en"]
        assert name in covered or name not in text.text


def test_held_out_recall_meets_the_target(deid_hospital: DeidHospital, trained_tagger: Tagger) -> None:
    detector = build_detector(tagger=trained_tagger)
    test = deid_hospital.test
    report = evaluate_detector(detector, [t.text for t in test], [t.spans for t in test])
    for label in TARGET_TYPES:
        assert report[label]["gold"] > 0, label
        assert report[label]["overlap"]["recall"] >= TARGET_RECALL, (label, report[label])
        assert report[label]["exact"]["recall"] >= TARGET_RECALL, (label, report[label])
        assert report[label]["leaked_chars"] == 0, label
    assert report["_micro"]["overlap"]["precision"] >= 0.95
    # the report is metadata: counts and ratios only, no text of any note
    dumped = json.dumps(report, ensure_ascii=False)
    assert not any(row["phone"] in dumped or (row["name_zh"] or row["name_en"]) in dumped
                   for row in deid_hospital.identities)


def test_recall_holds_on_perturbed_held_out_text(deid_hospital: DeidHospital, trained_tagger: Tagger) -> None:
    texts, gold = perturbed([t.text for t in deid_hospital.test], [t.spans for t in deid_hospital.test], seed=3)
    assert any(any("\uff10" <= ch <= "\uff19" for ch in t) for t in texts)  # full-width digits are in there
    report = evaluate_detector(build_detector(tagger=trained_tagger), texts, gold)
    for label in TARGET_TYPES:
        assert report[label]["overlap"]["recall"] >= TARGET_RECALL, (label, report[label])


def test_the_tagger_learns_identifiers_on_its_own(deid_hospital: DeidHospital, trained_tagger: Tagger) -> None:
    test = deid_hospital.test
    predicted = trained_tagger.spans_many([normalise(t.text).text for t in test])
    report = score_spans(predicted, [t.spans for t in test])
    for label in ("NAME", "PHONE", "ID_NUMBER", "ADDRESS"):
        assert report[label]["overlap"]["recall"] >= 0.95, (label, report[label])
    # and out of template: a name it has seen the shape of, in a descriptor-like string
    joined = " ".join(t.text for t in test)
    assert trained_tagger.meta["training_positions"] > len(joined) // 2


def test_training_is_deterministic_by_seed(deid_hospital: DeidHospital, trained_tagger: Tagger, tmp_path) -> None:
    train = deid_hospital.train[:60]
    first = train_tagger([t.text for t in train], [t.spans for t in train], seed=TAGGER_SEED)
    second = train_tagger([t.text for t in train], [t.spans for t in train], seed=TAGGER_SEED)
    other = train_tagger([t.text for t in train], [t.spans for t in train], seed=TAGGER_SEED + 1)
    assert first.save(tmp_path / "a.npz") == second.save(tmp_path / "b.npz")
    assert first.save(tmp_path / "a.npz") != other.save(tmp_path / "c.npz")


def test_saved_tagger_predicts_the_same(deid_hospital: DeidHospital, trained_tagger: Tagger, tmp_path) -> None:
    digest = trained_tagger.save(tmp_path / "tagger.npz")
    loaded = Tagger.load(tmp_path / "tagger.npz")
    texts = [normalise(t.text).text for t in deid_hospital.test[:20]]
    assert loaded.spans_many(texts) == trained_tagger.spans_many(texts)
    assert len(digest) == 64 and loaded.meta == trained_tagger.meta
    assert loaded.digest == trained_tagger.digest  # the version reported in metadata survives a round trip


def test_train_rejects_mismatched_gold() -> None:
    with pytest.raises(ValueError):
        train_tagger(["a", "b"], [[]], seed=0)


def test_scoring_conventions() -> None:
    gold = [[(0, 5, "NAME"), (10, 21, "PHONE")]]
    partial = [[(0, 3, "NAME"), (10, 21, "PHONE"), (30, 35, "NAME")]]
    report = score_spans(partial, gold)
    assert report["NAME"]["exact"]["recall"] == 0.0
    assert report["NAME"]["overlap"]["recall"] == 1.0
    assert report["NAME"]["overlap"]["precision"] == 0.5
    assert report["NAME"]["leaked_chars"] == 2
    assert report["PHONE"]["exact"]["f1"] == 1.0
    assert np.isclose(report["_micro"]["overlap"]["recall"], 1.0)
