"""A learned character tagger for identifiers: hashed window features, linear scores.

Each character gets ~45 hashed features (the characters, digit-collapsed
n-grams and character-class shapes in a +-6 window, the length of its run of
digits/letters/Han characters, the neighbouring English words) and one score
per label (O or an entity type, IO scheme) that is the sum of the feature
weights: a multinomial logistic regression over the window, i.e. the emission
part of a linear-chain CRF. It is trained with torch (an ``EmbeddingBag`` is
exactly that sum) and runs in numpy: scoring is one gather per feature, so a
batch of notes costs a few array operations instead of a Python loop per
character. Deterministic by seed (single-threaded training, seeded shuffles).

Why not a neural sequence model: the tagger exists to catch what the
validated patterns miss (unusual phrasing, a name without a cue); a window
model learns the cue words and shapes, is small, and costs ~0.1 ms per note.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medllm_pipelines.lib.deidentify.text.spans import ENTITY_TYPES, Span

LABELS: tuple[str, ...] = ("O", *ENTITY_TYPES)
LABEL_INDEX = {label: i for i, label in enumerate(LABELS)}
FEATURE_VERSION = "2"
WINDOW = 6  # characters each side
_SEPARATOR = "\x00" * (WINDOW + 2)
_MIN_LENGTH = {"NAME": 2, "ID_NUMBER": 8, "MRN": 5, "PHONE": 7, "EMAIL": 6, "ADDRESS": 4, "DATE": 6,
               "LOCATION": 3, "ORGANIZATION": 3}
_STRIP = " \t\r\n,.;:!?()[]{}<>\"'、，。；：！？（）【】《》\x00"

# character classes
_PAD, _DIGIT, _UPPER, _LOWER, _HAN, _SPACE, _NEWLINE, _PUNCT, _OTHER = range(9)

_FINAL = np.uint64(0xBF58476D1CE4E5B9)
_K = np.uint64(1_000_003)


@dataclass(frozen=True)
class TaggerConfig:
    """Training hyper-parameters (saved with the model)."""

    bucket_bits: int = 16
    epochs: int = 3
    batch_size: int = 8192
    learning_rate: float = 0.15
    entity_weight: float = 3.0  # recall matters more than precision for identifiers
    augment: bool = True


def _ascii_classes() -> np.ndarray:
    table = np.full(128, _PUNCT, dtype=np.uint64)
    table[0] = _PAD
    table[ord("0"):ord("9") + 1] = _DIGIT
    table[ord("A"):ord("Z") + 1] = _UPPER
    table[ord("a"):ord("z") + 1] = _LOWER
    table[[ord(" "), ord("\t")]] = _SPACE
    table[[ord("\n"), ord("\r")]] = _NEWLINE
    for code in list(range(1, 9)) + list(range(11, 13)) + list(range(14, 32)) + [127]:
        table[code] = _OTHER
    return table


_ASCII_CLASSES = _ascii_classes()


def _classes(codes: np.ndarray) -> np.ndarray:
    ascii_class = _ASCII_CLASSES[np.minimum(codes, np.uint64(127))]
    han = ((codes >= 0x4E00) & (codes <= 0x9FFF)) | ((codes >= 0x3400) & (codes <= 0x4DBF))
    return np.where(codes < 128, ascii_class, np.where(han, np.uint64(_HAN), np.uint64(_OTHER)))


def _shift(values: np.ndarray, d: int) -> np.ndarray:
    """values[i + d] with zeros outside."""
    if d == 0:
        return values
    out = np.zeros_like(values)
    if d > 0:
        out[:-d] = values[d:]
    else:
        out[-d:] = values[:d]
    return out


def _word_hashes(low: np.ndarray, cls: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Hash of the current, previous, next and second-previous ASCII word at each position."""
    letter = (cls == _UPPER) | (cls == _LOWER)
    n = len(low)
    if not letter.any():
        zero = np.zeros(n, dtype=np.uint64)
        return zero, zero, zero, zero
    starts = letter & ~_shift(letter, -1)
    count = np.cumsum(starts).astype(np.int64)  # words started up to here
    start_positions = np.flatnonzero(starts)
    word_of = np.where(letter, count, 0)
    pos_in_word = np.zeros(n, dtype=np.int64)
    idx = np.flatnonzero(letter)
    pos_in_word[idx] = idx - start_positions[word_of[idx] - 1]
    powers = _POWERS
    contrib = np.zeros(n, dtype=np.uint64)
    contrib[idx] = low[idx] * powers[np.minimum(pos_in_word[idx], 63)]
    sums = np.add.reduceat(contrib[idx], np.searchsorted(idx, start_positions)) if len(idx) else np.zeros(0, np.uint64)
    table = np.zeros(len(start_positions) + 3, dtype=np.uint64)
    table[1:len(start_positions) + 1] = (sums + np.uint64(1)) * _FINAL
    last = len(start_positions) + 2  # index holding 0 (no word)
    cur = np.where(letter, count, 0)
    prev = np.where(letter, count - 1, count)
    nxt = np.minimum(count + 1, last)
    prev2 = np.maximum(prev - 1, 0)
    return table[cur], table[np.maximum(prev, 0)], table[nxt], table[prev2]


def _powers() -> np.ndarray:
    out = np.ones(64, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for i in range(1, 64):
            out[i] = out[i - 1] * _K
    return out


_POWERS = _powers()


def _runs(cls: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Run length, offset from run start and from run end of each char's class run."""
    n = len(cls)
    change = np.ones(n, dtype=bool)
    change[1:] = cls[1:] != cls[:-1]
    starts = np.flatnonzero(change)
    lengths = np.diff(np.append(starts, n))
    run_id = np.cumsum(change) - 1
    offset = np.arange(n) - starts[run_id]
    length = lengths[run_id]
    return length, offset, length - 1 - offset


N_FEATURES = 18
_LEFT, _RIGHT = 6, 3  # character window: 6 before, 3 after (trigrams reach further)
_WIDTH = _LEFT + 1 + _RIGHT
# one odd multiplier per window column: a product identifies (character, offset), and the
# xor of products identifies an n-gram at its place; the template salt separates features
_COLUMN_PRIMES = np.array([0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9, 0xD6E8FEB86659FD93,
                           0xFF51AFD7ED558CCD, 0xC4CEB9FE1A85EC53, 0x2545F4914F6CDD1D, 0x9FB21C651E98DF25,
                           0x94D049BB133111EB, 0xBF58476D1CE4E5B9], dtype=np.uint64)
_LOW_PRIME = np.uint64(0xA0761D6478BD642F)
_SHAPE_POWERS = np.array([11 ** i for i in range(8, -1, -1)], dtype=np.uint64)
_SALTS = (np.arange(1, N_FEATURES + 1, dtype=np.uint64) * np.uint64(0x2545F4914F6CDD1D))[:, None]


def features(text: str, bucket_bits: int) -> np.ndarray:
    """(F, len(text)) bucket indices of the hashed features of every character.

    Vectorised over the whole text (a batch is one joined text): a handful of
    array operations per feature, none per character.
    """
    codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
    n = len(codes)
    cls = _classes(codes)
    low = np.where(cls == _UPPER, codes + np.uint64(32), codes)
    col = np.where(cls == _DIGIT, np.uint64(48), low)
    padded = np.zeros(n + _WIDTH, dtype=np.uint64)
    padded[_LEFT:_LEFT + n] = col
    window = np.lib.stride_tricks.sliding_window_view(padded, _WIDTH)[:n]  # window[i, j] = col[i + j - 6]
    products = (window * _COLUMN_PRIMES).T.copy()  # row j: the character at offset j - 6, hashed with its offset
    c = {d: products[d + _LEFT] for d in range(-_LEFT, _RIGHT + 1)}
    out = np.empty((N_FEATURES, n), dtype=np.uint64)
    rows = [c[-3], c[-2], c[-1], c[0], c[1], c[2], c[3]]  # the characters around
    for row, values in enumerate(rows):
        out[row] = values
    np.multiply(low, _LOW_PRIME, out=out[7])  # the character itself, digits not collapsed
    np.bitwise_xor(c[-1], c[0], out=out[8])
    np.bitwise_xor(c[0], c[1], out=out[9])
    np.bitwise_xor(c[-3] ^ c[-2], c[-1], out=out[10])
    np.bitwise_xor(c[1] ^ c[2], c[3], out=out[11])
    np.bitwise_xor(c[-6] ^ c[-5], c[-4], out=out[12])
    cls_padded = np.zeros(n + 8, dtype=np.uint64)
    cls_padded[4:4 + n] = cls
    shape_window = np.lib.stride_tricks.sliding_window_view(cls_padded, 9)[:n]
    np.multiply(shape_window @ _SHAPE_POWERS, _COLUMN_PRIMES[0], out=out[13])
    length, offset, _remaining = _runs(cls)
    out[14] = (cls * np.uint64(1024) + np.minimum(length, 31).astype(np.uint64) * np.uint64(16)
               + np.minimum(offset, 15).astype(np.uint64)) * _COLUMN_PRIMES[1]
    cur, prev, nxt, _prev2 = _word_hashes(low, cls)
    out[15] = cur
    np.bitwise_xor(prev, cls * _COLUMN_PRIMES[2], out=out[16])
    out[17] = nxt
    out += _SALTS
    out *= _FINAL
    out >>= np.uint64(64 - bucket_bits)
    return out.view(np.int64)


@dataclass
class Tagger:
    """A trained tagger: weights (buckets x labels) and bias, applied in numpy."""

    weights: np.ndarray
    bias: np.ndarray
    config: TaggerConfig
    meta: dict[str, Any] = field(default_factory=dict)
    labels: tuple[str, ...] = LABELS
    _digest: str | None = field(default=None, repr=False, compare=False)

    @property
    def bucket_bits(self) -> int:
        return self.config.bucket_bits

    @property
    def digest(self) -> str:
        """SHA-256 of the weights: the model version to put in metadata."""
        if self._digest is None:
            hasher = hashlib.sha256(self.weights.astype(np.float16).tobytes())
            hasher.update(self.bias.astype(np.float32).tobytes())
            self._digest = hasher.hexdigest()
        return self._digest

    def probabilities(self, text: str) -> np.ndarray:
        return self._softmax(self._scores(text))

    def _scores(self, text: str) -> np.ndarray:
        index = features(text, self.bucket_bits)
        if index.shape[1] <= 2048:  # short input: one gather (fewer calls beat less memory)
            return self.weights.take(index.ravel(), axis=0).reshape(*index.shape, -1).sum(axis=0) + self.bias
        scores = np.tile(self.bias, (index.shape[1], 1))
        gathered = np.empty_like(scores)
        for row in index:
            np.take(self.weights, row, axis=0, out=gathered)
            scores += gathered
        return scores

    @staticmethod
    def _softmax(scores: np.ndarray) -> np.ndarray:
        scores = scores - scores.max(axis=1, keepdims=True)
        np.exp(scores, out=scores)
        scores /= scores.sum(axis=1, keepdims=True)
        return scores

    def spans(self, text: str) -> list[Span]:
        return self.spans_many([text])[0]

    def spans_many(self, texts: Sequence[str]) -> list[list[Span]]:
        """Spans of each (normalised) text; the texts are scored together in one batch."""
        if not texts:
            return []
        joined = _SEPARATOR.join(texts)
        scores = self._scores(joined)
        best = scores.argmax(axis=1)
        tagged = np.flatnonzero(best)
        confidence = np.zeros(len(best))
        if len(tagged):  # softmax only where a label was chosen
            chosen = scores[tagged]
            chosen -= chosen.max(axis=1, keepdims=True)
            confidence[tagged] = 1.0 / np.exp(chosen).sum(axis=1)
        cumulative = np.concatenate(([0.0], np.cumsum(confidence))).tolist()
        change = np.flatnonzero(np.diff(best)) + 1
        bounds = np.concatenate(([0], change))
        run_labels = best[bounds].tolist()
        ends = np.append(change, len(best)).tolist()
        starts_list = bounds.tolist()
        text_starts = []
        offset = 0
        for text in texts:
            text_starts.append(offset)
            offset += len(text) + len(_SEPARATOR)
        out: list[list[Span]] = [[] for _ in texts]
        text_index = 0
        for start, end, label_index in zip(starts_list, ends, run_labels, strict=True):
            if label_index == 0:
                continue
            while text_index + 1 < len(texts) and start >= text_starts[text_index + 1]:
                text_index += 1
            base = text_starts[text_index]
            text = texts[text_index]
            s, e = start - base, min(end - base, len(text))
            while s < e and text[s] in _STRIP:
                s += 1
            while e > s and text[e - 1] in _STRIP:
                e -= 1
            label = self.labels[label_index]
            snapped = _snap_to_words(text, s, e) if s < e else None
            if snapped is None:
                continue
            s, e = snapped
            if e - s >= _MIN_LENGTH.get(label, 2):
                score = (cumulative[base + e] - cumulative[base + s]) / (e - s)
                out[text_index].append(Span(s, e, label, round(score, 4), "tagger"))
        return out

    # --- persistence -------------------------------------------------------------
    def save(self, path: Path) -> str:
        """Write the model (.npz) and return its SHA-256, the version to report."""
        buffer = io.BytesIO()
        header = {"labels": list(self.labels), "config": self.config.__dict__, "meta": self.meta,
                  "feature_version": FEATURE_VERSION}
        np.savez_compressed(buffer, weights=self.weights.astype(np.float16), bias=self.bias.astype(np.float32),
                            header=np.frombuffer(json.dumps(header, sort_keys=True).encode(), dtype=np.uint8))
        data = buffer.getvalue()
        Path(path).write_bytes(data)
        return hashlib.sha256(data).hexdigest()

    @classmethod
    def load(cls, path: Path) -> Tagger:
        with np.load(Path(path), allow_pickle=False) as archive:
            header = json.loads(archive["header"].tobytes().decode())
            if header["feature_version"] != FEATURE_VERSION:
                raise ValueError(f"tagger features v{header['feature_version']}, this code reads v{FEATURE_VERSION}")
            return cls(archive["weights"].astype(np.float32), archive["bias"].astype(np.float32),
                       TaggerConfig(**header["config"]), header["meta"], tuple(header["labels"]))


def _word_char(ch: str) -> bool:
    return ch.isascii() and ch.isalnum()


def _snap_to_words(text: str, start: int, end: int) -> tuple[int, int] | None:
    """Identifiers end at word boundaries: a span cutting an ASCII word grows to the whole
    word when it holds most of it, and is dropped when it is a fragment ("rvast" in Atorvastatin)."""
    if start > 0 and _word_char(text[start - 1]) and _word_char(text[start]):
        word_start = start
        while word_start > 0 and _word_char(text[word_start - 1]):
            word_start -= 1
        word_end = start
        while word_end < len(text) and _word_char(text[word_end]):
            word_end += 1
        if (min(word_end, end) - start) * 2 < word_end - word_start:
            return None
        start = word_start
    if end < len(text) and _word_char(text[end - 1]) and _word_char(text[end]):
        word_end = end
        while word_end < len(text) and _word_char(text[word_end]):
            word_end += 1
        word_start = end - 1
        while word_start > 0 and _word_char(text[word_start - 1]):
            word_start -= 1
        if (end - max(word_start, start)) * 2 < word_end - word_start:
            return None
        end = word_end
    return start, end


# --- training ---------------------------------------------------------------------
GoldLike = Sequence[Any]  # spans with .start/.end/.label, or (start, end, label) tuples


def _triples(spans: GoldLike) -> list[tuple[int, int, str]]:
    out = []
    for span in spans:
        if isinstance(span, tuple):
            out.append((int(span[0]), int(span[1]), str(span[2])))
        else:
            out.append((int(span.start), int(span.end), str(span.label)))
    return out


def _label_vector(length: int, spans: list[tuple[int, int, str]]) -> np.ndarray:
    labels = np.zeros(length, dtype=np.int64)
    for start, end, label in spans:
        labels[start:end] = LABEL_INDEX[label]
    return labels


def _augment(texts: list[str], golds: list[list[tuple[int, int, str]]],
             rng: np.random.Generator) -> tuple[list[str], list[list[tuple[int, int, str]]]]:
    """Variants that break the templates: lines shuffled, numbers re-spaced, values out of context."""
    out_texts, out_golds = [], []
    values: list[tuple[str, str]] = []
    fragments: list[str] = []
    seen: set[str] = set()
    for text, gold in zip(texts, golds, strict=True):
        values += [(text[s:e], label) for s, e, label in gold]
        line_start = 0
        for line in text.split("\n"):
            line_end = line_start + len(line)
            clean = not any(s < line_end and line_start < e for s, e, _ in gold)
            if clean and line and line not in seen and len(fragments) < 4000:
                seen.add(line)
                fragments.append(line)
            line_start = line_end + 1
    clean_fragments = fragments
    for text, gold in zip(texts, golds, strict=True):
        # 1. lines in another order, and identifiers re-spaced
        lines = text.split("\n")
        order = rng.permutation(len(lines))
        starts = np.cumsum([0] + [len(line) + 1 for line in lines])
        pieces, new_gold, cursor = [], [], 0
        for index in order:
            line_start, line = int(starts[index]), lines[index]
            line_gold = sorted((s - line_start, e - line_start, label) for s, e, label in gold
                               if line_start <= s and e <= line_start + len(line))
            rebuilt, last = [], 0
            for s, e, label in line_gold:
                rebuilt.append(line[last:s])
                value = line[s:e]
                if label in ("PHONE", "ID_NUMBER") and rng.random() < 0.5:
                    value = _respace(value, rng)
                begin = cursor + sum(len(p) for p in rebuilt)
                rebuilt.append(value)
                new_gold.append((begin, begin + len(value), label))
                last = e
            rebuilt.append(line[last:])
            piece = "".join(rebuilt)
            pieces.append(piece)
            cursor += len(piece) + 1
        out_texts.append("\n".join(pieces))
        out_golds.append(new_gold)
    # 2. identifiers next to unrelated fragments (descriptor- and comment-like strings)
    if values and clean_fragments:
        for _ in range(len(texts)):
            value, label = values[int(rng.integers(len(values)))]
            fragment = clean_fragments[int(rng.integers(len(clean_fragments)))][:30]
            joiner = [" ", "，", ": ", "", "; "][int(rng.integers(5))]
            if rng.random() < 0.5:
                text = f"{fragment}{joiner}{value}"
                start = len(fragment) + len(joiner)
            else:
                text, start = f"{value}{joiner}{fragment}", 0
            spans = [(start, start + len(value), label)]
            out_texts.append(text)
            out_golds.append(spans)
    return out_texts, out_golds


def _respace(value: str, rng: np.random.Generator) -> str:
    digits = [ch for ch in value if ch.isalnum()]
    group = int(rng.integers(3, 6))
    sep = " " if rng.random() < 0.6 else "-"
    return sep.join("".join(digits[i:i + group]) for i in range(0, len(digits), group))


def train_tagger(notes: Sequence[str], gold: Sequence[GoldLike], seed: int = 0,
                 config: TaggerConfig | None = None) -> Tagger:
    """Train the tagger from scratch on texts and their gold spans (original offsets).

    Texts are normalised as at detection time. Same inputs and seed give the
    same weights (training runs single-threaded with seeded shuffles).
    """
    import torch  # training only: detection never imports torch

    from medllm_pipelines.lib.deidentify.text.spans import normalise

    config = config if config is not None else TaggerConfig()
    if len(notes) != len(gold):
        raise ValueError("one gold span list per note")
    rng = np.random.default_rng(seed)
    texts: list[str] = []
    golds: list[list[tuple[int, int, str]]] = []
    for text, spans in zip(notes, gold, strict=True):
        view = normalise(text)
        triples = _triples(spans)
        if view.starts is not None:  # map original offsets onto the normalised text
            inverse = np.searchsorted(view.starts, [s for s, _, _ in triples] + [e for _, e, _ in triples])
            n = len(triples)
            triples = [(int(inverse[i]), int(inverse[n + i]), triples[i][2]) for i in range(n)]
        texts.append(view.text)
        golds.append(triples)
    if config.augment:
        extra_texts, extra_golds = _augment(texts, golds, rng)
        texts, golds = texts + extra_texts, golds + extra_golds
    index = np.ascontiguousarray(np.concatenate([features(t, config.bucket_bits) for t in texts], axis=1).T)
    target = np.concatenate([_label_vector(len(t), g) for t, g in zip(texts, golds, strict=True)])

    previous_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(seed)
        buckets = 1 << config.bucket_bits
        table = torch.nn.EmbeddingBag(buckets, len(LABELS), mode="sum")
        torch.nn.init.zeros_(table.weight)
        bias = torch.nn.Parameter(torch.zeros(len(LABELS)))
        optimiser = torch.optim.Adam([table.weight, bias], lr=config.learning_rate)
        weights = torch.ones(len(LABELS))
        weights[1:] = config.entity_weight
        loss_fn = torch.nn.CrossEntropyLoss(weight=weights)
        x_all = torch.from_numpy(index)
        y_all = torch.from_numpy(target)
        order_rng = np.random.default_rng(seed + 1)
        losses = []
        for _ in range(config.epochs):
            order = torch.from_numpy(order_rng.permutation(len(target)))
            total = 0.0
            for begin in range(0, len(order), config.batch_size):
                batch = order[begin:begin + config.batch_size]
                optimiser.zero_grad()
                loss = loss_fn(table(x_all[batch]) + bias, y_all[batch])
                loss.backward()
                optimiser.step()
                total += float(loss.detach()) * len(batch)
            losses.append(round(total / len(target), 5))
        # stored as float16 (see ``save``): rounded here so the saved model is exactly this one
        weight_array = table.weight.detach().numpy().astype(np.float16).astype(np.float32)
        bias_array = bias.detach().numpy().astype(np.float32).copy()
    finally:
        torch.set_num_threads(previous_threads)
    digest = hashlib.sha256()
    for text in notes:
        digest.update(text.encode("utf-8"))
        digest.update(b"\x00")
    meta = {"seed": seed, "texts": len(notes), "training_positions": len(target),
            "epoch_losses": losses, "training_texts_sha256": digest.hexdigest()}
    return Tagger(weight_array, bias_array, config, meta)
