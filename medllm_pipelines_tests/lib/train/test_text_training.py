"""The Transformer-encoder text classifier: seeded and deterministic, a folder that predicts alike in a new
process, and bad specs (unknown network, optimiser) or a foreign tokenizer refused with the spec named."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest

from medllm_pipelines.lib.train.optim import UnknownComponentError
from medllm_pipelines.lib.train.text.predictor import TextClassifierPredictor
from medllm_pipelines.lib.train.text.tokenizer import TOKENIZER_FILE, TokenizerMismatchError, train_tokenizer
from medllm_pipelines.lib.train.text.training import TextTrainConfig, train_text_classifier

CLASSES = ["Cardiology", "Dermatology", "Respiratory Medicine"]
WORDS = {
    "Cardiology": (["chest pain", "palpitations", "胸口闷痛", "心慌"], ["on exertion", "at night", "活动后", "一阵一阵"]),
    "Dermatology": (["itchy rash", "red spots", "起红疹子", "很痒"], ["on my arms", "after soap", "身上", "脸上"]),
    "Respiratory Medicine": (["cough", "phlegm", "咳嗽", "发烧"], ["for days", "with fever", "有黄痰", "喉咙痛"]),
}
CONFIG = TextTrainConfig(d_model=16, n_heads=2, n_layers=1, dim_feedforward=32, dropout=0.0, max_length=24, lr=0.01,
                         batch_size=16, max_epochs=6, early_stopping_patience=6, seed=5)


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for i in range(150):
        label = CLASSES[i % 3]
        symptoms, details = WORDS[label]
        text = f"{symptoms[rng.integers(4)]} {details[rng.integers(4)]}"
        split = "train" if i < 100 else "validation" if i < 125 else "test"
        rows.append({"text": text, "label": label, "language": "zh" if any(ord(c) > 255 for c in text) else "en",
                     "split": split, "patient_pseudonym": f"p{i}"})
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def tokenizer(frame):
    return train_tokenizer(frame.assign(source="dialogues")).tokenizer


@pytest.fixture(scope="module")
def trained(frame, tokenizer, tmp_path_factory):
    return train_text_classifier(frame, tokenizer, CLASSES, CONFIG, tmp_path_factory.mktemp("text_model"), spec_id="triage")


def test_training_learns_the_classes_and_evaluates_on_the_test_split(trained) -> None:
    assert trained.n_train == 100 and trained.n_val == 25 and trained.n_test == 25
    assert trained.test_metrics["test_accuracy"] > 0.8 > trained.baseline_metrics["baseline_test_accuracy"]
    assert len(trained.history) == trained.epochs_run and {"train_loss", "val_loss"} <= set(trained.history[-1])
    assert set(trained.test_accuracy_by_language) == {"en", "zh"}


def test_training_is_seeded_and_deterministic(frame, tokenizer, trained, tmp_path) -> None:
    again = train_text_classifier(frame, tokenizer, CLASSES, CONFIG, tmp_path, spec_id="triage")
    first = (trained.model_dir / "network_state.pt")
    assert TextClassifierPredictor.load(again.model_dir).spec["sha256"] == \
        TextClassifierPredictor.load(trained.model_dir).spec["sha256"]
    assert again.history == trained.history and first.read_bytes() == (again.model_dir / "network_state.pt").read_bytes()


def test_the_saved_folder_predicts_as_trained(frame, trained, tmp_path) -> None:
    copy = tmp_path / "copied"
    shutil.copytree(trained.model_dir, copy)  # what a serving process receives
    predictor = TextClassifierPredictor.load(copy)
    test = frame[frame["split"] == "test"]
    probabilities = predictor.predict_proba(test["text"].tolist())
    assert probabilities.shape == (len(test), 3) and np.allclose(probabilities.sum(axis=1), 1.0)
    accuracy = float(np.mean(np.array(predictor.predict(test["text"].tolist())) == test["label"].to_numpy()))
    assert accuracy == pytest.approx(trained.test_metrics["test_accuracy"])
    top = predictor.top_k(["胸口闷痛 活动后"], k=3)[0]
    assert [c for c, _ in top][0] == "Cardiology" and len(top) == 3


def test_a_foreign_tokenizer_is_refused_naming_the_spec(trained, tmp_path) -> None:
    other = train_tokenizer(pd.DataFrame({"text": ["completely other words here"] * 5, "patient_pseudonym": ["x"] * 5,
                                          "language": ["en"] * 5, "source": ["notes"] * 5}))
    path = other.save(tmp_path / "other")
    with pytest.raises(TokenizerMismatchError, match="spec triage"):
        TextClassifierPredictor.load(trained.model_dir, tokenizer_path=path)
    assert (trained.model_dir / TOKENIZER_FILE).is_file()


@pytest.mark.parametrize(("network", "training", "kind"), [
    ({"family": "bert_from_the_internet"}, {}, "network"),
    ({"family": "transformer_encoder"}, {"optimizer": "lion"}, "optimizer"),
])
def test_an_unknown_network_or_optimiser_is_refused_naming_the_spec(network, training, kind: str) -> None:
    with pytest.raises(UnknownComponentError, match="triage") as refused:
        TextTrainConfig.from_spec("triage", network, training)
    assert refused.value.kind == kind


def test_unknown_keys_and_an_impossible_architecture_are_refused_naming_the_spec() -> None:
    with pytest.raises(ValueError, match="spec triage: unknown training/network keys"):
        TextTrainConfig.from_spec("triage", {"family": "transformer_encoder", "n_experts": 8}, {})
    with pytest.raises(ValueError, match="spec triage: .*multiple of n_heads"):
        TextTrainConfig.from_spec("triage", {"family": "transformer_encoder", "d_model": 30, "n_heads": 4}, {})


def test_the_hardware_mapping_is_carried_and_an_unknown_strategy_is_refused_naming_the_spec() -> None:
    network = {"family": "transformer_encoder"}
    assert TextTrainConfig.from_spec("triage", network, {"hardware": {"compile": False}}).hardware == {"compile": False}
    with pytest.raises(UnknownComponentError, match="spec triage.*strategy 'mpi'"):
        TextTrainConfig.from_spec("triage", network, {"hardware": {"strategy": "mpi"}})
