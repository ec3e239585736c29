"""Validated pattern recognisers for Chinese and English clinical free text.

Shapes alone are weak evidence (an 18-digit run may be a lab accession, an
8-digit one a date), so each recogniser validates what it can: the GB 11643
check character and birth date of a resident ID, the mobile plan prefix of a
Chinese phone, month/day ranges of a date. Where validation is impossible
(a record number, a bare name) a context cue is required, taken from
``recognisers.yaml``. Recognisers run on the normalised text (see ``spans``);
scores: 1.0 validated, 0.9 validated shape + cue, 0.7-0.85 cue or list only.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from medllm_pipelines.lib.deidentify.text.spans import (
    ADDRESS,
    DATE,
    EMAIL,
    ID_NUMBER,
    MRN,
    NAME,
    PHONE,
    Span,
)
from medllm_pipelines.lib.deidentify.text.vocabulary import HAN, alternation

RECOGNISERS_PATH = Path(__file__).with_name("recognisers.yaml")

# GB 11643-1999: ISO 7064 MOD 11-2 over the first 17 digits.
_RID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_RID_CHECK = "10X98765432"
# First two digits of a resident ID: province-level division codes.
_PROVINCE_CODES = frozenset({
    11, 12, 13, 14, 15, 21, 22, 23, 31, 32, 33, 34, 35, 36, 37, 41, 42, 43, 44, 45, 46,
    50, 51, 52, 53, 54, 61, 62, 63, 64, 65, 71, 81, 82, 83,
})


def resident_id_check_char(first17: str) -> str:
    """The GB 11643 check character of a 17-digit resident ID body."""
    total = sum(int(d) * w for d, w in zip(first17, _RID_WEIGHTS, strict=True))
    return _RID_CHECK[total % 11]


def _valid_birth_date(text: str) -> bool:
    try:
        born = date(int(text[:4]), int(text[4:6]), int(text[6:8]))
    except ValueError:
        return False
    return 1900 <= born.year <= 2100


def resident_id_status(compact: str) -> str:
    """``valid``, ``bad_check`` (plausible shape, wrong check char) or ``invalid``."""
    if len(compact) != 18 or not compact[:17].isdigit() or compact[17] not in "0123456789Xx":
        return "invalid"
    if int(compact[:2]) not in _PROVINCE_CODES or not _valid_birth_date(compact[6:14]):
        return "invalid"
    return "valid" if resident_id_check_char(compact[:17]) == compact[17].upper() else "bad_check"


def is_valid_resident_id(value: str) -> bool:
    """Whether ``value`` (separators allowed) is a resident ID with a correct check character."""
    return resident_id_status(re.sub(r"[ \-]", "", value)) == "valid"


# After-cues that also follow ordinary words (高血压患者, 安全家属区): the name before them needs given characters.
_ZH_WEAK_AFTER = frozenset({"患者", "家属", "本人", "今年", "年龄"})


@dataclass(frozen=True)
class MrnPattern:
    institution: str
    pattern: str
    context_required: bool


@dataclass(frozen=True)
class PatternConfig:
    """The interpreted ``recognisers.yaml`` (plus per-deployment MRN formats)."""

    version: str
    cue_window: int
    cues: Mapping[str, tuple[str, ...]]
    mrn_patterns: tuple[MrnPattern, ...]
    name_cues_zh_before: tuple[str, ...]
    name_cues_zh_after: tuple[str, ...]
    zh_surnames: frozenset[str]
    zh_compound_surnames: tuple[str, ...]
    zh_given_chars: frozenset[str]
    zh_name_stopwords: frozenset[str]
    en_titles: tuple[str, ...]
    en_cues_before: tuple[str, ...]
    en_cues_after: tuple[str, ...]
    en_stopwords: frozenset[str]
    en_given_names: frozenset[str]
    zh_provinces: tuple[str, ...]
    zh_address_cues: tuple[str, ...]
    zh_street_suffixes: tuple[str, ...]
    en_street_suffixes: tuple[str, ...]
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)


def _words(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        return tuple(value.split())
    return tuple(str(v) for v in value)


def _chars(value: str) -> frozenset[str]:
    return frozenset(ch for ch in value if not ch.isspace())


def load_pattern_config(path: Path = RECOGNISERS_PATH, *, institutions: Iterable[str] | None = None,
                        extra_mrn_patterns: Mapping[str, Iterable[Mapping[str, Any]]] | None = None
                        ) -> PatternConfig:
    """Read the recogniser data file.

    Args:
        institutions: MRN formats to enable (codes in ``mrn_patterns``); None
            enables all. ``default`` (cue-required generic) is always on.
        extra_mrn_patterns: more formats, same shape as the file's section, for
            institutions onboarded after this version.
    """
    raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    sections = dict(raw["mrn_patterns"])
    for code, patterns in (extra_mrn_patterns or {}).items():
        sections[code] = list(sections.get(code, [])) + list(patterns)
    wanted = None if institutions is None else set(institutions) | {"default"}
    mrn = tuple(
        MrnPattern(code, str(p["pattern"]), str(p.get("context", "required")) == "required")
        for code, patterns in sections.items()
        if wanted is None or code in wanted
        for p in patterns
    )
    return PatternConfig(
        version=str(raw["version"]),
        cue_window=int(raw["cue_window"]),
        cues={kind: _words_list(v) for kind, v in raw["cues"].items()},
        mrn_patterns=mrn,
        name_cues_zh_before=tuple(raw["name_cues_zh"]["before"]),
        name_cues_zh_after=tuple(raw["name_cues_zh"]["after"]),
        zh_surnames=_chars(raw["zh_surnames"]),
        zh_compound_surnames=tuple(raw["zh_compound_surnames"]),
        zh_given_chars=_chars(raw["zh_given_chars"]),
        zh_name_stopwords=frozenset(raw.get("zh_name_stopwords") or ()),
        en_titles=tuple(raw["en_titles"]),
        en_cues_before=tuple(raw["en_cues_before"]),
        en_cues_after=tuple(raw["en_cues_after"]),
        en_stopwords=frozenset(raw["en_stopwords"]),
        en_given_names=frozenset(_words(raw["en_given_names"])),
        zh_provinces=tuple(raw["zh_provinces"]),
        zh_address_cues=tuple(raw["zh_address_cues"]),
        zh_street_suffixes=tuple(raw["zh_street_suffixes"]),
        en_street_suffixes=_words(raw["en_street_suffixes"]),
        raw=raw,
    )


def _words_list(value: Any) -> tuple[str, ...]:
    return tuple(str(v) for v in value)


def _case_variants(words: Iterable[str]) -> list[str]:
    """lower, Capitalised and UPPER forms: a literal alternation keeps re's first-character scan fast."""
    out: list[str] = []
    for word in words:
        out += [word, word.lower(), word.upper(), word[:1].upper() + word[1:]]
    return out


def _charclass(chars: Iterable[str]) -> str:
    return "[" + "".join(re.escape(c) for c in sorted(set(chars))) + "]"


_MONTHS = ("Jan(?:uary)?|Feb(?:ruary)?|Mar(?:ch)?|Apr(?:il)?|May|Jun(?:e)?|Jul(?:y)?|Aug(?:ust)?|"
           "Sep(?:t(?:ember)?)?|Oct(?:ober)?|Nov(?:ember)?|Dec(?:ember)?")


_UPPER = re.compile("[A-Z]")
_DIGIT = re.compile(r"\d")
_ZH_NUMERALS = frozenset("一二三四五六七八九十百零")
_MONTH_STEMS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_DATE_PARTS = re.compile(r"\d+")


def _plausible_date(value: str) -> bool:
    """Year-month-day (or month/day/year) with a year 1900-2099 and real month and day numbers."""
    parts = [int(x) for x in _DATE_PARTS.findall(value)]
    if len(parts) != 3:
        return False
    if 1900 <= parts[0] <= 2099:
        year, month, day = parts
    elif 1900 <= parts[2] <= 2099 and "/" in value:
        month, day, year = parts
    else:
        return False
    try:
        date(year, month, day)
    except ValueError:
        return False
    return True


class PatternRecogniser:
    """All pattern recognisers compiled once; ``find`` works on normalised text."""

    def __init__(self, config: PatternConfig | None = None) -> None:
        self.config = config if config is not None else default_pattern_config()
        c = self.config
        sep = r"[ \-]?"
        self._id18 = re.compile(rf"(?<![0-9A-Za-z])([1-8]\d(?:{sep}\d){{15}}{sep}[\dXx])(?![0-9A-Za-z])")
        self._id15 = re.compile(r"(?<![0-9A-Za-z])([1-8]\d{5}\d{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])\d{3})"
                                r"(?![0-9A-Za-z])")
        self._mobile = re.compile(r"(?<![0-9A-Za-z+])(?<!\d[ \-])((?:(?:\+|00)86[ \-]?)?1[3-9]\d(?:[ \-]?\d){8})"
                                  r"(?!\d)(?![ \-]\d)")
        self._landline = re.compile(r"(?<![0-9A-Za-z+])((?:(?:\+|00)86[ \-]?)?(?:\(0\d{2,3}\)[ ]?|0\d{2,3}[ \-])"
                                    r"\d{3,4}[ \-]?\d{4}(?:[ ]?(?:转|ext\.?|x)[ ]?\d{1,5})?)(?!\d)")
        self._nanp = re.compile(r"(?<![\w+])((?:(?:\+1|001)[ \-.]?)?(?:\(\d{3}\)[ ]?|\d{3}[\-. ])\d{3}[\-. ]\d{4}"
                                r"(?:[ ]?(?:x|ext\.?|#)[ ]?\d{1,6})?)(?!\d)")
        self._number_token = re.compile(
            r"[+(]?\d(?:[\d \-.()]*\d)?(?:[Xx](?![\dA-Za-z]))?(?:[ ]?(?:x|ext\.?|#|转)[ ]?\d{1,6})?")
        cue_gap = r"[^\dA-Za-z\n]{0,4}?"
        self._phone_cue = re.compile(rf"(?:{alternation(_case_variants(c.cues['PHONE']))}){cue_gap}"
                                     r"((?:\+|00)?\d[\d \-.()]{5,20}\d(?:[ ]?(?:x|ext\.?)[ ]?\d{1,6})?)")
        self._id_cue = re.compile(rf"(?i:{alternation(c.cues['ID_NUMBER'])})[^\dA-Za-z\n]{{0,{c.cue_window}}}$")
        self._email = re.compile(r"(?<![\w.%+\-])([A-Za-z0-9._%+\-]+@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)*\.[A-Za-z]{2,})"
                                 r"(?![\w\-])")
        mrn_cue = rf"(?:{alternation(_case_variants(c.cues['MRN']))})[^\dA-Za-z\n]{{0,4}}?(?:[Nn]o\.?\s*)?"
        free = [p.pattern for p in c.mrn_patterns if not p.context_required]
        cued = [p.pattern for p in c.mrn_patterns if p.context_required] + free
        self._mrn_free = (re.compile(rf"((?:{'|'.join(free)}))(?![0-9A-Za-z])") if free else None)
        self._mrn_cued = (re.compile(rf"{mrn_cue}((?:{'|'.join(cued)}))(?![0-9A-Za-z])") if cued else None)
        self._dates = re.compile(r"\d{1,4}(?:([\-/.])\d{1,2}\1\d{1,4}|年\d{1,2}月\d{1,2}[日号]?)")
        self._dates_en = re.compile(
            rf"(?:{_MONTHS})\.? (?:0?[1-9]|[12]\d|3[01])(?:st|nd|rd|th)?,? (?:19|20)\d{{2}}\b"
            rf"|(?:0?[1-9]|[12]\d|3[01]) (?:{_MONTHS})\.?,? (?:19|20)\d{{2}}\b"
        )
        from medllm_pipelines.lib.deidentify.text.prose import ProseRecogniser

        self._prose = ProseRecogniser(c.raw) if c.raw.get("en_relative_cues") is not None else None
        self._zh_name_rules(c)
        self._en_names, self._en_pair = self._compile_en_names(c)
        self._zh_address, self._zh_address_anchor = self._compile_zh_address(c)
        self._en_address_full = re.compile(
            r"(\d{1,6}(?: [A-Z][A-Za-z'.\-]*){1,5}(?:,? (?:Apt\.?|Suite|Unit|Ste\.?|#) ?[\w\-]+)?"
            r", [A-Z][A-Za-z.'\-]*(?: [A-Z][A-Za-z.'\-]*){0,3}, [A-Z]{2} \d{5}(?:-\d{4})?)(?!\d)")
        self._en_address_street = re.compile(
            rf"(\d{{1,6}}(?:[A-Z](?![\w])|-\d{{1,6}})?(?: 1/2| ½)? (?:[A-Z][A-Za-z'\-]+ ){{1,3}}(?:{alternation(c.en_street_suffixes)})\.?"
            r"(?: (?:Apt\.?|Suite|Unit|Ste\.?|#) ?[\w\-]+)?)(?![\w])")

    # --- compilation helpers --------------------------------------------------------
    def _zh_name_rules(self, c: PatternConfig) -> None:
        self._zh_before = re.compile(f"(?:{alternation(c.name_cues_zh_before)})[:\\s]*")
        self._zh_after = re.compile(alternation(c.name_cues_zh_after))
        self._zh_after_words = tuple(sorted(set(c.name_cues_zh_after), key=len, reverse=True))
        self._han_run = re.compile(f"[{HAN}]+")
        self._zh_title = re.compile(alternation(c.raw.get("zh_clinician_titles") or ["医生"]))
        self._surnames = c.zh_surnames
        self._compound = frozenset(c.zh_compound_surnames)
        self._given = c.zh_given_chars

    def _surname_length(self, text: str, at: int) -> int:
        """Length of a surname starting at ``at`` (compound first), 0 if none."""
        if text[at:at + 2] in self._compound:
            return 2
        return 1 if at < len(text) and text[at] in self._surnames else 0

    @staticmethod
    def _is_han(char: str) -> bool:
        return "\u4e00" <= char <= "\u9fff" or "\u3400" <= char <= "\u4dbf"

    def _ends_name(self, text: str, at: int) -> bool:
        return at >= len(text) or not self._is_han(text[at]) or text.startswith(self._zh_after_words, at)

    @staticmethod
    def _compile_en_names(c: PatternConfig) -> tuple[list[tuple[re.Pattern[str], float]], re.Pattern[str]]:
        token = r"[A-Z](?:[a-z]+|'[A-Z][a-z]+)(?:[A-Z][a-z]+)?(?:-[A-Z][a-z]+)?"
        full = rf"{token}(?: (?:[A-Z]\. )?{token}){{0,2}}"
        titles = alternation(c.en_titles)
        before = alternation(c.en_cues_before)
        after = alternation(c.en_cues_after)
        rules = [
            (re.compile(rf"(?:{titles})\.? ({full})"), 0.9),
            (re.compile(rf"(?:{before}) ({full})"), 0.85),
            (re.compile(rf"({token}(?: (?:[A-Z]\. )?{token}){{1,2}})(?={after})"), 0.85),
            (re.compile(rf"(?m)^({token} {token})(?= \(| is | was |, )"), 0.85),
        ]
        pair = re.compile(rf"({token})( {token}(?: {token})?)(?![\w])")
        return rules, pair

    @staticmethod
    def _compile_zh_address(c: PatternConfig) -> tuple[re.Pattern[str], re.Pattern[str]]:
        province = f"(?:{alternation(c.zh_provinces)})"
        han = f"[{HAN}]"
        city = f"(?:{han}{{1,5}}?(?:市|自治州|地区|盟))"
        district = f"(?:{han}{{1,6}}?(?:区|县|旗|市))"
        street = f"(?:[{HAN}0-9]{{1,8}}?(?:{alternation(c.zh_street_suffixes)}))"
        number = r"(?:\d{1,5}|[一二三四五六七八九十百零]+)号"
        unit = r"(?:\d{1,4}(?:栋|幢|号楼|座))?(?:\d{1,3}单元)?(?:\d{1,3}(?:层|楼))?(?:\d{1,5}室)?"
        body = f"(?:{province})?{city}?{district}?{street}{number}{unit}"
        # searched only in a window before each "<number>号" anchor (re has no fast scan for Han text)
        return re.compile(body), re.compile("号")

    # --- recognition ----------------------------------------------------------------
    def find(self, text: str) -> list[Span]:
        """Every pattern hit in ``text`` (already normalised); overlaps unresolved."""
        spans: list[Span] = []
        has_han = not text.isascii()
        has_upper = _UPPER.search(text) is not None
        has_digit = _DIGIT.search(text) is not None
        if has_digit:
            self._find_numbers(text, spans)
            self._find_mrns(text, spans)
            self._find_dates(text, spans, has_upper)
            self._find_addresses(text, spans, has_han, has_upper)
        if "@" in text:
            spans.extend(Span(m.start(1), m.end(1), EMAIL, 1.0) for m in self._email.finditer(text))
        if has_han:
            self._find_zh_names(text, spans)
        if has_upper:
            self._find_en_names(text, spans)
        if self._prose is not None:
            self._prose.find(text, spans, has_han=has_han, has_upper=has_upper, has_digit=has_digit)
        return spans

    def _cue_before(self, text: str, start: int, kind: str) -> bool:
        window = text[max(0, start - self.config.cue_window - 12):start]
        return bool(self._id_cue.search(window)) if kind == ID_NUMBER else False

    def _find_numbers(self, text: str, spans: list[Span]) -> None:
        """IDs and phones: one scan for digit runs, then the validated shapes inside each long run."""
        for token in self._number_token.finditer(text):
            value = token.group()
            if len(value) < 7:
                continue
            digits = sum(map(str.isdigit, value))
            if digits < 7:
                continue
            base = token.start()
            if base > 0 and text[base - 1].isalnum() and text[base - 1].isascii():
                continue  # inside a code such as RV1000019 or HbA1c
            if digits >= 15:
                self._ids_in(text, value, base, spans)
            for pattern, score in ((self._mobile, 1.0), (self._landline, 0.95), (self._nanp, 0.95)):
                for match in pattern.finditer(value):
                    spans.append(Span(base + match.start(1), base + match.end(1), PHONE, score))
        for match in self._phone_cue.finditer(text):
            value = match.group(1).rstrip(" -.(")
            digits = sum(ch.isdigit() for ch in value)
            if 7 <= digits <= 15:
                spans.append(Span(match.start(1), match.start(1) + len(value), PHONE, 0.85))

    def _ids_in(self, text: str, value: str, base: int, spans: list[Span]) -> None:
        for match in self._id18.finditer(value):
            compact = match.group(1).replace(" ", "").replace("-", "")
            status = resident_id_status(compact)
            start, end = base + match.start(1), base + match.end(1)
            if status == "valid":
                spans.append(Span(start, end, ID_NUMBER, 1.0))
            elif status == "bad_check" and self._cue_before(text, start, ID_NUMBER):
                spans.append(Span(start, end, ID_NUMBER, 0.8))
        for match in self._id15.finditer(value):
            start = base + match.start(1)
            if int(match.group(1)[:2]) in _PROVINCE_CODES and self._cue_before(text, start, ID_NUMBER):
                spans.append(Span(start, base + match.end(1), ID_NUMBER, 0.8))

    def _find_mrns(self, text: str, spans: list[Span]) -> None:
        if self._mrn_free is not None:
            spans.extend(Span(m.start(1), m.end(1), MRN, 0.95) for m in self._mrn_free.finditer(text)
                         if m.start() == 0 or not (text[m.start() - 1].isascii() and text[m.start() - 1].isalnum()))
        if self._mrn_cued is not None:
            spans.extend(Span(m.start(1), m.end(1), MRN, 0.9) for m in self._mrn_cued.finditer(text))

    def _find_dates(self, text: str, spans: list[Span], has_upper: bool) -> None:
        for match in self._dates.finditer(text):
            start = match.start()
            if (start == 0 or not text[start - 1].isdigit()) and _plausible_date(match.group()):
                end = match.end()
                if end < len(text) and text[end].isdigit():
                    continue
                spans.append(Span(start, end, DATE, 0.95))
        if has_upper and any(month in text for month in _MONTH_STEMS):
            for match in self._dates_en.finditer(text):
                if match.start() == 0 or not text[match.start() - 1].isalnum():
                    spans.append(Span(match.start(), match.end(), DATE, 0.95))

    def _find_addresses(self, text: str, spans: list[Span], has_han: bool, has_upper: bool) -> None:
        if has_han:
            covered = -1
            at = text.find("号")
            while at > 0:
                if at > covered and (text[at - 1].isdigit() or text[at - 1] in _ZH_NUMERALS):
                    window_start = max(0, at - 44)
                    for match in self._zh_address.finditer(text, window_start, min(len(text), at + 24)):
                        if match.start() < at < match.end():
                            start = self._address_start(text, match.start(), at)
                            spans.append(Span(start, match.end(), ADDRESS, 0.95))
                            covered = match.end()
                            break
                at = text.find("号", at + 1)
        if has_upper:
            for match in self._en_address_full.finditer(text):
                if match.start() == 0 or not text[match.start() - 1].isalnum():
                    spans.append(Span(match.start(1), match.end(1), ADDRESS, 1.0))
            for match in self._en_address_street.finditer(text):
                if match.start() == 0 or not text[match.start() - 1].isalnum():
                    spans.append(Span(match.start(1), match.end(1), ADDRESS, 0.85))

    def _address_start(self, text: str, start: int, anchor: int) -> int:
        """Move a match start past words that are not address: 现住, 住在, 患者..."""
        value = text[start:anchor]
        cut = 0
        for cue in self.config.zh_address_cues:
            at = value.rfind(cue)
            if at >= 0:
                cut = max(cut, at + len(cue))
        for province in self.config.zh_provinces:  # a province name starts an address
            at = value.find(province)
            if at > cut:
                cut = at
                break
        return start + cut

    def _find_zh_names(self, text: str, spans: list[Span]) -> None:
        given = self._given
        # a cue before: the shortest name that ends at a non-Han char or a cue after,
        # else a surname with common given characters
        for cue in self._zh_before.finditer(text):
            at = cue.end()
            surname = self._surname_length(text, at)
            if not surname:
                continue
            body = at + surname
            for length in (1, 2):
                end = body + length
                if text[at:end] in self.config.zh_name_stopwords:
                    break
                if end <= len(text) and all(self._is_han(ch) for ch in text[body:end]) and self._ends_name(text, end):
                    spans.append(Span(at, end, NAME, 0.9))
                    break
            else:
                for length in (2, 1):
                    end = body + length
                    if end <= len(text) and all(ch in given for ch in text[body:end]):
                        spans.append(Span(at, end, NAME, 0.8))
                        break
        # a cue after (自述, 先生...): look back one to three characters
        for cue in self._zh_after.finditer(text):
            end = cue.start()
            for length in (3, 2, 4):
                start = end - length
                if start < 0:
                    continue
                surname = self._surname_length(text, start)
                if not surname or surname >= length:
                    continue
                name = text[start:end]
                if not all(self._is_han(ch) for ch in name) or name in self.config.zh_name_stopwords:
                    continue
                boundary = start == 0 or not self._is_han(text[start - 1])
                # after a weak cue (患者, 家属, 今年, 的儿子...) a disease or a word also precedes it
                # (高血压患者): there the given name must look like one
                weak = cue.group() in _ZH_WEAK_AFTER or cue.group().startswith("的")
                if boundary and (not weak or all(ch in given for ch in name[surname:])):
                    spans.append(Span(start, end, NAME, 0.85))
                    break
                if all(ch in given for ch in name[surname:]):
                    spans.append(Span(start, end, NAME, 0.75))
                    break
        # a bare surname before a clinician's title (王医生, 张主任, 欧阳护士)
        for match in self._zh_title.finditer(text):
            end = match.start()
            for length in (2, 1):
                start = end - length
                if start >= 0 and self._surname_length(text, start) == length and (
                        start == 0 or not self._is_han(text[start - 1]) or text[start - 1] in "由和与及、，请找问叫让是位名"
                        or text[max(0, start - 2):start] in ("今日", "今天", "昨天", "上午", "下午", "晚上", "经过", "已由", "通知")):
                    spans.append(Span(start, end, NAME, 0.75))
                    break
        # standing alone between non-Han characters (a descriptor, a comment field)
        for run in self._han_run.finditer(text):
            value = run.group()
            if 2 <= len(value) <= 4:
                surname = self._surname_length(value, 0)
                if (surname and 1 <= len(value) - surname <= 2 and all(ch in given for ch in value[surname:])
                        and value not in self.config.zh_name_stopwords):
                    spans.append(Span(run.start(), run.end(), NAME, 0.7))

    def _find_en_names(self, text: str, spans: list[Span]) -> None:
        stop = self.config.en_stopwords
        for pattern, score in self._en_names:
            for match in pattern.finditer(text):
                value = match.group(1)
                words = value.split()
                while words and words[-1] in stop:
                    words.pop()
                first = 0
                while first < len(words) and words[first] in stop:
                    first += 1
                words = words[first:]
                if not words:
                    continue
                start = match.start(1) + value.index(words[0])
                end = start + len(" ".join(words))
                if text[start:end] == " ".join(words):
                    spans.append(Span(start, end, NAME, score))
        given_names = self.config.en_given_names
        for match in self._en_pair.finditer(text):
            if match.group(1) in given_names and (match.start() == 0 or not text[match.start() - 1].isalnum()):
                rest = match.group(2).split()
                if rest and rest[0] not in stop:
                    end = match.end(1) + 1 + len(rest[0])
                    if len(rest) > 1 and rest[1] not in stop:
                        end = match.end()
                    spans.append(Span(match.start(1), end, NAME, 0.7))


@lru_cache(maxsize=1)
def default_pattern_config() -> PatternConfig:
    return load_pattern_config()
