"""The text models' tokenizer, built locally from the de-identified notes and dialogues (Chinese and English).

Nothing is downloaded: the vocabulary comes from the pipeline's own
de-identified texts (``tokenizers``), with NFKC normalisation and BERT's
handling of CJK characters: one token per Chinese character, Latin script
split into lower-case words and punctuation. The default model is WordLevel:
every word or character used by at least ``min_persons`` persons, ranked by
how many persons used it, then by text, so that the ids are the same for the
same texts in any order and no word only one person wrote gets a token.

``model: wordpiece`` keeps those whole words and adds sub-words without a
trainer: ``##`` word endings (``##s``, ``##ing``, ``##ness``...: the
``suffixes`` of tokenizer.yaml that ``min_persons`` persons wrote after a
stem), counted and ranked the same way, read by the WordPiece *model* of
``tokenizers`` (longest known prefix first). An English word never seen
whole but made of a known word and known endings ("coughs", "headaches")
reads as ``cough ##s`` rather than [UNK]; Chinese is one token per character
as before, and the character offsets of pieces still locate entity spans.

Why not trained sub-words: of the trainers of ``tokenizers`` 0.23.3, WordPiece and BPE
break ties between equally frequent pairs in hash order (two trainings on the
same texts differed in 48 and 4 of 4,000 tokens), and the Unigram trainer,
deterministic once its pieces are put in a canonical order, never keeps a
whole word as a piece (a word is a suffix of itself, and the trainer's seed
ignores word-final suffixes: huggingface/tokenizers#1027): "my" became "m" +
"y" and an English patient text 92 tokens long, truncated at the encoder's
96. ``model: unigram`` in tokenizer.yaml still selects it.

The persons of the text models' held-out splits (the triage validation and
test splits) are left out of the vocabulary, so that no word only a test
patient used gets a token of its own; they, and a keyed-hash share of other
persons, measure the unknown-token rate on text the tokenizer never saw. The
result is one ``tokenizer.json``; a model records its digest and its
vocabulary size, and a tokenizer that does not match a model's embedding is
refused (``check_tokenizer_matches``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Collection, Sequence
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_REPORT_FILE = "tokenizer_report.json"
CONFIG_FILE = Path(__file__).with_name("tokenizer.yaml")
PAD, UNK, CLS, SEP, MASK = "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"
TOKENIZER_MODELS = ("wordlevel", "wordpiece", "unigram")
CONTINUATION = "##"  # WordPiece's prefix of a piece that continues a word


class TokenizerMismatchError(ValueError):
    """A tokenizer whose vocabulary is not the one a model's embedding was built for."""


@dataclass(frozen=True)
class TokenizerConfig:
    """How the tokenizer is trained (lib/train/text/tokenizer.yaml); the version goes into metadata."""

    version: str = "1.0.0"
    model: str = "wordlevel"
    vocab_size: int = 4000
    min_persons: int = 2
    max_piece_length: int = 16
    # wordpiece: the word endings that become "##" pieces, whole words that are a kept word plus one of them
    # split into the two (split_inflections), and the shortest stem a split or an ending may follow
    suffixes: tuple[str, ...] = ("s", "es", "ed", "d", "ing", "er", "ers", "est", "ly", "ness", "ful", "less", "ish")
    split_inflections: bool = False
    min_stem_length: int = 3
    # wordpiece: single letters as pieces too, so that no Latin word is [UNK]; off, a word that is not a known word
    # plus known endings stays one [UNK] (which token_dropout teaches the encoder to read past)
    character_fallback: bool = False
    lowercase: bool = True
    special_tokens: tuple[str, ...] = (PAD, UNK, CLS, SEP, MASK)
    validation_share: float = 0.1
    validation_salt: str = "text-tokenizer-v1"

    def __post_init__(self) -> None:
        object.__setattr__(self, "special_tokens", tuple(self.special_tokens))
        object.__setattr__(self, "suffixes", tuple(self.suffixes))
        if self.model not in TOKENIZER_MODELS:
            raise ValueError(f"tokenizer model must be one of {TOKENIZER_MODELS}, got {self.model!r}")
        if self.min_persons < 1:
            raise ValueError("tokenizer min_persons must be >= 1")
        if self.vocab_size < len(self.special_tokens) + 1 or self.max_piece_length < 1:
            raise ValueError("tokenizer vocab_size must exceed the special tokens and max_piece_length be >= 1")
        if not 0.0 <= self.validation_share < 1.0:
            raise ValueError("tokenizer validation_share must be in [0, 1)")
        if self.min_stem_length < 1 or any(not str(e).isalpha() or str(e) != str(e).lower() for e in self.suffixes):
            raise ValueError("tokenizer min_stem_length must be >= 1 and suffixes lower-case letters")
        if self.special_tokens[:2] != (PAD, UNK):
            raise ValueError(f"the first special tokens must be {PAD} and {UNK} (ids 0 and 1)")

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["special_tokens"] = list(self.special_tokens)
        data["suffixes"] = list(self.suffixes)
        return data


@cache
def load_tokenizer_config(path: Path = CONFIG_FILE) -> TokenizerConfig:
    return TokenizerConfig(**yaml.safe_load(Path(path).read_text()))


@dataclass(frozen=True)
class TokenizerReport:
    """What a trained tokenizer is: vocabulary, corpus, unknown-token rate on held-out persons' texts."""

    vocab_size: int
    vocab_size_requested: int
    corpus_texts: int
    corpus_characters: int
    corpus_persons: int
    texts_by_source: dict[str, int]
    validation_texts: int
    validation_tokens: int
    excluded_persons: int
    unknown_token_rate: float
    unknown_token_rate_by_language: dict[str, float]
    mean_tokens_per_text: float
    config_version: str
    sha256: str

    def as_metadata(self) -> dict[str, Any]:
        return {
            "vocab_size": self.vocab_size,
            "vocab_size_requested": self.vocab_size_requested,
            "corpus_texts": self.corpus_texts,
            "corpus_characters": self.corpus_characters,
            "corpus_persons": self.corpus_persons,
            "texts_by_source": self.texts_by_source,
            "validation_texts": self.validation_texts,
            "validation_tokens": self.validation_tokens,
            "excluded_persons": self.excluded_persons,
            "unknown_token_rate_validation": round(self.unknown_token_rate, 5),
            "unknown_token_rate_by_language": {k: round(v, 5) for k, v in self.unknown_token_rate_by_language.items()},
            "mean_tokens_per_text": round(self.mean_tokens_per_text, 1),
            "tokenizer_config_version": self.config_version,
            "tokenizer_sha256": self.sha256,
        }


@dataclass
class TrainedTokenizer:
    tokenizer: Any  # tokenizers.Tokenizer
    report: TokenizerReport
    config: TokenizerConfig

    def save(self, folder: str | Path) -> Path:
        """``tokenizer.json`` and its report into ``folder``; returns the tokenizer file."""
        from medllm_pipelines.lib.common.files import write_private_atomic

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / TOKENIZER_FILE
        write_private_atomic(path, self.tokenizer.to_str(pretty=False))
        write_private_atomic(folder / TOKENIZER_REPORT_FILE,
                             json.dumps({**self.report.as_metadata(), "config": self.config.as_dict()}, indent=2))
        return path


def build_empty_tokenizer(config: TokenizerConfig, vocabulary: dict[str, int] | None = None) -> Any:
    """A tokenizer with the normaliser and pre-tokenizer of ``config``: untrained Unigram, or WordLevel/WordPiece on
    ``vocabulary``."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers

    vocabulary = vocabulary or {t: i for i, t in enumerate(config.special_tokens)}
    if config.model == "wordlevel":
        tokenizer = Tokenizer(models.WordLevel(vocabulary, unk_token=UNK))
    elif config.model == "wordpiece":
        tokenizer = Tokenizer(models.WordPiece(vocabulary, unk_token=UNK, continuing_subword_prefix=CONTINUATION,
                                               max_input_chars_per_word=100))
        tokenizer.decoder = decoders.WordPiece(prefix=CONTINUATION)
    else:
        tokenizer = Tokenizer(models.Unigram())
    tokenizer.normalizer = normalizers.Sequence([
        normalizers.NFKC(),
        normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, strip_accents=False,
                                   lowercase=config.lowercase),
    ])
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    return tokenizer


def word_users(texts: Sequence[str], persons: Sequence[str], config: TokenizerConfig) -> dict[str, set[str]]:
    """Each pre-tokenized word (lower-case Latin word, number, punctuation, CJK character) and who wrote it."""
    probe = build_empty_tokenizer(config)
    users: dict[str, set[str]] = {}
    for text, person in zip(texts, persons, strict=True):
        for word, _ in probe.pre_tokenizer.pre_tokenize_str(probe.normalizer.normalize_str(text)):
            users.setdefault(word, set()).add(person)
    return users


def _ranked(users: dict[str, set[str]], config: TokenizerConfig, exclude: Collection[str] = ()) -> list[str]:
    """Tokens used by at least ``min_persons`` persons: most persons first, then text."""
    skip = set(config.special_tokens) | set(exclude)
    return [w for _, w in sorted((-len(p), w) for w, p in users.items() if len(p) >= config.min_persons and w not in skip)]


def word_vocabulary(texts: Sequence[str], persons: Sequence[str], config: TokenizerConfig) -> dict[str, int]:
    """Words (and CJK characters) used by at least ``min_persons`` persons, most persons first, then text.

    Built by counting, not by a trainer: the same texts give the same ids in
    any order, and a word only one person ever wrote gets no token of its own.
    """
    words = _ranked(word_users(texts, persons, config), config)[: config.vocab_size - len(config.special_tokens)]
    return {token: i for i, token in enumerate([*config.special_tokens, *words])}


def _is_cjk(character: str) -> bool:
    code = ord(character)
    return (0x4E00 <= code <= 0x9FFF or 0x3400 <= code <= 0x4DBF or 0x20000 <= code <= 0x2A6DF
            or 0xF900 <= code <= 0xFAFF or 0x2F800 <= code <= 0x2FA1F)


def _splittable(word: str) -> bool:
    """A word WordPiece may cut: letters or digits, no CJK character (those stay one token each)."""
    return len(word) > 1 and word.isalnum() and not any(_is_cjk(c) for c in word)


def wordpiece_vocabulary(texts: Sequence[str], persons: Sequence[str], config: TokenizerConfig) -> dict[str, int]:
    """Whole words as ``word_vocabulary``, plus pieces, so that an unseen Latin word is pieces rather than one [UNK].

    Counted, not trained (the WordPiece trainer breaks ties in hash order),
    every group ranked by persons then text: the special tokens; with
    ``character_fallback``, the letters ``min_persons`` persons wrote, word-initial and
    as ``##`` continuations (so that any word of known letters has a
    segmentation; without it, a word that is not a kept word plus kept
    endings stays one [UNK]); the word endings of
    ``suffixes`` that at least ``min_persons`` persons wrote after a stem of
    ``min_stem_length`` letters or more, as ``##ing``, ``##s``...; then the
    words. WordPiece takes the longest known prefix first, so ``coughing``
    reads ``cough ##ing`` once ``cough`` is a word and ``coughing`` is not.
    With ``split_inflections`` a kept word that is another kept word plus a
    kept ending is left out, so that it is always read as the two and the
    stem's embedding is shared by all its forms. CJK characters stay whole
    tokens; an unknown one is [UNK] as before.
    """
    users = word_users(texts, persons, config)
    words = _ranked(users, config)
    kept = set(words)
    letters: dict[str, set[str]] = {}
    endings: dict[str, set[str]] = {}
    for word, who in users.items():
        if not _splittable(word):
            continue
        for character in word:
            letters.setdefault(character, set()).update(who)
        for ending in config.suffixes:
            if word.endswith(ending) and len(word) - len(ending) >= config.min_stem_length:
                endings.setdefault(CONTINUATION + ending, set()).update(who)
    alphabet = _ranked(letters, config) if config.character_fallback else []
    pieces = [*alphabet, *(CONTINUATION + c for c in alphabet), *_ranked(endings, config)]
    if config.split_inflections:
        kept_endings = {e[len(CONTINUATION):] for e in pieces if e.startswith(CONTINUATION)} & set(config.suffixes)
        words = [w for w in words if not (_splittable(w) and any(
            w.endswith(e) and len(w) - len(e) >= config.min_stem_length and w[: -len(e)] in kept
            for e in kept_endings))]
    ordered = list(dict.fromkeys([*config.special_tokens, *pieces, *words]))[: config.vocab_size]
    return {token: i for i, token in enumerate(ordered)}


SCORE_DECIMALS = 3  # the trainer's scores of the rarest pieces vary by ~1e-4 between runs


def canonical_pieces(tokenizer: Any, config: TokenizerConfig) -> Any:
    """The trained Unigram model with its pieces in a canonical order: special tokens, then score, then text.

    The trainer returns the same pieces with scores equal to within ~1e-4 but in an
    order that varies between runs; rounding and sorting makes the ids, and
    the tokenizer file, the same for the same texts.
    """
    from tokenizers import models

    pieces = json.loads(tokenizer.to_str())["model"]["vocab"]
    specials = set(config.special_tokens)
    ordered = sorted(((str(piece), round(float(score), SCORE_DECIMALS)) for piece, score in pieces if piece not in specials),
                     key=lambda item: (-item[1], item[0]))
    tokenizer.model = models.Unigram([(token, 0.0) for token in config.special_tokens] + ordered, unk_id=1,
                                     byte_fallback=False)
    return tokenizer


def held_out(persons: pd.Series, share: float, salt: str) -> pd.Series:
    """True for the persons held out of training: a keyed hash of the pseudonym, stable under row order."""
    if share <= 0:
        return pd.Series(False, index=persons.index)
    cut = int(share * 10_000)
    return persons.astype(str).map(
        lambda p: int(hashlib.sha256(f"{salt}:{p}".encode()).hexdigest()[:8], 16) % 10_000 < cut)


def _language(value: str) -> str:
    return str(value or "").split("-")[0].lower() or "unknown"


def unknown_rate(tokenizer: Any, texts: Sequence[str]) -> tuple[float, int]:
    """Share of [UNK] among the tokens of ``texts`` (special tokens not counted), and the token count."""
    if not texts:
        return 0.0, 0
    unk_id = tokenizer.token_to_id(UNK)
    encodings = tokenizer.encode_batch(list(texts), add_special_tokens=False)
    total = sum(len(e.ids) for e in encodings)
    unknown = sum(e.ids.count(unk_id) for e in encodings)
    return (unknown / total if total else 0.0), total


def train_tokenizer(corpus: pd.DataFrame, config: TokenizerConfig | None = None,
                    excluded_persons: Collection[str] = ()) -> TrainedTokenizer:
    """Train on ``corpus`` (columns text, patient_pseudonym, language, source) except held-out persons' texts.

    ``excluded_persons`` (pseudonyms: the models' validation and test persons)
    never reach the training; their texts are part of the held-out set that
    the unknown-token rate is measured on.

    The texts are sorted before training, so that the vocabulary does not
    depend on the order the warehouse returns rows in.
    """
    from tokenizers import trainers

    config = config or load_tokenizer_config()
    corpus = corpus[corpus["text"].map(lambda t: isinstance(t, str) and bool(t.strip()))]
    if corpus.empty:
        raise ValueError("no de-identified text to train the tokenizer on (deidentify/notes and dialogues are empty)")
    excluded = corpus["patient_pseudonym"].astype(str).isin({str(p) for p in excluded_persons})
    validation = held_out(corpus["patient_pseudonym"], config.validation_share, config.validation_salt) | excluded
    if validation.all() and not excluded.any():  # a handful of persons, all hashed into validation: train on them anyway
        validation = pd.Series(False, index=corpus.index)
    fit_texts = sorted(corpus.loc[~validation, "text"].tolist())
    if not fit_texts:
        raise ValueError("no text left to train the tokenizer on once the held-out persons are excluded")
    if config.model in ("wordlevel", "wordpiece"):
        fit = corpus.loc[~validation].sort_values(["text", "patient_pseudonym"])
        counted = word_vocabulary if config.model == "wordlevel" else wordpiece_vocabulary
        tokenizer = build_empty_tokenizer(config, counted(fit["text"].tolist(),
                                                          fit["patient_pseudonym"].astype(str).tolist(), config))
    else:
        tokenizer = build_empty_tokenizer(config)
        trainer = trainers.UnigramTrainer(vocab_size=config.vocab_size, special_tokens=list(config.special_tokens),
                                          unk_token=UNK, max_piece_length=config.max_piece_length, show_progress=False)
        tokenizer.train_from_iterator(fit_texts, trainer=trainer, length=len(fit_texts))
        tokenizer = canonical_pieces(tokenizer, config)
    held = corpus[validation]
    rate, tokens = unknown_rate(tokenizer, held["text"].tolist())
    by_language = {language: unknown_rate(tokenizer, group["text"].tolist())[0]
                   for language, group in held.groupby(held["language"].map(_language), sort=True)}
    all_encodings = tokenizer.encode_batch(corpus["text"].tolist(), add_special_tokens=False)
    serialised = tokenizer.to_str(pretty=False)
    report = TokenizerReport(
        vocab_size=tokenizer.get_vocab_size(),
        vocab_size_requested=config.vocab_size,
        corpus_texts=len(fit_texts),
        corpus_characters=sum(len(t) for t in fit_texts),
        corpus_persons=int(corpus.loc[~validation, "patient_pseudonym"].nunique()),
        texts_by_source={str(k): int(v) for k, v in corpus.loc[~validation, "source"].value_counts().sort_index().items()},
        validation_texts=len(held),
        validation_tokens=tokens,
        excluded_persons=int(corpus.loc[excluded, "patient_pseudonym"].nunique()),
        unknown_token_rate=rate,
        unknown_token_rate_by_language=by_language,
        mean_tokens_per_text=sum(len(e.ids) for e in all_encodings) / len(all_encodings),
        config_version=config.version,
        sha256=hashlib.sha256(serialised.encode("utf-8")).hexdigest(),
    )
    return TrainedTokenizer(tokenizer, report, config)


def tokenizer_corpus(notes: pd.DataFrame, dialogues: pd.DataFrame) -> pd.DataFrame:
    """De-identified notes and dialogues as one corpus: text, patient_pseudonym, language, source."""
    columns = ["text", "patient_pseudonym", "language"]
    parts = [frame[columns].assign(source=source) for frame, source in ((notes, "notes"), (dialogues, "dialogues"))
             if len(frame)]
    if not parts:
        return pd.DataFrame(columns=[*columns, "source"])
    return pd.concat(parts, ignore_index=True)


def held_out_persons(splits: pd.DataFrame, held_out_splits: Sequence[str] = ("validation", "test")) -> set[str]:
    """Pseudonyms of the persons in a splits table's held-out splits: kept out of the tokenizer's training."""
    if splits.empty or "split" not in splits.columns:
        return set()
    return set(splits.loc[splits["split"].isin(list(held_out_splits)), "patient_pseudonym"].astype(str))


def load_tokenizer(path: str | Path) -> Any:
    """The tokenizer saved at ``path`` (a tokenizer.json, or the folder holding one)."""
    from tokenizers import Tokenizer

    path = Path(path)
    if path.is_dir():
        path = path / TOKENIZER_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no tokenizer at {path}: materialise train/text_tokenizer first")
    return Tokenizer.from_file(str(path))


def tokenizer_sha256(tokenizer: Any) -> str:
    return hashlib.sha256(tokenizer.to_str(pretty=False).encode("utf-8")).hexdigest()


def check_tokenizer_matches(tokenizer: Any, embedding_rows: int, *, spec_id: str = "", expected_sha256: str | None = None,
                            where: str = "") -> None:
    """Refuse a tokenizer that cannot feed a model: another vocabulary size, or another tokenizer than recorded.

    A mismatched vocabulary would index past the embedding (a crash) or, worse,
    map every token to the wrong row (silently wrong predictions).
    """
    label = f"spec {spec_id}" if spec_id else "text model"
    at = f" ({where})" if where else ""
    vocab = tokenizer.get_vocab_size()
    if vocab != embedding_rows:
        raise TokenizerMismatchError(
            f"{label}: the tokenizer has {vocab} tokens but the model's embedding has {embedding_rows} rows{at}; "
            "train the model again with this tokenizer, or use the tokenizer it was trained with")
    if expected_sha256 is not None and tokenizer_sha256(tokenizer) != expected_sha256:
        raise TokenizerMismatchError(
            f"{label}: the tokenizer is not the one the model was trained with (SHA-256 differs){at}")
