"""Name lists and the clinical whitelist: Philter's approach to names in notes.

A capitalised word is evidence of a name only when it is a known first or last
name *and* not a word of clinical or everyday English. Philter (UCSF, BSD)
ships both lists: ~97k first and ~161k last names with its false positives
removed, and a ~195k-word whitelist of English and clinical vocabulary. They
are read at run time from the installed ``philter-ucsf`` package (never copied
into this repository), and the whitelist is widened with the project's own
vocabularies: ICD-10-CM titles (``simple-icd-10-cm``), the synthetic
hospital's drug and condition tables, and ``en_clinical_whitelist`` in
``recognisers.yaml``.

Every word is put in one class:

* ``NEVER``: clinical/common word that is no name (HEPARIN, cardiac, with):
  never masked as a name, whatever a tagger says;
* ``AMBIGUOUS``: a name that is also a word (Brown, Will, Hope, Parkinson):
  a name only after a title/cue or beside a clear name;
* ``NAME``: a listed name that is no word (Smith, Kowalski): a name when capitalised;
* ``UNKNOWN``: neither (a rare surname, a typo): a name only beside a name or after a cue.

Without Philter installed the lists fall back to ``en_given_names`` of the
recogniser file and the whitelist to the project vocabularies (recall drops;
``LEXICON.source`` says which was used, and it goes to asset metadata).
"""

from __future__ import annotations

import importlib.util
import json
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from medllm_pipelines.lib.common.versions import package_versions

NEVER, AMBIGUOUS, LISTED, UNKNOWN = 0, 1, 2, 3
_KIND_CACHE: dict[str, int] = {}  # word -> kind, for the one lexicon of the process
_WORD = re.compile(r"[A-Za-z]{2,}")


@dataclass(frozen=True)
class NameLexicon:
    """Lower-cased first/last names and the never-a-name whitelist."""

    first: frozenset[str]
    last: frozenset[str]
    whitelist: frozenset[str]  # words of clinical or everyday English
    forced: frozenset[str]  # clinical words never a name even when listed as one (heparin)
    source: str

    def kind(self, word: str) -> int:
        """NEVER, AMBIGUOUS, LISTED or UNKNOWN for one word (any case)."""
        found = _KIND_CACHE.get(word)
        if found is None:
            found = self._kind(word)
            if len(_KIND_CACHE) < 500_000:
                _KIND_CACHE[word] = found
        return found

    def _kind(self, word: str) -> int:
        low = word.lower()
        if low in self.forced:
            return NEVER
        named = low in self.first or low in self.last
        common = low in self.whitelist
        if named:
            return AMBIGUOUS if common else LISTED
        return NEVER if common else UNKNOWN

    def is_first(self, word: str) -> bool:
        return word.lower() in self.first

    def is_last(self, word: str) -> bool:
        return word.lower() in self.last


def philter_directory() -> Path | None:
    """Where the installed philter-ucsf package keeps its files (without importing it: it needs nltk)."""
    spec = importlib.util.find_spec("philter_ucsf")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _json_keys(path: Path) -> frozenset[str]:
    data = json.loads(path.read_text(encoding="utf-8"))
    return frozenset(str(k).lower() for k in data)


COMMON_RANK = 12000  # the most frequent English words of pyspellchecker's list count as "everyday words"


def _common_english(limit: int = COMMON_RANK) -> set[str]:
    """The ``limit`` most frequent English words (pyspellchecker's frequency list, MIT), lower-cased.

    Philter's whitelist leaves out every word that is also a name ("nonames"), so
    Love, Mystery, Sir or Fuse would look like names; frequent words are
    ambiguous instead (a name only with a cue or beside a name).
    """
    import gzip

    spec = importlib.util.find_spec("spellchecker")
    if spec is None or not spec.submodule_search_locations:
        return set()
    path = Path(next(iter(spec.submodule_search_locations))) / "resources" / "en.json.gz"
    if not path.exists():
        return set()
    counts = json.loads(gzip.decompress(path.read_bytes()).decode("utf-8"))
    ranked = sorted(counts.items(), key=lambda item: -item[1])[:limit]
    return {word for word, _ in ranked if word.isalpha()}


# The words of ICD-10-CM's titles, stored with the version of simple-icd-10-cm they came from: building them from
# the package parses its whole XML tree (~2 s per process: every pipeline step and every service worker that
# de-identifies text paid it). Used while the installed version matches; otherwise rebuilt from the package.
# Regenerate after a version change with ``python -m medllm_pipelines.lib.deidentify.text.lexicon``.
ICD_WORDS_FILE = Path(__file__).with_name("icd10cm_words.json")
ICD_PACKAGE = "simple-icd-10-cm"


def _icd_words_from_package() -> set[str]:
    try:
        import simple_icd_10_cm as cm
    except ImportError:  # pragma: no cover - a pinned dependency
        return set()
    words: set[str] = set()
    for code in cm.get_all_codes(with_dots=False):
        words.update(w.lower() for w in _WORD.findall(cm.get_description(code)))
    return words


def _icd_words() -> set[str]:
    if ICD_WORDS_FILE.is_file():
        stored = json.loads(ICD_WORDS_FILE.read_text(encoding="utf-8"))
        if stored.get("version") == package_versions([ICD_PACKAGE])[ICD_PACKAGE]:
            return set(stored["words"])
    return _icd_words_from_package()


def write_icd_words(path: Path = ICD_WORDS_FILE) -> int:
    """Store the ICD-10-CM title words of the installed package (one per line, sorted); returns their number."""
    words = sorted(_icd_words_from_package())
    payload = {"source": "ICD-10-CM titles (public domain, CDC/NCHS) as shipped by simple-icd-10-cm; "
                         "lower-cased words of two or more letters",
               "package": ICD_PACKAGE, "version": package_versions([ICD_PACKAGE])[ICD_PACKAGE], "words": words}
    path.write_text(json.dumps(payload, indent=0, ensure_ascii=True) + "\n", encoding="utf-8")
    return len(words)


def _project_words() -> set[str]:
    words: set[str] = set()
    try:
        from medllm_pipelines.lib.synth import catalog
    except ImportError:  # pragma: no cover
        return words
    for table in (catalog.CONDITION_TEXT_EN,):
        for value in table.values():
            words.update(w.lower() for w in _WORD.findall(value))
    for per_language in catalog.MEDICATION_TEXT.values():
        for product, instruction in per_language.values():
            words.update(w.lower() for w in _WORD.findall(f"{product} {instruction}"))
    return words


@lru_cache(maxsize=1)
def name_lexicon() -> NameLexicon:
    """The lexicon (loaded once per process, ~0.4 s; the ICD-10-CM words come from `icd10cm_words.json`)."""
    from medllm_pipelines.lib.deidentify.text.patterns import default_pattern_config

    raw = default_pattern_config().raw
    relatives = {w.lower() for w in raw.get("en_relative_cues", ()) if " " not in w and "/" not in w}
    forced = frozenset(w.lower() for w in str(raw.get("en_clinical_whitelist", "")).split()) | relatives
    given = frozenset(w.lower() for w in default_pattern_config().en_given_names)
    extra_last = frozenset(w.lower() for w in str(raw.get("en_family_names", "")).split())
    clinical = _icd_words() | _project_words() | set(forced)
    everyday = _common_english() - given - extra_last
    folder = philter_directory()
    if folder is not None and (folder / "filters" / "blacklists" / "firstnames_minus_fps.json").exists():
        first = _json_keys(folder / "filters" / "blacklists" / "firstnames_minus_fps.json") | given
        last = _json_keys(folder / "filters" / "blacklists" / "lastnames_minus_fps.json") | extra_last
        common = _json_keys(folder / "filters" / "whitelists" / "whitelist_plus_fps_091718_nonames.json")
        source = "philter-ucsf 1.0.3 name lists + whitelist, ICD-10-CM titles, project vocabulary"
    else:
        first, last, common = given, extra_last, frozenset()
        source = "recognisers.yaml names only (philter-ucsf not installed), ICD-10-CM titles, project vocabulary"
    # a clinical word that is also a listed name (Parkinson, Crohn, Barrett) stays ambiguous:
    # a name after a title, a word otherwise
    return NameLexicon(first=first, last=last, whitelist=frozenset(common | clinical | everyday), forced=forced,
                       source=source + f", top {COMMON_RANK} English words (pyspellchecker)")


if __name__ == "__main__":  # pragma: no cover - a maintenance command
    print(f"{write_icd_words()} words written to {ICD_WORDS_FILE}")
