"""Symptom/disease/drug recognition (issue 11 item 2): spans realigned to the de-identified text, BIO tags that
round-trip, exact-span metrics on a hand-made example, the dictionary baseline, a tiny seeded tagger that learns,
and a spec naming an unknown network refused with the spec named."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from medllm_pipelines.lib.curate.datasets_entities import (
    IDENTIFIER_SPAN,
    NO_DIALOGUE,
    NO_MATCH,
    NOT_FOUND,
    build_entity_dataset,
    realign_spans,
)
from medllm_pipelines.lib.train.text.spans import DictionaryTagger, bio_labels, decode_bio, encode_bio, span_metrics


def test_spans_are_realigned_after_prefixes_and_surrogates_shift_them() -> None:
    raw = "Doctor: Hello.\nPatient: I am Jonathan Smithers and I have a cough and take metformin.\n"
    deid = "I am Al Li and I have a cough and take metformin."
    spans = [(raw.index("Jonathan"), raw.index("Jonathan") + 17, "PERSON", None),
             (raw.index("cough"), raw.index("cough") + 5, "SYMPTOM", "cough"),
             (raw.index("metformin"), raw.index("metformin") + 9, "DRUG", "metformin"),
             (raw.index("Hello"), raw.index("Hello") + 5, "SYMPTOM", "Hello")]
    clinical = [s for s in spans if s[2] != "PERSON"]
    placed, dropped = realign_spans(deid, clinical)
    assert [(deid[a:b], k) for a, b, k in placed] == [("cough", "SYMPTOM"), ("metformin", "DRUG")]
    assert dropped[NOT_FOUND] == 1  # "Hello" is in a doctor turn: not in the patient text


def test_repeated_surfaces_map_in_document_order() -> None:
    placed, _ = realign_spans("cough, then more cough", [(40, 45, "SYMPTOM", "cough"), (70, 75, "SYMPTOM", "cough")])
    assert placed == [(0, 5, "SYMPTOM"), (17, 22, "SYMPTOM")]


def test_the_dataset_matches_the_persons_dialogue_reconciles_and_never_labels_identifiers() -> None:
    turns = json.dumps([{"speaker": "doctor", "text": "Hi"}, {"speaker": "patient", "text": "I am Al, I have a rash"}])
    other = json.dumps([{"speaker": "patient", "text": "my knee hurts"}])
    dialogues = pd.DataFrame({"text_id": ["i_b", "i_a"], "patient_pseudonym": ["p1", "p1"], "language": ["en", "en"],
                              "turns_json": [turns, other], "text": ["", ""]})
    entities = pd.DataFrame({
        "item_key": ["d_1", "d_1", "d_1", "d_2", "d_3"], "patient_pseudonym": ["p1", "p1", "p1", "p2", "p1"],
        "institution": ["H"] * 5, "entity_type": ["PERSON", "SYMPTOM", "DRUG", "SYMPTOM", "SYMPTOM"],
        "start": [15, 37, 50, 1, 9], "end": [25, 41, 55, 4, 14],
        "text": [None, "rash", "aspirin", "itch", "fever"], "basis": ["m"] * 5})
    dataset = build_entity_dataset(entities, dialogues)
    meta = dataset.as_metadata()
    assert meta["reconciled"] and meta["spans_out"] == 1 and meta[f"dropped[{IDENTIFIER_SPAN}]"] == 1
    assert meta[f"dropped[{NO_DIALOGUE}]"] == 1 and meta[f"dropped[{NOT_FOUND}]"] == 1
    assert meta[f"dropped[{NO_MATCH}]"] == 1  # d_3's "fever" is in none of p1's dialogues
    row = dataset.frame.iloc[0]
    assert (row["text_id"], row["document_key"]) == ("i_b", "d_1")
    assert row["text"] == "I am Al, I have a rash" and json.loads(row["entities_json"]) == [[18, 22, "SYMPTOM"]]


def test_bio_encode_decode_round_trip() -> None:
    text = "bad cough and high blood pressure"
    offsets = [(0, 3), (4, 9), (10, 13), (14, 18), (19, 24), (25, 33)]
    tags = encode_bio(offsets, [(0, 9, "SYMPTOM"), (14, 33, "DISEASE")])
    assert tags == ["B-SYMPTOM", "I-SYMPTOM", "O", "B-DISEASE", "I-DISEASE", "I-DISEASE"]
    assert decode_bio(tags) == [(0, 2, "SYMPTOM"), (3, 6, "DISEASE")]
    assert decode_bio(["I-DRUG", "B-DRUG", "I-SYMPTOM"]) == [(0, 1, "DRUG"), (1, 2, "DRUG"), (2, 3, "SYMPTOM")]
    assert bio_labels(["SYMPTOM"]) == ["O", "B-SYMPTOM", "I-SYMPTOM"]
    assert text[offsets[3][0]:offsets[5][1]] == "high blood pressure"


def test_span_metrics_on_a_hand_made_example() -> None:
    truth = [[(0, 2, "SYMPTOM"), (3, 4, "DRUG")], [(1, 2, "DISEASE")]]
    guess = [[(0, 2, "SYMPTOM"), (3, 5, "DRUG")], [(1, 2, "DISEASE"), (4, 5, "SYMPTOM")]]
    m = span_metrics(truth, guess, ["SYMPTOM", "DISEASE", "DRUG"])
    assert m["span_precision"] == pytest.approx(2 / 4) and m["span_recall"] == pytest.approx(2 / 3)
    assert m["span_f1"] == pytest.approx(2 * 0.5 * (2 / 3) / (0.5 + 2 / 3))
    assert m["span_f1_DISEASE"] == 1.0 and m["span_f1_DRUG"] == 0.0 and m["span_recall_SYMPTOM"] == 1.0


def test_the_dictionary_takes_the_longest_match() -> None:
    tagger = DictionaryTagger(["chest pain today", "pain"], [[(0, 10, "SYMPTOM")], [(0, 4, "SYMPTOM")]])
    assert tagger.tag("Chest pain and pain") == [(0, 10, "SYMPTOM"), (15, 19, "SYMPTOM")]


# --- training ------------------------------------------------------------------------------------
SYMPTOMS = ["cough", "fever", "rash", "headache", "咳嗽", "发烧", "头痛", "皮疹"]
DISEASES = ["asthma", "diabetes", "高血压", "感冒"]
DRUGS = ["aspirin", "metformin", "降压药", "布洛芬"]


def _frame(n: int = 180, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        s, d, g = SYMPTOMS[rng.integers(8)], DISEASES[rng.integers(4)], DRUGS[rng.integers(4)]
        parts, spans = [], []
        for piece, kind in (("i have ", None), (s, "SYMPTOM"), (" because of ", None), (d, "DISEASE"),
                            (" so i take ", None), (g, "DRUG")):
            start = sum(len(p) for p in parts)
            parts.append(piece)
            if kind:
                spans.append([start, start + len(piece), kind])
        split = "train" if i < 120 else "validation" if i < 150 else "test"
        rows.append({"text": "".join(parts), "entities_json": json.dumps(spans), "language": "en", "split": split,
                     "patient_pseudonym": f"p{i}"})
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def tokenizer():
    from medllm_pipelines.lib.train.text.tokenizer import train_tokenizer

    frame = _frame()
    corpus = frame.assign(source="dialogues")[["text", "patient_pseudonym", "language", "source"]]
    return train_tokenizer(corpus).tokenizer


def test_a_tiny_seeded_tagger_learns_and_predicts_spans_in_a_new_process_shape(tokenizer, tmp_path) -> None:
    from medllm_pipelines.lib.train.text.entities import EntityTaggerPredictor, train_entity_tagger
    from medllm_pipelines.lib.train.text.training import TextTrainConfig

    config = TextTrainConfig(d_model=32, n_heads=2, n_layers=1, dim_feedforward=64, dropout=0.0, max_length=24,
                             lr=0.01, batch_size=16, max_epochs=12, early_stopping_patience=12, seed=3)
    result = train_entity_tagger(_frame(), tokenizer, ["SYMPTOM", "DISEASE", "DRUG"], config, tmp_path, spec_id="t")
    assert result.test_metrics["test_span_f1"] >= 0.9, result.test_metrics
    assert result.baseline_metrics["baseline_test_span_f1"] > 0.5
    losses = [h["train_loss"] for h in result.history]
    assert losses[-1] < 0.5 * losses[0]
    found = EntityTaggerPredictor.load(result.model_dir).entities(["i have fever because of asthma so i take aspirin"])
    assert {(e["text"], e["type"]) for e in found[0]} == {("fever", "SYMPTOM"), ("asthma", "DISEASE"),
                                                          ("aspirin", "DRUG")}
    again = train_entity_tagger(_frame(), tokenizer, ["SYMPTOM", "DISEASE", "DRUG"], config, tmp_path / "b",
                                spec_id="t")
    assert again.test_metrics == result.test_metrics  # seeded and deterministic on the CPU


def test_an_unknown_network_is_refused_naming_the_spec() -> None:
    import dataclasses

    from medllm_pipelines.lib.curate.spec import load_spec
    from medllm_pipelines.lib.train.optim import UnknownComponentError
    from medllm_pipelines.lib.train.text.entity_runs import entity_training_config

    spec = load_spec("clinical_entities")
    assert entity_training_config(spec).max_length == 128
    bad = dataclasses.replace(spec, network={**spec.network, "family": "bilstm_crf"})
    with pytest.raises(UnknownComponentError, match="clinical_entities"):
        entity_training_config(bad)
    with pytest.raises(ValueError, match="clinical_entities.*PERSON"):
        entity_training_config(dataclasses.replace(spec, target={**spec.target, "entity_types": ["PERSON"]}))
