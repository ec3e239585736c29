"""Recognisers for identifiers written in prose rather than in fields.

What clinicians write by hand is not the layout of a template: names with no
cue ("seen by smith", "wife Mary", "Smith, John", "JS/mk"), dates in every
common form (3/14, 03/14/19, 'yy, Jan 5, Tuesday, in 1998), places (hospitals,
cities, states, countries, 北京协和医院, 湖北省武汉市), US and Taiwanese
identifiers, and Chinese names and relative dates in running text (老伴儿王秀英说,
去年十月, 本月20号). Each rule asks for evidence beyond a shape: a name list
*and* not a clinical word (``lexicon``), a cue, a checksum, a plausible
calendar value. Lists and cues live in ``recognisers.yaml`` and in installed
packages (Philter's name lists, Faker's country, state and Chinese city lists).

One module per entity type (``names``, ``dates``, ``places``,
``organisations``, ``addresses``, ``identifiers``; what they share in
``vocabulary``); this one runs them in a fixed order, each behind a cheap
test of the text, and appends to one list of spans.
"""

from __future__ import annotations

import re

from medllm_pipelines.lib.deidentify.text.addresses import AddressRecogniser
from medllm_pipelines.lib.deidentify.text.dates import DateRecogniser
from medllm_pipelines.lib.deidentify.text.identifiers import IdentifierRecogniser
from medllm_pipelines.lib.deidentify.text.lexicon import NameLexicon
from medllm_pipelines.lib.deidentify.text.names import NameRecogniser
from medllm_pipelines.lib.deidentify.text.organisations import OrganisationRecogniser
from medllm_pipelines.lib.deidentify.text.places import PlaceRecogniser
from medllm_pipelines.lib.deidentify.text.spans import Span

_LOWER_LATIN = re.compile("[a-z]")


class ProseRecogniser:
    """Names, dates, places, organisations and identifiers in running text."""

    def __init__(self, raw: dict, lexicon: NameLexicon | None = None) -> None:
        self.raw = raw
        self.names = NameRecogniser(raw, lexicon)
        self.dates = DateRecogniser()
        self.places = PlaceRecogniser(raw, lexicon)
        self.organisations = OrganisationRecogniser(raw, lexicon)
        self.addresses = AddressRecogniser(self.places.place_set, lexicon)
        self.identifiers = IdentifierRecogniser()

    @property
    def lexicon(self) -> NameLexicon:
        return self.names.lexicon

    def find(self, text: str, spans: list[Span], *, has_han: bool, has_upper: bool, has_digit: bool) -> None:
        """Append what every recogniser finds; the order is part of the result (later rules read earlier spans)."""
        if has_digit:
            self.identifiers.find(text, spans)
            self.dates.find(text, spans, has_upper)
        else:
            self.dates.find_word_dates(text, spans)
        if has_upper or _LOWER_LATIN.search(text):
            self.names.find(text, spans)
        self.places.find_cued(text, spans)
        if has_upper:
            self.places.find(text, spans)
            self.organisations.find(text, spans)
        if has_digit or ("corner" in text or "intersection" in text or "junction" in text):
            self.addresses.find(text, spans)
        if has_han:
            self.places.find_zh_institutions(text, spans)
            self.organisations.find_zh(text, spans)
            self.places.find_zh_regions(text, spans)
            self.dates.find_zh(text, spans)


__all__ = ["ProseRecogniser"]
