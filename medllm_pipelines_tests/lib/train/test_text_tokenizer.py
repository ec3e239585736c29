"""The locally trained sub-word tokenizer: deterministic, Chinese and English, held-out persons kept out, mismatches refused."""

from __future__ import annotations

import pandas as pd
import pytest

from medllm_pipelines.lib.train.text.tokenizer import (
    UNK,
    TokenizerMismatchError,
    check_tokenizer_matches,
    held_out_persons,
    load_tokenizer,
    tokenizer_sha256,
    train_tokenizer,
)

ZH = ["最近总是口渴，晚上要起来好几次上厕所。", "胸口闷痛，爬楼梯的时候更明显。", "咳嗽有黄痰，还发烧。",
      "膝盖疼，上下楼梯的时候特别明显。", "身上起了红疹子，很痒。"]
EN = ["I'm thirsty all the time and I pee constantly.", "There's a squeezing pain in my chest when I climb stairs.",
      "I've had a cough with yellow phlegm and a fever.", "My knee hurts going up and down stairs.",
      "I've got itchy red patches on my arms."]


def _corpus(extra: list[tuple[str, str, str]] = ()) -> pd.DataFrame:
    rows = [(text, f"p{i % 12}", "zh") for i, text in enumerate(ZH * 6)]
    rows += [(text, f"q{i % 12}", "en") for i, text in enumerate(EN * 6)]
    rows += list(extra)
    frame = pd.DataFrame(rows, columns=["text", "patient_pseudonym", "language"])
    return frame.assign(source="dialogues")


def test_the_same_texts_give_the_same_tokenizer_in_any_row_order() -> None:
    corpus = _corpus()
    first = train_tokenizer(corpus)
    second = train_tokenizer(corpus.sample(frac=1.0, random_state=3).reset_index(drop=True))
    assert tokenizer_sha256(first.tokenizer) == tokenizer_sha256(second.tokenizer) == first.report.sha256
    assert first.tokenizer.get_vocab() == second.tokenizer.get_vocab()


def test_chinese_is_one_token_per_character_and_english_one_per_lowercase_word() -> None:
    tokenizer = train_tokenizer(_corpus()).tokenizer
    assert tokenizer.encode("胸口闷痛", add_special_tokens=False).tokens == ["胸", "口", "闷", "痛"]
    assert tokenizer.encode("My CHEST hurts.", add_special_tokens=False).tokens == ["my", "chest", "hurts", "."]
    # NFKC: full-width Latin letters read as ASCII
    assert tokenizer.encode("ｃｈｅｓｔ", add_special_tokens=False).ids == tokenizer.encode("chest", add_special_tokens=False).ids


def test_held_out_persons_never_reach_the_training_and_measure_the_unknown_rate(tmp_path) -> None:
    secret = ("zyxwvq glorbfen", "held-1", "en")
    trained = train_tokenizer(_corpus([secret, ("罕见字甪甬", "held-1", "zh")]), excluded_persons={"held-1"})
    vocabulary = trained.tokenizer.get_vocab()
    assert not any("zyxw" in piece or "glorb" in piece for piece in vocabulary)
    assert "甪" not in vocabulary and "甬" not in vocabulary
    report = trained.report
    assert report.excluded_persons == 1 and report.validation_texts >= 2 and report.unknown_token_rate > 0
    assert report.as_metadata()["excluded_persons"] == 1
    path = trained.save(tmp_path)
    assert tokenizer_sha256(load_tokenizer(path)) == report.sha256


def test_a_word_only_one_person_wrote_gets_no_token() -> None:
    trained = train_tokenizer(_corpus([("my glorbfen itches", "q1", "en"), ("glorbfen again", "q1", "en")]))
    assert "glorbfen" not in trained.tokenizer.get_vocab()
    assert trained.tokenizer.encode("glorbfen", add_special_tokens=False).tokens == [UNK]


def test_the_splits_table_names_the_held_out_persons() -> None:
    splits = pd.DataFrame({"patient_pseudonym": ["a", "b", "c", "d"], "split": ["train", "validation", "test", "train"]})
    assert held_out_persons(splits) == {"b", "c"}
    assert held_out_persons(pd.DataFrame()) == set()


def test_a_tokenizer_that_does_not_fit_the_model_is_refused_naming_the_spec() -> None:
    tokenizer = train_tokenizer(_corpus()).tokenizer
    with pytest.raises(TokenizerMismatchError, match="spec triage: the tokenizer has"):
        check_tokenizer_matches(tokenizer, tokenizer.get_vocab_size() + 1, spec_id="triage")
    with pytest.raises(TokenizerMismatchError, match="spec triage: the tokenizer is not the one"):
        check_tokenizer_matches(tokenizer, tokenizer.get_vocab_size(), spec_id="triage", expected_sha256="0" * 64)
    check_tokenizer_matches(tokenizer, tokenizer.get_vocab_size(), spec_id="triage",
                            expected_sha256=tokenizer_sha256(tokenizer))
