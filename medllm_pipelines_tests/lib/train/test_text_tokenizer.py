"""The locally trained sub-word tokenizer: deterministic, Chinese and English, held-out persons kept out, mismatches refused."""

from __future__ import annotations

import dataclasses
import json

import pandas as pd
import pytest

from medllm_pipelines.lib.train.text.tokenizer import (
    UNK,
    TokenizerConfig,
    TokenizerMismatchError,
    check_tokenizer_matches,
    held_out_persons,
    load_tokenizer,
    load_tokenizer_config,
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


# WordPiece fallback (issue 11): whole words as WordLevel, plus "##" endings for words never seen whole.

STEMS = ["I have a cough and a headache.", "My cough is dry and my knee hurts.", "A headache every morning, then a cough.",
         "I'm coughing at night and my legs ache.", "Coughing wakes me up, the headaches too.", "My chest feels tight.",
         "It feels worse when I'm walking and sleeping.", "The sickness and the tiredness are worse."]


def _wordpiece(**changes) -> TokenizerConfig:
    return dataclasses.replace(load_tokenizer_config(), model="wordpiece", **changes)


def _pieces_corpus() -> pd.DataFrame:
    rows = [(text, f"e{i % 10}", "en") for i, text in enumerate(STEMS * 5)]
    rows += [(text, f"z{i % 10}", "zh") for i, text in enumerate(ZH * 4)]
    return pd.DataFrame(rows, columns=["text", "patient_pseudonym", "language"]).assign(source="dialogues")


@pytest.mark.parametrize("changes", [{}, {"split_inflections": True}, {"character_fallback": True}])
def test_wordpiece_gives_a_byte_identical_tokenizer_in_any_row_order(changes) -> None:
    corpus = _pieces_corpus()
    first = train_tokenizer(corpus, _wordpiece(**changes))
    for seed in (1, 2):
        again = train_tokenizer(corpus.sample(frac=1.0, random_state=seed).reset_index(drop=True), _wordpiece(**changes))
        assert again.tokenizer.to_str(pretty=False) == first.tokenizer.to_str(pretty=False)
    assert json.loads(first.tokenizer.to_str())["model"]["type"] == "WordPiece"


def test_an_unseen_inflected_word_reads_as_its_stem_and_ending_not_unknown() -> None:
    corpus = _pieces_corpus()
    wordlevel = train_tokenizer(corpus, dataclasses.replace(_wordpiece(), model="wordlevel")).tokenizer
    pieces = train_tokenizer(corpus, _wordpiece()).tokenizer
    for word, expected in (("coughs", ["cough", "##s"]), ("chests", ["chest", "##s"]),
                           ("tightness", ["tight", "##ness"]), ("Knees", ["knee", "##s"])):
        assert wordlevel.encode(word, add_special_tokens=False).tokens == [UNK]
        assert pieces.encode(word, add_special_tokens=False).tokens == expected
    # a word seen whole stays whole; one that is no known word plus known endings stays one [UNK]
    assert pieces.encode("coughing glorbfen", add_special_tokens=False).tokens == ["coughing", UNK]
    assert pieces.decode(pieces.encode("coughs badly", add_special_tokens=False).ids) == "coughs [UNK]"


def test_split_inflections_reads_every_form_through_the_stem_and_letters_leave_nothing_unknown() -> None:
    corpus = _pieces_corpus()
    split = train_tokenizer(corpus, _wordpiece(split_inflections=True)).tokenizer
    assert "coughing" not in split.get_vocab() and "cough" in split.get_vocab()
    assert split.encode("Coughing", add_special_tokens=False).tokens == ["cough", "##ing"]
    assert split.encode("headaches", add_special_tokens=False).tokens == ["headache", "##s"]
    letters = train_tokenizer(corpus, _wordpiece(character_fallback=True)).tokenizer
    tokens = letters.encode("glorfen", add_special_tokens=False).tokens
    assert UNK not in tokens and "".join(t.removeprefix("##") for t in tokens) == "glorfen"


def test_wordpiece_keeps_chinese_one_token_per_character_as_wordlevel() -> None:
    corpus = _pieces_corpus()
    wordlevel = train_tokenizer(corpus, dataclasses.replace(_wordpiece(), model="wordlevel")).tokenizer
    pieces = train_tokenizer(corpus, _wordpiece(split_inflections=True)).tokenizer
    for text in [*ZH, "胸口闷痛甪", "咳嗽 cough"]:
        assert pieces.encode(text, add_special_tokens=False).tokens == wordlevel.encode(text, add_special_tokens=False).tokens
    assert pieces.encode("胸口闷痛甪", add_special_tokens=False).tokens == ["胸", "口", "闷", "痛", UNK]


def test_pieces_carry_character_offsets_that_rebuild_entity_spans() -> None:
    from medllm_pipelines.lib.train.text.spans import char_spans, encode_bio

    tokenizer = train_tokenizer(_pieces_corpus(), _wordpiece()).tokenizer
    text = "Bad coughs and Knees."
    encoding = tokenizer.encode(text, add_special_tokens=False)
    assert encoding.tokens == [UNK, "cough", "##s", "and", "knee", "##s", "."]
    offsets = [tuple(o) for o in encoding.offsets]
    assert [text[a:b] for a, b in offsets] == ["Bad", "cough", "s", "and", "Knee", "s", "."]
    spans = [(4, 10, "SYMPTOM"), (15, 20, "SYMPTOM")]
    tags = encode_bio(offsets, spans)
    assert tags == ["O", "B-SYMPTOM", "I-SYMPTOM", "O", "B-SYMPTOM", "I-SYMPTOM", "O"]
    assert char_spans(tags, offsets) == spans


def test_a_model_trained_on_wordpiece_loads_with_its_tokenizer(tmp_path) -> None:
    from medllm_pipelines.lib.train.text.predictor import TextClassifierPredictor
    from medllm_pipelines.lib.train.text.training import TextTrainConfig, train_text_classifier

    corpus = _pieces_corpus()
    trained = train_tokenizer(corpus, _wordpiece(split_inflections=True))
    path = trained.save(tmp_path / "tokenizer")
    tokenizer = load_tokenizer(path)
    assert tokenizer_sha256(tokenizer) == trained.report.sha256
    frame = corpus.assign(label=corpus["language"].map({"en": "Respiratory Medicine", "zh": "Cardiology"}),
                          split=["train", "train", "validation", "test"] * (len(corpus) // 4))
    config = TextTrainConfig(d_model=8, n_heads=2, n_layers=1, dim_feedforward=16, max_length=16, max_epochs=1,
                             batch_size=16, seed=3)
    result = train_text_classifier(frame, tokenizer, ["Cardiology", "Respiratory Medicine"], config, tmp_path / "model",
                                   spec_id="triage")
    predictor = TextClassifierPredictor.load(result.model_dir, tokenizer_path=path)
    check_tokenizer_matches(predictor.tokenizer, predictor.network.vocab_size, spec_id="triage",
                            expected_sha256=trained.report.sha256)
    assert predictor.encode(["coughs"])[0, :2].tolist() == [tokenizer.token_to_id("cough"), tokenizer.token_to_id("##s")]
    other = train_tokenizer(corpus, _wordpiece())
    with pytest.raises(TokenizerMismatchError):
        TextClassifierPredictor.load(result.model_dir, tokenizer_path=other.save(tmp_path / "other"))
