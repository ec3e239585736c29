"""The free-text identifier detector: validated patterns union learned tagger.

Spans from both sources are merged so that nothing either found stays in
clear text:

1. strong spans (validated patterns or known identifiers, score >= 0.95;
   never the tagger's) are merged among
   themselves: overlapping spans become their union, typed by the most
   confident (then most specific) member;
2. weaker spans (cue patterns, the tagger) that overlap a strong span of the
   same type are absorbed by it (its validated boundaries win); a different
   type keeps only its part outside the strong span, when long enough;
3. the remaining weak spans are merged like the strong ones.

Then every name found is looked for again in the same text (a note names
its patient several times, once with a cue and later without), and, when
the caller knows the patient's identifiers (a DICOM header, the structured
record), their occurrences are added as well.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from medllm_pipelines.lib.deidentify.text.patterns import (
    PatternConfig,
    PatternRecogniser,
    load_pattern_config,
)
from medllm_pipelines.lib.deidentify.text.spans import (
    ENTITY_TYPES,
    NAME,
    TYPE_PRIORITY,
    Span,
    normalise,
)
from medllm_pipelines.lib.deidentify.text.tagger import Tagger
from medllm_pipelines.lib.deidentify.text.zh_words import is_han, without_common_words

STRONG = 0.95
_MIN_LENGTH = {"NAME": 2, "ID_NUMBER": 8, "MRN": 5, "PHONE": 7, "EMAIL": 6, "ADDRESS": 4, "DATE": 3,
               "LOCATION": 3, "ORGANIZATION": 3}
_DIGIT_TYPES = frozenset({"ID_NUMBER", "PHONE", "MRN"})
_LATIN_TOKEN = re.compile(r"[^\W\d_][^\W\d_'\-]+")


def _rank(span: Span) -> tuple[bool, float, float, int]:
    # a recogniser's type beats the tagger's in a union: the tagger was fitted to one hospital's layouts
    return (span.source != "tagger", span.score, TYPE_PRIORITY.get(span.label, 0), span.end - span.start)


_PLAUSIBLE_DATE = re.compile(r"\d|[年月日号]|(?i:jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec|day)")
_PLAUSIBLE_ADDRESS = re.compile(r"\d|[省市区县镇乡村路街巷弄号栋室]")


def plausible_tagger_span(text: str, span: Span) -> bool:
    """A tagger span whose text can hold its type: digits for numbers, a date word, an address part, an @.

    The tagger is fitted to one hospital's layouts; on other text it proposes
    spans a shape check rules out cheaply (a PHONE without digits).
    """
    value = text[span.start:span.end]
    if span.label in ("PHONE", "ID_NUMBER", "MRN"):
        return sum(ch.isdigit() for ch in value) >= 5
    if span.label == "DATE":
        return bool(_PLAUSIBLE_DATE.search(value))
    if span.label == "ADDRESS":
        return bool(_PLAUSIBLE_ADDRESS.search(value))
    if span.label == "EMAIL":
        return "@" in value
    return True


def merge_overlapping(spans: Iterable[Span]) -> list[Span]:
    """Union of overlapping spans, typed by the best-ranked member."""
    ordered = sorted(spans, key=lambda s: (s.start, -s.end))
    merged: list[Span] = []
    group: list[Span] = []
    end = -1
    for span in ordered:
        if group and span.start < end:
            group.append(span)
            end = max(end, span.end)
            continue
        if group:
            merged.append(_union(group))
        group, end = [span], span.end
    if group:
        merged.append(_union(group))
    return merged


def _union(group: list[Span]) -> Span:
    best = max(group, key=_rank)
    if len(group) == 1:
        return best
    return Span(min(s.start for s in group), max(s.end for s in group), best.label, best.score, best.source)


def resolve(spans: Iterable[Span], strong: float = STRONG) -> list[Span]:
    """Non-overlapping spans from possibly overlapping candidates (see module doc)."""
    candidates = list(spans)

    def is_strong(span: Span) -> bool:  # validated boundaries: a tagger span never is
        return span.score >= strong and span.source in ("pattern", "known")

    strong_spans = merge_overlapping(s for s in candidates if is_strong(s))
    weak: list[Span] = []
    for span in (s for s in candidates if not is_strong(s)):
        pieces = [span]
        for anchor in strong_spans:
            if anchor.start >= span.end:
                break
            if anchor.end <= span.start:
                continue
            next_pieces = []
            for piece in pieces:
                if not (piece.start < anchor.end and anchor.start < piece.end):
                    next_pieces.append(piece)
                    continue
                if piece.label == anchor.label:
                    continue
                for start, end in ((piece.start, anchor.start), (anchor.end, piece.end)):
                    if end - start >= _MIN_LENGTH.get(piece.label, 2):
                        next_pieces.append(Span(start, end, piece.label, piece.score, piece.source))
            pieces = next_pieces
            if not pieces:
                break
        weak.extend(pieces)
    if not weak:
        return strong_spans
    return sorted(strong_spans + merge_overlapping(weak))


def whitelist_names(text: str, spans: Iterable[Span], *, zh_common_words: bool = True) -> list[Span]:
    """NAME spans (patterns, tagger) trimmed of clinical/common words at their ends; dropped when nothing is left.

    Philter's rule: a word of the clinical whitelist (HEPARIN, CARDIAC, WITH,
    Lasix, COPD) is never masked as a name, whoever proposed it. In Han script
    the whitelist is jieba's dictionary (``zh_words``): a common word is cut off or the span dropped.
    """
    from medllm_pipelines.lib.deidentify.text.lexicon import LISTED, NEVER, UNKNOWN, name_lexicon

    out: list[Span] = []
    lexicon = None
    for span in spans:
        if span.label != NAME or span.source not in ("pattern", "tagger"):
            out.append(span)
            continue
        value = text[span.start:span.end]
        words = list(_WORD.finditer(value))
        if "/" in value or ":" in value or any(ch.isdigit() for ch in value):
            # signature initials (JS/mk, XGT:holmes) and dictation codes (FB59): no prose words
            out.append(span)
            continue
        if any("\u3400" <= ch <= "\u9fff" for ch in value):
            # Han text: a common word of jieba's dictionary is never a name (谢谢, 常规, 黄痰; 张伟建议 -> 张伟)
            bounds = (without_common_words(text, span.start, span.end) if zh_common_words and is_han(value)
                      else (span.start, span.end))
            if bounds is not None:
                out.append(span if bounds == (span.start, span.end) else Span(*bounds, span.label, span.score,
                                                                              span.source))
            continue
        if not words:
            out.append(span)
            continue
        if lexicon is None:
            lexicon = name_lexicon()
        keep = [w for w in words if len(w.group()) < 2 or lexicon.kind(w.group()) != NEVER]
        named = [w for w in keep if len(w.group()) >= 2]
        if not named:
            continue
        if span.source == "tagger" and not any(
                w.group()[0].isupper() and lexicon.kind(w.group()) in (LISTED, UNKNOWN) for w in named):
            continue  # the tagger alone: a capitalised word that is a name and not also a word (He, Song, White)
        start, end = span.start + keep[0].start(), span.start + keep[-1].end()
        if start != span.start or end != span.end:
            span = Span(start, end, span.label, span.score, span.source)
        out.append(span)
    return out


_WORD = re.compile(r"[^\W\d_]+(?:['’][^\W\d_]+)?")


@dataclass(frozen=True)
class KnownIdentifiers:
    """Identifiers of the person a text is about, when the caller has them (label -> values)."""

    values: Mapping[str, Sequence[str]] = field(default_factory=dict)

    @cached_property
    def _needles(self) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
        """(label, casefolded value) to find as is, and (label, alphanumerics) to find across separators."""
        plain: list[tuple[str, str]] = []
        compact: list[tuple[str, str]] = []
        for label, values in self.values.items():
            for value in values:
                value = normalise(str(value)).text.strip()
                if len(value) < 2:
                    continue
                if label in _DIGIT_TYPES and sum(ch.isalnum() for ch in value) >= 5:
                    compact.append((label, "".join(ch for ch in value if ch.isalnum()).casefold()))
                else:
                    plain.append((label, value.casefold()))
        by_length = lambda item: -len(item[1])
        return sorted(set(plain), key=by_length), sorted(set(compact), key=by_length)

    def find(self, text: str) -> list[Span]:
        """Occurrences in ``text`` (normalised): names as written, numbers with any separators."""
        plain, compact = self._needles
        found: list[Span] = []
        if plain:
            folded = text.casefold()
            if len(folded) == len(text):
                for label, needle in plain:
                    at = folded.find(needle)
                    while at >= 0:
                        found.append(Span(at, at + len(needle), label, 1.0, "known"))
                        at = folded.find(needle, at + len(needle))
        if compact:
            positions = [i for i, ch in enumerate(text) if ch.isalnum()]
            squeezed = "".join(text[i] for i in positions).casefold()
            if len(squeezed) == len(positions):
                for label, needle in compact:
                    at = squeezed.find(needle)
                    while at >= 0:
                        start, end = positions[at], positions[at + len(needle) - 1] + 1
                        bounded = ((start == 0 or not text[start - 1].isalnum())
                                   and (end == len(text) or not text[end].isalnum()))
                        if bounded:
                            found.append(Span(start, end, label, 1.0, "known"))
                        at = squeezed.find(needle, at + 1)
        return found


@dataclass
class Detector:
    """Patterns (always) and a trained tagger (optional), with name propagation.

    Results for short texts (DICOM descriptors repeat across files) are cached.
    """

    patterns: PatternRecogniser
    tagger: Tagger | None = None
    propagate_names: bool = True
    labels: tuple[str, ...] = ENTITY_TYPES
    name_whitelist: bool = True  # clinical/common words are never names (HEPARIN, CARDIAC, WITH)
    zh_common_words: bool = True  # ... nor common Chinese words (jieba's dictionary: 谢谢, 常规; ``zh_words``)
    cache_max_chars: int = 256
    cache_size: int = 8192
    _cache: dict[str, tuple[Span, ...]] = field(default_factory=dict, repr=False)

    @property
    def version(self) -> dict[str, Any]:
        from medllm_pipelines.lib.deidentify.text.zh_words import dictionary_version

        return {"recognisers": self.patterns.config.version,
                "tagger": None if self.tagger is None else self.tagger.digest,
                "zh_name_whitelist": dictionary_version() if self.name_whitelist and self.zh_common_words else None}

    def detect(self, text: str, *, known: KnownIdentifiers | None = None) -> list[Span]:
        """Identifier spans of ``text``, offsets in the original text, no overlaps."""
        return self.detect_many([text], known=[known] if known is not None else None)[0]

    def detect_many(self, texts: Sequence[str], *,
                    known: Sequence[KnownIdentifiers | None] | None = None) -> list[list[Span]]:
        """Batched detection: the tagger scores all (uncached) texts in one pass."""
        found: list[tuple[Span, ...] | None] = [self._cache.get(t) for t in texts]
        missing = [i for i, spans in enumerate(found) if spans is None]
        if missing:
            for i, spans in zip(missing, self._detect_fresh([texts[i] for i in missing]), strict=True):
                found[i] = spans
                text = texts[i]
                if len(text) <= self.cache_max_chars and len(self._cache) < self.cache_size:
                    self._cache[text] = spans
        results: list[list[Span]] = []
        for i, text in enumerate(texts):
            spans = list(found[i] or ())
            person = known[i] if known is not None else None
            if person is not None and person.values:
                view = normalise(text)
                extra = person.find(view.text)
                if extra:
                    if view.starts is not None:
                        extra = [Span(*view.to_original(s.start, s.end), s.label, s.score, s.source) for s in extra]
                    spans = resolve(spans + extra)
                    if self.propagate_names:
                        spans = self._propagate(text, spans)
            results.append(spans)
        return results

    def _detect_fresh(self, texts: Sequence[str]) -> list[tuple[Span, ...]]:
        views = [normalise(text) for text in texts]
        tagged = self.tagger.spans_many([v.text for v in views]) if self.tagger is not None else None
        out: list[tuple[Span, ...]] = []
        for i, view in enumerate(views):
            spans = self.patterns.find(view.text)
            if tagged is not None:
                spans.extend(s for s in tagged[i] if plausible_tagger_span(view.text, s))
            if self.name_whitelist:
                spans = whitelist_names(view.text, spans, zh_common_words=self.zh_common_words)
            resolved = resolve(spans)
            if self.propagate_names:
                resolved = self._propagate(view.text, resolved)
            resolved = [s for s in resolved if s.label in self.labels]
            if view.starts is not None:
                resolved = [Span(*view.to_original(s.start, s.end), s.label, s.score, s.source) for s in resolved]
            out.append(tuple(resolved))
        return out

    @staticmethod
    def _propagate(text: str, spans: list[Span]) -> list[Span]:
        names = {text[s.start:s.end] for s in spans if s.label == NAME}
        if not names:
            return spans
        extra: list[Span] = []
        taken = [(s.start, s.end) for s in spans]
        needles: set[str] = set()
        for name in names:
            if not any("\u3400" <= ch <= "\u9fff" for ch in name):
                needles.update(t for t in _LATIN_TOKEN.findall(name) if len(t) >= 3 and t[0].isupper())
                if " " in name:
                    needles.add(name)
            elif len(name) >= 2:
                needles.add(name)
        for needle in sorted(needles, key=len, reverse=True):
            latin = not any("\u3400" <= ch <= "\u9fff" for ch in needle)
            at = text.find(needle)
            while at >= 0:
                end = at + len(needle)
                bounded = not latin or ((at == 0 or not text[at - 1].isalnum())
                                        and (end == len(text) or not text[end].isalnum()))
                if bounded and not any(s < end and at < e for s, e in taken):
                    extra.append(Span(at, end, NAME, 0.9, "propagated"))
                    taken.append((at, end))
                at = text.find(needle, end)
        return sorted(spans + extra) if extra else spans


def build_detector(*, tagger: Tagger | None = None, config: PatternConfig | None = None,
                   institutions: Iterable[str] | None = None,
                   extra_mrn_patterns: Mapping[str, Iterable[Mapping[str, Any]]] | None = None) -> Detector:
    """A detector from the recogniser data file (optionally narrowed to some institutions' MRNs)."""
    if config is None:
        config = load_pattern_config(institutions=institutions, extra_mrn_patterns=extra_mrn_patterns)
    return Detector(PatternRecogniser(config), tagger)
