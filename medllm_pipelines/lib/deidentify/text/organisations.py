"""Organisations named in prose: firms, banks, universities, departments, and Chinese companies.

A run of capitalised words ending in an organisation word (Acme Holdings
Inc., University of Oslo), a name after an organisation cue ("works at"),
or a Chinese name before a company suffix (某某科技有限公司).
"""

from __future__ import annotations

import re

from medllm_pipelines.lib.deidentify.text.lexicon import NEVER, NameLexicon
from medllm_pipelines.lib.deidentify.text.places import find_zh_institutions
from medllm_pipelines.lib.deidentify.text.spans import ORGANIZATION, Span
from medllm_pipelines.lib.deidentify.text.vocabulary import LexiconUser, alternation

_ORG_STEMS = ("inc", "llc", "l.l.c", "ltd", "corp", "company", "co.", "group", "bank", "insurance", "associates",
              "foundation", "institute", "university", "college", "school", "academy", "church", "pharmacy",
              "industries", "partners", "holdings", "technologies", "systems", "airlines", "motors", "labs",
              "laborator", "agency", "department")
_ORG_GATE = re.compile("|".join(map(re.escape, _ORG_STEMS)))


class OrganisationRecogniser(LexiconUser):
    """Organisations by their closing word or a cue; Chinese companies by their suffix."""

    def __init__(self, raw: dict, lexicon: NameLexicon | None = None) -> None:
        super().__init__(lexicon)
        self._org = re.compile(
            rf"((?:[A-Z][A-Za-z&'’.\-]*[ \t]+){{1,4}}(?:{raw.get('en_org_words', 'Inc')})(?![A-Za-z])"
            rf"|(?:University|Bank|College|Institute|Department)\s+of\s+[A-Z][A-Za-z.\-]+(?:\s+[A-Z][A-Za-z.\-]+){{0,2}})")
        self._org_cue = re.compile(rf"(?:{alternation(raw.get('org_cues', []))})\s+((?:the\s+)?[A-Z][\w&'’.\-]*(?:\s+[A-Z][\w&'’.\-]*){{0,4}})")
        self._zh_org_anchor = re.compile(alternation(raw.get("zh_org_suffixes", ["公司"])))
        self._zh_stop = frozenset(str(raw.get("zh_place_stop_chars", "")))
        self._zh_generic = tuple(raw.get("zh_generic_place_prefixes", ()))

    def find(self, text: str, spans: list[Span]) -> None:
        """Organisations in English prose, gated by a cheap substring test of their closing words."""
        lexicon = self.lexicon
        low = text.lower()
        for match in (self._org.finditer(text) if _ORG_GATE.search(low) else ()):
            value = match.group(1)
            start = match.start(1)
            for lead in ("The ", "At ", "In ", "From "):
                if value.startswith(lead):
                    start += len(lead)
            if len(match.group(1)[start - match.start(1):].split()) >= 2 or "of" in value:
                end = match.end(1) - (1 if value.endswith(".") and not value.endswith(("Inc.", "Co.", "Ltd.", "Corp.")) else 0)
                spans.append(Span(start, end, ORGANIZATION, 0.8))
        for match in self._org_cue.finditer(text):
            value = match.group(1)
            start = match.start(1) + (4 if value.startswith("the ") else 0)
            words = text[start:match.end(1)].split()
            if words and lexicon.kind(words[0]) != NEVER:
                spans.append(Span(start, match.end(1), ORGANIZATION, 0.75))

    def find_zh(self, text: str, spans: list[Span]) -> None:
        """Chinese companies named before their suffix."""
        find_zh_institutions(text, self._zh_org_anchor, ORGANIZATION, self._zh_stop, self._zh_generic, spans)
