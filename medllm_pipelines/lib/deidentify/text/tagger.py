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
FEATURE_VERSION = "1"
WINDOW = 6  # characters each side
_SEPARATOR = "\x00" * (WINDOW + 2)
_MIN_LENGTH = {"NAME": 2, "ID_NUMBER": 15, "MRN": 5, "PHONE": 7, "EMAIL": 6, "ADDRESS": 4, "DATE": 6}
_STRIP = " \t\r\n,.;:!?()[]{}<>\"'、，。；：！？（）【】《》\x00"

# character classes
_PAD, _DIGIT, _UPPER, _LOWER, _HAN, _SPACE, _NEWLINE, _PUNCT, _OTHER = range(9)

_PRIMES = tuple(np.uint64(x) for x in (0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9,
                                        0xD6E8FEB86659FD93, 0xFF51AFD7ED558CCD))
_FINAL = np.uint64(0xBF58476D1CE4E5B9)
_K = np.uint64(1_000_003)


@dataclass(frozen=True)
class TaggerConfig:
    """Training hyper-parameters (saved with the model)."""

    bucket_bits: int = 16
    epochs: int = 3
    batch_size: int = 4096
    learning_rate: float = 0.1
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


def _combine(template: int, *parts: np.ndarray) -> np.ndarray:
    """xor of per-position products, salted by the template; mixed once in ``features``."""
    h = parts[0] * _PRIMES[0] + np.uint64((template + 1) * 0x2545F491)
    for prime, part in zip(_PRIMES[1:], parts[1:], strict=False):
        h ^= part * prime
    return h


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


def features(text: str, bucket_bits: int) -> np.ndarray:
    """(F, len(text)) bucket indices of the hashed features of every character."""
    codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
    n = len(codes)
    cls = _classes(codes)
    low = np.where(cls == _UPPER, codes + np.uint64(32), codes)
    col = np.where(cls == _DIGIT, np.uint64(48), low)
    c = {d: _shift(col, d) for d in range(-6, 4)}
    out = np.empty((N_FEATURES, n), dtype=np.uint64)
    row = 0

    def add(*parts: np.ndarray) -> None:
        nonlocal row
        target = out[row]
        np.multiply(parts[0], _PRIMES[0], out=target)
        target += np.uint64((row + 1) * 0x2545F491)
        for prime, part in zip(_PRIMES[1:], parts[1:], strict=False):
            target ^= part * prime
        row += 1

    for d in range(-3, 4):
        add(c[d])
    add(low)  # the character itself, digits not collapsed
    add(c[-1], c[0])
    add(c[0], c[1])
    add(c[-3], c[-2], c[-1])
    add(c[1], c[2], c[3])
    add(c[-6], c[-5], c[-4])
    shape = cls.copy()
    for d in range(-4, 5):
        if d:
            shape *= np.uint64(11)
            shape += _shift(cls, d)
    add(shape)
    length, offset, _remaining = _runs(cls)
    add(cls, np.minimum(length, 31).astype(np.uint64), np.minimum(offset, 15).astype(np.uint64))
    cur, prev, nxt, _prev2 = _word_hashes(low, cls)
    add(cur)
    add(prev, cls)
    add(nxt)
    assert row == N_FEATURES
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

    @property
    def bucket_bits(self) -> int:
        return self.config.bucket_bits

    def probabilities(self, text: str) -> np.ndarray:
        return self._softmax(self._scores(text))

    def _scores(self, text: str) -> np.ndarray:
        index = features(text, self.bucket_bits)
        scores = np.tile(self.bias, (index.shape[1], 1))
        for row in index:
            scores += self.weights[row]
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
        probs = self._softmax(self._scores(joined))
        best = probs.argmax(axis=1)
        confidence = probs[np.arange(len(best)), best]
        out: list[list[Span]] = []
        offset = 0
        for text in texts:
            end = offset + len(text)
            out.append(self._decode(text, best[offset:end], confidence[offset:end]))
            offset = end + len(_SEPARATOR)
        return out

    def _decode(self, text: str, best: np.ndarray, confidence: np.ndarray) -> list[Span]:
        if not best.any():
            return []
        change = np.flatnonzero(np.diff(best)) + 1
        bounds = np.concatenate(([0], change, [len(best)]))
        spans: list[Span] = []
        for start, end in zip(bounds[:-1], bounds[1:], strict=True):
            label_index = int(best[start])
            if label_index == 0:
                continue
            s, e = int(start), int(end)
            while s < e and text[s] in _STRIP:
                s += 1
            while e > s and text[e - 1] in _STRIP:
                e -= 1
            label = self.labels[label_index]
            if e - s >= _MIN_LENGTH.get(label, 2):
                spans.append(Span(s, e, label, round(float(confidence[s:e].mean()), 4), "tagger"))
        return spans

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
        table = torch.nn.EmbeddingBag(buckets, len(LABELS), mode="sum", sparse=True)
        torch.nn.init.zeros_(table.weight)
        bias = torch.nn.Parameter(torch.zeros(len(LABELS)))
        sparse_opt = torch.optim.SparseAdam(list(table.parameters()), lr=config.learning_rate)
        dense_opt = torch.optim.Adam([bias], lr=config.learning_rate)
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
                sparse_opt.zero_grad()
                dense_opt.zero_grad()
                loss = loss_fn(table(x_all[batch]) + bias, y_all[batch])
                loss.backward()
                sparse_opt.step()
                dense_opt.step()
                total += float(loss.detach()) * len(batch)
            losses.append(round(total / len(target), 5))
        weight_array = table.weight.detach().numpy().astype(np.float32).copy()
        bias_array = bias.detach().numpy().astype(np.float32).copy()
    finally:
        torch.set_num_threads(previous_threads)
    digest = hashlib.sha256()
    for text in notes:
        digest.update(text.encode("utf-8"))
        digest.update(b"\x00")
    meta = {"seed": seed, "texts": len(notes), "training_positions": int(len(target)),
            "epoch_losses": losses, "training_texts_sha256": digest.hexdigest()}
    return Tagger(weight_array, bias_array, config, meta)
