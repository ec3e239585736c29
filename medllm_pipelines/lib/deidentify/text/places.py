"""Places named in prose: hospitals, wards, cities, states, countries, and Chinese institutions and regions.

A capitalised word is a place when a list says so (Faker's countries and US
states, the cities of ``recognisers.yaml``), when a place word ends it
(St. Mary's Hospital, 北京协和医院) or when a cue introduces it ("grew up in
Helsinki"); a place that is also a common word (Georgia, Reading, Mobile)
needs a preposition before it.
"""

from __future__ import annotations

import re

from medllm_pipelines.lib.deidentify.text.lexicon import NEVER, UNKNOWN, NameLexicon
from medllm_pipelines.lib.deidentify.text.spans import LOCATION, Span
from medllm_pipelines.lib.deidentify.text.vocabulary import HAN, UPPER_ANY, LexiconUser, alternation, place_lists

# words after "born in", "lives in" that are no place
_NOT_PLACES = frozenset("""home house bed chair floor room unit clinic hospital hospice rehab care nursing baseline
pain good fair poor stable distress apartment shelter jail prison town city country state area village family order
addition general particular time place bed front back there here school college work group march april june july august
""".split())
_HOSPITAL_STEMS = ("hospital", "medical", "clinic", "health", "cent", "infirm", "memorial", "hospice", "rehab", "care",
                   "children", "emergency", "surgery", "dialysis", "nursing", "sanatorium", "ed ")
_HOSPITAL_GATE = re.compile("|".join(map(re.escape, _HOSPITAL_STEMS)))


def find_zh_institutions(text: str, anchor_re: re.Pattern[str], label: str, stop: frozenset[str],
                         generic: tuple[str, ...], spans: list[Span]) -> None:
    """Institutions named before a Chinese suffix (北京协和医院, 某某有限公司): the Han run before it, to a stop character."""
    for anchor in anchor_re.finditer(text):
        start = anchor.start()
        while start > 0 and anchor.start() - start < 14 and "\u4e00" <= text[start - 1] <= "\u9fff" \
                and text[start - 1] not in stop:
            start -= 1
        while start > 0 and anchor.start() - start < 16 and (text[start - 1].isdigit() or text[start - 1] in "第"):
            start -= 1
        prefix = text[start:anchor.start()]
        generic_prefix = next((g for g in generic if prefix.startswith(g)), None)
        if len(prefix) < 2 or (generic_prefix is not None and len(prefix) <= len(generic_prefix) + 1):
            continue  # 当地医院, 上级医院, 社区医院: no institution named
        spans.append(Span(start, anchor.end(), label, 0.85))


class PlaceRecogniser(LexiconUser):
    """Listed, suffixed and cued places in English prose; Chinese hospitals and administrative regions."""

    def __init__(self, raw: dict, lexicon: NameLexicon | None = None) -> None:
        super().__init__(lexicon)
        lists = place_lists()
        cities = [c.strip() for c in str(raw.get("us_cities", "")).split("|") if c.strip()]
        places = list(lists["countries"]) + list(lists["states"]) + cities
        self._place_set = frozenset(places)
        self._place_first: dict[str, int] = {}
        for place in places:  # first word -> most words a place starting with it has
            first, count = place.split()[0], len(place.split())
            self._place_first[first] = max(self._place_first.get(first, 0), count)
        self._cap_word = re.compile(r"(?<![^\W\d_])[A-Z][^\W\d_]*\.?")
        self._state_abbr = re.compile(rf"(?<=[a-z]),\s+({alternation(lists['states_abbr'])})(?![A-Za-z])")
        hospital = str(raw.get("en_hospital_words", "Hospital"))
        cap = r"(?:St\.|[A-Z][A-Za-z'’.\-]*|of|the|and|&)"
        gap = r"(?:[ \t]+\n?[ \t]*|\n[ \t]*)"  # a name may wrap onto the next line, never across a blank line
        self._hospital = re.compile(
            rf"((?:(?:St\.?|Saint)\s+)?(?:[A-Z][A-Za-z'’.\-]*{gap})(?:{cap}{gap}){{0,4}}(?:{hospital})(?![A-Za-z])"
            rf"(?:\s+(?:of|at)\s+[A-Z][A-Za-z.\-]+(?:\s+[A-Z][A-Za-z.\-]+){{0,2}})?"
            rf"|(?:{hospital})\s+of\s+[A-Z][A-Za-z.\-]+(?:\s+[A-Z][A-Za-z.\-]+){{0,2}})")
        self._hospital_caps = re.compile(rf"((?:[A-Z]{{2,}}\s+){{1,4}}(?:{hospital.upper()}|ED|EMERGENCY DEPT)(?![A-Za-z]))")
        self._saint = re.compile(r"(?<![A-Za-z])((?:St\.?|Saint)[ \t]+[A-Z][a-z]+(?:['’]s)?(?:[ \t]+[A-Z][a-z]+)?)")
        self._ward = re.compile(r"(?<![A-Za-z])((?:Ward|Room|Rm\.?|Unit|Floor|Bldg\.?|Building|Pod|Bay)\s+#?\d{1,4}[A-Z]?)(?![\w])")
        self._loc_cue = re.compile(rf"(?<![A-Za-z])(?:{alternation(raw.get('location_cues', []))})\s+"
                                   r"((?:the\s+)?[A-Z][\w'’\-]*[a-z][\w'’\-]*(?:\s+[A-Z][\w'’\-]*[a-z][\w'’\-]*){0,2})")
        strong = alternation(raw.get("location_strong_cues", []))
        place_word = rf"{UPPER_ANY}[^\W\d_]*(?:['’\-]{UPPER_ANY}?[^\W\d_]+)*"
        self._loc_strong = re.compile(rf"(?<![^\W\d_])(?i:{strong})[ \t]+(?:the[ \t]+)?({place_word}(?:[ \t]+{place_word}){{0,2}}"
                                      rf"|[a-z]+(?:[ \t][a-z]+)?)") if strong else None
        self._loc_strong_gate = re.compile(r"(?i:\bin\b|from|to\b|\bof\b)")
        self._city_state = re.compile(r"(?<![A-Za-z])([A-Z][a-z]+(?:\s+[A-Z][a-z]+)?),\s+([A-Z]{2})(?=\s+\d{5}|\W*$|[\s.,;)])")
        self._zh_hospital_anchor = re.compile(alternation(raw.get("zh_hospital_suffixes", ["医院"])))
        self._zh_stop = frozenset(str(raw.get("zh_place_stop_chars", "")))
        self._zh_generic = tuple(raw.get("zh_generic_place_prefixes", ()))
        zh_places = lists["zh_places"]
        self._zh_region = re.compile(rf"[{HAN}]{{2,3}}省[{HAN}]{{2,4}}?市(?:[{HAN}]{{1,4}}?[区县])?"
                                     + (rf"|(?:{alternation(zh_places)})(?:省|市|县|区)?(?:[{HAN}]{{1,3}}?[区县](?![{HAN}]*[医院]))?"
                                        if zh_places else ""))

    @property
    def place_set(self) -> frozenset[str]:
        """Every listed country, US state and city, for the address recogniser's town/region pieces."""
        return self._place_set

    def find(self, text: str, spans: list[Span]) -> None:
        """Hospitals, saints' names, wards, listed places, state abbreviations and cued places (text with a capital)."""
        lexicon = self.lexicon
        low = text.lower()
        hospital_like = _HOSPITAL_GATE.search(low) is not None
        for pattern in ((self._hospital, self._hospital_caps) if hospital_like else ()) + (
                (self._saint,) if "St" in text or "Saint" in text else ()):
            for match in pattern.finditer(text):
                start, end = match.start(1), match.end(1)
                value = text[start:end]
                for lead in ("The ", "the ", "THE ", "At ", "In ", "From ", "To "):
                    if value.startswith(lead):
                        start += len(lead)
                        value = value[len(lead):]
                first = value.split()[0] if value.split() else ""
                if pattern is self._hospital and first.lower() in ("hospital", "clinic") and " of " not in value:
                    continue
                if pattern is self._hospital and len(value.split()) == 2 and lexicon.kind(first) == NEVER and \
                        first.lower() in ("the", "general", "local", "outside", "this", "our", "a", "community",
                                          "memorial", "emergency", "urgent", "medical", "mental"):
                    continue
                spans.append(Span(start, end, LOCATION, 0.85))
        for match in (self._ward.finditer(text) if any(w in text for w in ("Ward", "Room", "Rm", "Unit", "Floor", "Bldg",
                                                                            "Building", "Pod", "Bay")) else ()):
            spans.append(Span(match.start(1), match.end(1), LOCATION, 0.7))
        for start, end in self._places_in(text):
            value = text[start:end]
            if value in ("Georgia", "Jordan", "Chad", "Washington", "Virginia", "Lincoln", "Aurora", "Mesa", "Reno",
                         "Madison", "Cambridge", "Quincy", "Durham", "Chandler", "Plano", "Mobile", "Niger", "Turkey",
                         "Guinea", "Jersey", "Man", "Nice", "Bath", "Reading", "Buffalo") and not self._place_context(text, start):
                continue
            spans.append(Span(start, end, LOCATION, 0.85))
        for match in self._state_abbr.finditer(text):
            before = re.search(r"([^\W\d_]+)$", text[max(0, match.start() - 30):match.start()].rstrip(" ,"))
            if before and lexicon.kind(before.group(1)) == NEVER and before.group(1) not in self._place_set:
                continue  # "Soft, ND, NT": an examination finding, not a state after a town
            spans.append(Span(match.start(1), match.end(1), LOCATION, 0.8))
        for match in self._city_state.finditer(text):
            if match.group(2) in ("MD", "DO", "PA", "NP", "RN") and not re.match(r"\s+\d{5}", text[match.end(2):]):
                continue  # a degree after a name, not Maryland
            if match.group(2) in place_lists()["states_abbr"] or match.group(2) in ("IN", "OR", "ME", "OK", "HI", "PA", "MD",
                                                                                      "MA", "CO", "AL", "MO", "VA", "LA"):
                if lexicon.kind(match.group(1).split()[0]) != NEVER or self._place_context(text, match.start()):
                    spans.append(Span(match.start(1), match.end(2), LOCATION, 0.8))
        for match in self._loc_cue.finditer(text):
            value = match.group(1)
            start = match.start(1)
            if value.startswith("the "):
                start += 4
                value = value[4:]
            words = value.split()
            kinds = [lexicon.kind(w) for w in words]
            keep = 0
            for kind in kinds:
                if kind in (UNKNOWN,):
                    keep += 1
                else:
                    break
            if keep:
                end = start + len(" ".join(words[:keep]))
                spans.append(Span(start, end, LOCATION, 0.6))

    def find_cued(self, text: str, spans: list[Span]) -> None:
        """The place after "grew up in", "originally from", "moved here from", "flew to": any capitalised words
        that are no clinical or English word (all capitals too: HELSINKI), or a listed place in lower case."""
        if self._loc_strong is None or not self._loc_strong_gate.search(text):
            return
        lexicon = self.lexicon
        for match in self._loc_strong.finditer(text):
            value, start = match.group(1), match.start(1)
            if value[:1].islower():
                for count in (2, 1):
                    words = value.split()[:count]
                    if len(words) == count and " ".join(words).title() in self._place_set:
                        spans.append(Span(start, start + len(" ".join(words)), LOCATION, 0.85))
                        break
                continue
            direction = re.match(r"(?:Northern|Southern|Eastern|Western|Central|Rural|Upstate|Downstate)[ \t]+(?=\S)", value)
            if direction and value not in self._place_set:
                start += direction.end()  # "in Southern Tunisia": the place is Tunisia
                value = value[direction.end():]
            kept = 0
            end = start
            # "grew up in Helsinki": a word of the English list is a place here, but not after "returned to"
            # or "moved to" (returned to Baseline, moved to Chair)
            origin = not re.match(r"(?i)(?:returned|moved|i'm|i am|we're)", match.group())
            for word in re.finditer(r"\S+", value):
                bare = word.group().rstrip(".,;:!?")
                listed = bare in self._place_set or bare.title() in self._place_set
                if bare.isupper() and len(bare) <= 4 and not listed:
                    break  # ICU, PACU, ED
                if not listed and lexicon.kind(bare) == NEVER and not (
                        origin and kept == 0 and len(bare) >= 4 and bare.lower() not in _NOT_PLACES):
                    break
                kept += 1
                end = start + word.start() + len(bare)
            if kept:
                spans.append(Span(start, end, LOCATION, 0.85))

    def _places_in(self, text: str) -> list[tuple[int, int]]:
        """(start, end) of listed countries, states and cities: a set lookup per capitalised word."""
        out: list[tuple[int, int]] = []
        words = list(self._cap_word.finditer(text))
        skip_to = -1
        for index, word in enumerate(words):
            if word.start() < skip_to:
                continue
            most = self._place_first.get(word.group().rstrip("."))
            if most is None:
                continue
            for count in range(most, 0, -1):
                end_word = words[index + count - 1] if index + count - 1 < len(words) else None
                if end_word is None:
                    continue
                value = text[word.start():end_word.end()].rstrip(".")
                if value in self._place_set and " ".join(value.split()) == value:
                    out.append((word.start(), word.start() + len(value)))
                    skip_to = word.start() + len(value)
                    break
        return out

    @staticmethod
    def _place_context(text: str, at: int) -> bool:
        return bool(re.search(r"(?i)\b(in|from|to|at|near|of|visit(?:ing|ed)?|lives?|moved|born|travel+ed|trip)\s+(?:the\s+)?$",
                              text[max(0, at - 24):at]))

    def find_zh_institutions(self, text: str, spans: list[Span]) -> None:
        """Chinese hospitals named before their suffix (北京协和医院)."""
        find_zh_institutions(text, self._zh_hospital_anchor, LOCATION, self._zh_stop, self._zh_generic, spans)

    def find_zh_regions(self, text: str, spans: list[Span]) -> None:
        """Provinces, cities and districts (湖北省武汉市, 武汉市江汉区)."""
        for match in self._zh_region.finditer(text):
            start = match.start()
            while start < match.end() - 2 and text[start] in self._zh_stop:
                start += 1
            spans.append(Span(start, match.end(), LOCATION, 0.8))
