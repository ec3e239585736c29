"""The triage knowledge: departments, symptom synonyms, disease graph and red flags, read from versioned YAML.

PyCMeKG is not in a package registry we can reach, so a curated graph (``knowledge_graph.yaml``) stands in for
it. Every file is read with ``yaml.safe_load``: plain data, no object construction. A pickled graph (as PyCMeKG
ships) would need a restricted ``pickle.Unpickler`` whose ``find_class`` allows only a handful of types, since
unpickling runs arbitrary code; keeping the knowledge as data files avoids pickle altogether, and lets a
reviewer diff a clinical change line by line (pydicom/deid keeps its rules the same way).

Symptom detection is dictionary matching with NegEx-style negation: a negation cue ("no", "denies", "没有")
negates a mention that follows it within the same clause and a few words; cues inside another mention ("can't
catch my breath", "喘不上气") or inside a pseudo-negation ("not sure", "不停") negate nothing. Both languages'
patterns run on every message, so a patient may switch language mid-session.
"""

from __future__ import annotations

import functools
import hashlib
import math
import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "DATA_DIR",
    "LANGUAGES",
    "Department",
    "Disease",
    "KnowledgeDataError",
    "KnowledgeGraph",
    "Mention",
    "RedFlagRule",
    "Symptom",
    "SymptomMatcher",
    "load_knowledge",
    "normalise_text",
]

DATA_DIR = Path(__file__).resolve().parent
LANGUAGES = ("en", "zh")
DATA_FILES = ("departments", "symptoms", "knowledge_graph", "red_flags")
ANSWER_YES, ANSWER_NO, ANSWER_UNKNOWN = "yes", "no", "unknown"

# Clause boundaries for negation scope and for reading a yes/no answer. The Chinese enumeration comma (、) is not
# one: "没有发烧、咳嗽" negates both.
_CLAUSE_BREAK = re.compile(r"[.;:!?。；：！？\n,，()（）]")
# Filler a Chinese `*` may skip: degree adverbs, 口/部 of body parts, aspect and structural particles.
_ZH_GAP = "[很有点些非常特别太好挺蛮一直老是总常经阵也都还又开始突然剧烈隐部口里上下在会得的地觉感到稍微儿就了着像]{0,4}"
# A gap never crosses a negation ("my chest doesn't hurt" is no mention of chest pain, rather than a positive one).
_EN_NEGATION_WORD = r"(?:no|not|never|don't|doesn't|didn't|isn't|aren't|wasn't|weren't|haven't|hasn't)(?![\w'])"
_EN_GAP = rf"\s+(?:(?!{_EN_NEGATION_WORD})[\w']+\s+){{0,4}}"
_EN_WORD = r"[\w']"
_PATTERN_QUOTES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'", "\u201c": '"', "\u201d": '"'})
_QUOTES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'", "\u201c": '"', "\u201d": '"',
                         "-": " ", "\u2013": " "})


class KnowledgeDataError(ValueError):
    """A knowledge file is missing a field or refers to something no other file defines."""


def normalise_text(text: str) -> str:
    """NFKC, case folding, straight quotes, hyphens as spaces: patterns are written against this form."""
    return unicodedata.normalize("NFKC", text).casefold().translate(_QUOTES)


def _compile_pattern(pattern: str, language: str) -> str:
    """One synonym of the mini-syntax of symptoms.yaml as a regular expression (see the file's header)."""
    # Hyphens are kept here (a class such as [0-9] needs them); outside a class one stands for a space.
    pattern = unicodedata.normalize("NFKC", pattern).casefold().translate(_PATTERN_QUOTES).strip().rstrip("*").strip()
    out: list[str] = []
    in_class = False
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        if in_class:
            out.append(ch)
            in_class = ch != "]"
        elif ch == "[":
            out.append(ch)
            in_class = True
        elif ch == "~":
            out.append(f"{_EN_WORD}*" if language == "en" else "")
        elif ch == "*":
            if language == "en":
                while out and out[-1] == r"\s+":
                    out.pop()
                out.append(_EN_GAP)
                while i + 1 < len(pattern) and pattern[i + 1] == " ":
                    i += 1
            else:
                out.append(_ZH_GAP)
        elif ch == " ":
            if i + 1 < len(pattern) and pattern[i + 1] == "?":
                out.append(r"\s*")
                i += 1
            elif language == "en":
                out.append(r"\s+")
        elif ch == "-":
            out.append(r"\s+")
        elif ch == "(":
            out.append("(?:")
        elif ch in ")|?+":
            out.append(ch)
        else:
            out.append(re.escape(ch))
        i += 1
    body = "".join(out)
    if language == "en":
        return rf"(?<![\w']){body}(?![\w])"
    return body


def _alternation(patterns: Iterable[str], language: str) -> re.Pattern[str] | None:
    compiled = [_compile_pattern(p, language) for p in patterns if str(p).strip()]
    if not compiled:
        return None
    # Longest first, so that an alternation prefers "night sweats" over "night".
    return re.compile("|".join(sorted(compiled, key=len, reverse=True)))


def _phrase_regex(phrases: Iterable[str], language: str) -> re.Pattern[str] | None:
    """Literal phrases (cues, terminators, answers) as one regex, whole words in English."""
    words = sorted({normalise_text(p).strip() for p in phrases if str(p).strip()}, key=len, reverse=True)
    if not words:
        return None
    body = "|".join(re.escape(w).replace(r"\ ", r"\s+") for w in words)
    if language == "en":
        return re.compile(rf"(?<![\w'])(?:{body})(?![\w])")
    return re.compile(f"(?:{body})")


@dataclass(frozen=True)
class Department:
    """A department the engine may recommend; ``model_class`` links it to the triage model's classes."""

    code: str
    model_class: str | None
    name_en: str
    name_zh: str
    advice_en: str
    advice_zh: str

    def name(self, language: str) -> str:
        return self.name_zh if language == "zh" else self.name_en

    def advice(self, language: str) -> str:
        return self.advice_zh if language == "zh" else self.advice_en

    def as_dict(self) -> dict[str, str]:
        return {"code": self.code, "name_en": self.name_en, "name_zh": self.name_zh}


@dataclass(frozen=True)
class Symptom:
    """A standard presenting-symptom term, its ICD-10 code and the follow-up question that asks for it."""

    id: str
    icd10: str
    term_en: str
    term_zh: str
    question_en: str
    question_zh: str
    implies: tuple[str, ...] = ()

    def term(self, language: str) -> str:
        return self.term_zh if language == "zh" else self.term_en

    def question(self, language: str) -> str:
        return self.question_zh if language == "zh" else self.question_en


@dataclass(frozen=True)
class Disease:
    """A node of the graph: P(symptom | disease) per linked symptom, its department and relative frequency."""

    id: str
    icd10: str
    name_en: str
    name_zh: str
    department: str
    prior: float
    symptoms: Mapping[str, float]


@dataclass(frozen=True)
class RedFlagRule:
    """Symptoms that send the patient to emergency care, whatever any model says."""

    id: str
    all_of: tuple[str, ...]
    any_of: tuple[str, ...]
    escalation: str
    description_en: str
    description_zh: str
    advice_en: str
    advice_zh: str
    screen_with: tuple[str, ...] = ()

    def fires(self, present: set[str]) -> bool:
        return all(s in present for s in self.all_of) and (not self.any_of or any(s in present for s in self.any_of))

    def description(self, language: str) -> str:
        return self.description_zh if language == "zh" else self.description_en

    def advice(self, language: str) -> str:
        return self.advice_zh if language == "zh" else self.advice_en


@dataclass(frozen=True)
class Mention:
    """A symptom found in a message: where, and whether the patient said they have it."""

    symptom_id: str
    present: bool
    start: int
    end: int


@dataclass(frozen=True)
class _Negation:
    cues: re.Pattern[str] | None
    pseudo: re.Pattern[str] | None
    terminators: re.Pattern[str] | None
    window: int


class SymptomMatcher:
    """Finds symptom mentions (with negation) and reads yes/no answers, in English and Chinese."""

    def __init__(self, symptoms_raw: Mapping[str, Any]) -> None:
        self._patterns: list[tuple[str, str, re.Pattern[str]]] = []
        self._masks = {entry["id"]: frozenset(entry.get("masks") or ()) for entry in symptoms_raw["symptoms"]}
        for entry in symptoms_raw["symptoms"]:
            for language in LANGUAGES:
                regex = _alternation(entry.get(language) or [], language)
                if regex is not None:
                    self._patterns.append((entry["id"], language, regex))
        self._negation = {
            language: _Negation(
                _phrase_regex(spec.get("cues", []), language),
                _phrase_regex(spec.get("pseudo", []), language),
                _phrase_regex(spec.get("terminators", []), language),
                int(spec.get("window", 6)),
            )
            for language, spec in symptoms_raw["negation"].items()
        }
        answers: list[tuple[str, str, str]] = []
        for language, kinds in symptoms_raw["answers"].items():
            for kind in (ANSWER_YES, ANSWER_NO, ANSWER_UNKNOWN):
                answers.extend((normalise_text(p).strip(), kind, language) for p in kinds.get(kind, []))
        # Longest first: "not sure" is unknown before "no" is no; "i don't" is no before "i do" is yes.
        self._answers = sorted(answers, key=lambda a: len(a[0]), reverse=True)

    def find(self, text: str) -> list[Mention]:
        """Symptom mentions of ``text`` in order.

        A mention inside a longer mention of a symptom that ``masks`` it is dropped ("night sweats" is not
        also "sweating"); other overlaps are kept ("hurt my lower back lifting" is an injury and back pain).
        """
        norm = normalise_text(text)
        raw: list[tuple[str, str, int, int]] = []
        for symptom_id, language, regex in self._patterns:
            raw.extend((symptom_id, language, m.start(), m.end()) for m in regex.finditer(norm) if m.end() > m.start())
        kept = [r for r in raw
                if not any(o[2] <= r[2] and r[3] <= o[3] and (o[3] - o[2]) > (r[3] - r[2]) and r[0] in self._masks[o[0]]
                           for o in raw)]
        spans = [(r[2], r[3]) for r in kept]
        mentions: dict[tuple[str, int], Mention] = {}
        for symptom_id, language, start, end in sorted(kept, key=lambda r: (r[2], r[3])):
            negated = self._negated(norm, start, spans, language)
            key = (symptom_id, start)
            if key not in mentions:
                mentions[key] = Mention(symptom_id, not negated, start, end)
        return list(mentions.values())

    def _negated(self, norm: str, start: int, spans: Sequence[tuple[int, int]], language: str) -> bool:
        rules = self._negation.get(language)
        if rules is None or rules.cues is None:
            return False
        clause_start = 0
        for m in _CLAUSE_BREAK.finditer(norm, 0, start):
            clause_start = m.end()
        if rules.terminators is not None:
            for m in rules.terminators.finditer(norm, clause_start, start):
                if not _inside(m.start(), m.end(), spans):
                    clause_start = max(clause_start, m.end())
        pseudo = ([(m.start(), m.end()) for m in rules.pseudo.finditer(norm, clause_start, start)]
                  if rules.pseudo else [])
        for cue in rules.cues.finditer(norm, clause_start, start):
            if _inside(cue.start(), cue.end(), spans) or _inside(cue.start(), cue.end(), pseudo):
                continue
            between = norm[cue.end():start]
            distance = len(between.split()) if language == "en" else len(between.strip())
            if distance <= rules.window:
                return True
        return False

    @staticmethod
    def first_clause_end(text: str) -> int:
        """Where the first clause of ``text`` ends (offsets of the normalised text, as in ``Mention``)."""
        match = _CLAUSE_BREAK.search(normalise_text(text))
        return match.start() if match else len(normalise_text(text))

    def answer(self, text: str) -> str | None:
        """How the first clause of ``text`` answers a yes/no question: "yes", "no", "unknown" or None."""
        norm = normalise_text(text).strip()
        first = _CLAUSE_BREAK.split(norm, maxsplit=1)[0].strip()
        for phrase, kind, language in self._answers:
            if not first.startswith(phrase):
                continue
            rest = first[len(phrase):]
            if language == "en" and rest and re.match(r"[\w']", rest):
                continue  # "no" must not answer for "nothing", nor "i do" for "i don't"
            return kind
        return None


def _inside(start: int, end: int, spans: Sequence[tuple[int, int]]) -> bool:
    return any(s <= start and end <= e for s, e in spans)


@dataclass(frozen=True)
class KnowledgeGraph:
    """Everything the engine knows, loaded once; the posterior over diseases is computed from it per turn."""

    departments: Mapping[str, Department]
    emergency_code: str
    symptoms: Mapping[str, Symptom]
    diseases: tuple[Disease, ...]
    red_flags: tuple[RedFlagRule, ...]
    messages: Mapping[str, Mapping[str, str]]
    versions: Mapping[str, str]
    content_sha256: str
    leak_probability: float
    matcher: SymptomMatcher = field(repr=False, compare=False)

    @property
    def version(self) -> str:
        """One string naming every file's version and the content hash: what a result was computed with."""
        files = ",".join(f"{name}@{self.versions[name]}" for name in DATA_FILES)
        return f"{files};sha256:{self.content_sha256[:12]}"

    @property
    def clinical_departments(self) -> tuple[str, ...]:
        """Departments the graph and the model recommend between (every one but Emergency)."""
        return tuple(code for code in self.departments if code != self.emergency_code)

    def department_for_model_class(self, model_class: str) -> str | None:
        for code, department in self.departments.items():
            if department.model_class == model_class:
                return code
        return None

    def message(self, key: str, language: str) -> str:
        return self.messages[key][language]

    def fired_red_flags(self, present: set[str]) -> list[RedFlagRule]:
        return [rule for rule in self.red_flags if rule.fires(present)]

    def disease_log_likelihoods(self, present: Iterable[str], absent: Iterable[str]) -> list[float]:
        """log P(disease) + sum of log P(observation | disease), naive Bayes over the said symptoms.

        Unlinked symptoms have the small ``leak_probability`` (they lower a disease without ruling it out).
        """
        present, absent = list(present), list(absent)
        out = []
        for disease in self.diseases:
            total = math.log(disease.prior)
            for s in present:
                total += math.log(disease.symptoms.get(s, self.leak_probability))
            for s in absent:
                total += math.log(1.0 - disease.symptoms.get(s, self.leak_probability))
            out.append(total)
        return out


def _require(raw: Mapping[str, Any], key: str, where: str) -> Any:
    if key not in raw or raw[key] in (None, ""):
        raise KnowledgeDataError(f"{where}: missing {key!r}")
    return raw[key]


def _read(directory: Path, name: str) -> tuple[dict[str, Any], bytes]:
    data = (directory / f"{name}.yaml").read_bytes()
    raw = yaml.safe_load(data)
    if not isinstance(raw, dict):
        raise KnowledgeDataError(f"{name}.yaml: not a mapping")
    _require(raw, "version", f"{name}.yaml")
    return raw, data


def _build(directory: Path) -> KnowledgeGraph:
    raws: dict[str, dict[str, Any]] = {}
    digest = hashlib.sha256()
    for name in DATA_FILES:
        raws[name], data = _read(directory, name)
        digest.update(name.encode() + b"\0" + data)
    dep_raw, sym_raw, kg_raw, rf_raw = (raws[n] for n in DATA_FILES)

    departments: dict[str, Department] = {}
    for entry in dep_raw["departments"]:
        where = f"departments.yaml {entry.get('code')!r}"
        departments[_require(entry, "code", where)] = Department(
            entry["code"], entry.get("model_class"), *(str(_require(entry, k, where)).strip()
                                                       for k in ("name_en", "name_zh", "advice_en", "advice_zh")))
    emergency = _require(dep_raw, "emergency", "departments.yaml")
    if emergency not in departments:
        raise KnowledgeDataError("departments.yaml: the emergency code is not a department")
    messages = {key: {lang: str(text).strip() for lang, text in texts.items()}
                for key, texts in dep_raw["messages"].items()}
    for key, texts in messages.items():
        if set(texts) != set(LANGUAGES):
            raise KnowledgeDataError(f"departments.yaml message {key!r}: needs exactly {LANGUAGES}")

    symptoms: dict[str, Symptom] = {}
    for entry in sym_raw["symptoms"]:
        where = f"symptoms.yaml {entry.get('id')!r}"
        sid = _require(entry, "id", where)
        if sid in symptoms:
            raise KnowledgeDataError(f"{where}: defined twice")
        for language in LANGUAGES:
            if not entry.get(language):
                raise KnowledgeDataError(f"{where}: no {language} synonyms")
        symptoms[sid] = Symptom(sid, str(_require(entry, "icd10", where)),
                                *(str(_require(entry, k, where))
                                  for k in ("term_en", "term_zh", "question_en", "question_zh")),
                                implies=tuple(entry.get("implies") or ()))
    for entry in sym_raw["symptoms"]:
        for other in [*(entry.get("implies") or ()), *(entry.get("masks") or ())]:
            if other not in symptoms:
                raise KnowledgeDataError(f"symptoms.yaml {entry['id']!r}: implies or masks unknown symptom {other!r}")

    diseases = []
    for entry in kg_raw["diseases"]:
        where = f"knowledge_graph.yaml {entry.get('id')!r}"
        links = {str(k): float(v) for k, v in _require(entry, "symptoms", where).items()}
        unknown = sorted(set(links) - set(symptoms))
        if unknown:
            raise KnowledgeDataError(f"{where}: symptoms not in symptoms.yaml: {unknown}")
        if any(not 0.0 < w < 1.0 for w in links.values()):
            raise KnowledgeDataError(f"{where}: weights must lie strictly between 0 and 1")
        department = _require(entry, "department", where)
        if department not in departments or department == emergency:
            raise KnowledgeDataError(f"{where}: department {department!r} is not a clinical department")
        prior = float(entry.get("prior", 1.0))
        if prior <= 0:
            raise KnowledgeDataError(f"{where}: prior must be positive")
        diseases.append(Disease(_require(entry, "id", where), str(_require(entry, "icd10", where)), entry["name_en"],
                                entry["name_zh"], department, prior, links))

    links_of_any_disease = {s for disease in diseases for s in disease.symptoms}
    rules = []
    for entry in rf_raw["rules"]:
        where = f"red_flags.yaml {entry.get('id')!r}"
        all_of, any_of = tuple(entry.get("all_of") or ()), tuple(entry.get("any_of") or ())
        if not all_of and not any_of:
            raise KnowledgeDataError(f"{where}: no symptoms")
        unknown = sorted(set(all_of + any_of) - set(symptoms))
        if unknown:
            raise KnowledgeDataError(f"{where}: symptoms not in symptoms.yaml: {unknown}")
        if entry.get("escalation") != "emergency":
            raise KnowledgeDataError(f"{where}: escalation must be 'emergency'")
        screen_with = tuple(entry.get("screen_with") or ())
        if not set(screen_with) <= set(any_of) or any(s not in links_of_any_disease for s in screen_with):
            raise KnowledgeDataError(f"{where}: screen_with must name any_of symptoms the graph links to a disease")
        rules.append(RedFlagRule(_require(entry, "id", where), all_of, any_of, "emergency",
                                 *(str(_require(entry, k, where)).strip()
                                   for k in ("description_en", "description_zh", "advice_en", "advice_zh")),
                                 screen_with=screen_with))

    leak = float(kg_raw.get("leak_probability", 0.03))
    if not 0.0 < leak < 0.5:
        raise KnowledgeDataError("knowledge_graph.yaml: leak_probability must lie in (0, 0.5)")
    return KnowledgeGraph(
        departments=departments,
        emergency_code=emergency,
        symptoms=symptoms,
        diseases=tuple(diseases),
        red_flags=tuple(rules),
        messages=messages,
        versions={name: str(raws[name]["version"]) for name in DATA_FILES},
        content_sha256=digest.hexdigest(),
        leak_probability=leak,
        matcher=SymptomMatcher(sym_raw),
    )


@functools.lru_cache(maxsize=4)
def _cached(directory: str) -> KnowledgeGraph:
    return _build(Path(directory))


def load_knowledge(directory: str | Path | None = None) -> KnowledgeGraph:
    """The knowledge in ``directory`` (default: the files shipped with this package), parsed once per process."""
    return _cached(str(Path(directory or DATA_DIR).resolve()))
