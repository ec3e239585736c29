"""What the prose recognisers share: character classes, the regex alternation, the place lists, the lexicon.

Kept apart from any one entity type so that names, places, addresses and
organisations read the same lists (Faker's countries, US states and Chinese
cities) and build their alternations the same way.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import lru_cache

from medllm_pipelines.lib.deidentify.text.lexicon import NameLexicon, name_lexicon

HAN = "\u4e00-\u9fff\u3400-\u4dbf"
UPPER_ANY = "[A-ZÀ-ÖØ-ÞĀĂĄĆĈĊČĎĐĒĔĖĘĚĜĞĠĢĤĦĨĪĬĮİĴĶĹĻĽĿŁŃŅŇŊŌŎŐŒŔŖŘŚŜŞŠŢŤŦŨŪŬŮŰŲŴŶŸŹŻŽΑ-ΩА-Я]"


def alternation(words: Iterable[str]) -> str:
    """A regex alternation, longest first so that 联系电话 wins over 电话."""
    return "|".join(re.escape(w) for w in sorted(set(words), key=lambda w: (-len(w), w)))


@lru_cache(maxsize=1)
def place_lists() -> dict[str, tuple[str, ...]]:
    """Countries and US states (Faker en/en_US), Chinese provinces and cities (Faker zh_CN/zh_TW)."""
    out: dict[str, tuple[str, ...]] = {"countries": (), "states": (), "states_abbr": (), "zh_places": ()}
    try:
        from faker.providers.address.en import Provider as English
        from faker.providers.address.en_US import Provider as American
        from faker.providers.address.zh_CN import Provider as Chinese
        from faker.providers.address.zh_TW import Provider as Taiwanese
    except ImportError:  # pragma: no cover - a pinned dependency
        return out
    countries = [c.split(" (")[0].replace(" the", "") for c in English.countries if "," not in c]
    out["countries"] = tuple(c for c in countries if len(c) > 3)
    out["states"] = tuple(American.states)
    out["states_abbr"] = tuple(a for a in American.states_abbr if a not in ("IN", "OR", "ME", "OK", "HI", "DE", "PA",
                                                                             "MD", "MS", "MA", "CO", "AL", "ID", "LA",
                                                                             "MO", "NE", "VA", "IA", "MT"))
    stems = {re.sub("(省|市|自治区|壮族自治区|回族自治区|维吾尔自治区|特别行政区)$", "", p) for p in Chinese.provinces}
    places = set(Chinese.cities) | stems | {c for c in getattr(Taiwanese, "cities", ()) if len(c) >= 2}
    out["zh_places"] = tuple(sorted(p for p in places if len(p) >= 2))
    return out


class LexiconUser:
    """A recogniser that consults the name lexicon, loaded on first use (~2 s), not when it is built."""

    def __init__(self, lexicon: NameLexicon | None = None) -> None:
        self._lexicon = lexicon

    @property
    def lexicon(self) -> NameLexicon:
        if self._lexicon is None:
            self._lexicon = name_lexicon()
        return self._lexicon
