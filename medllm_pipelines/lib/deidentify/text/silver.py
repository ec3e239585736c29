"""Silver identifier spans: a person's known identifiers located in their own free text.

The tagger needs character offsets of identifiers, and nobody annotates
thousands of notes by hand. The raw zone already knows each patient's
identifiers (the structured record: name, resident ID 身份证号, MRN, phone,
email, address, birth date), so every occurrence of those strings in the
patient's own notes and dialogues is a labelled span for free. Two kinds of
identifier are not the patient's own and are added by layout: dates in a
note (``YYYY-MM-DD``) and the signing clinician's name on the signature line
(``医师：…`` / ``Signed: …, MD``). The same function gives the synthetic
hospital's gold spans (``lib.synth.note_gold``) and the platform's training
spans (``text.training``), so the two cannot drift apart.

Also here: the per-person ``KnownIdentifiers`` a detector gets for extra
recall, the Vault-keyed surrogate factories (one per patient), and the
turn-by-turn de-identification of a dialogue.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from medllm_pipelines.lib.deidentify.text.detector import Detector, KnownIdentifiers
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
from medllm_pipelines.lib.deidentify.text.surrogates import (
    SurrogateFactory,
    SurrogateFor,
    patient_date_shift,
    replace_spans,
)

HmacMany = Callable[[Sequence[str]], Sequence[str]]

# identity field -> label, located as written (longest first is handled by the overlap pass)
IDENTITY_LABELS: tuple[tuple[str, str], ...] = (
    ("resident_id", ID_NUMBER), ("mrn", MRN), ("phone", PHONE), ("email", EMAIL), ("address", ADDRESS),
)
NAME_FIELDS: tuple[str, ...] = ("name_zh", "name_en")

_ISO_DATE = re.compile(r"(?<!\d)(?:19|20)\d{2}-\d{2}-\d{2}(?!\d)")
_SIGNATURES = (re.compile(r"^医师：(.+?)\s*$", re.MULTILINE), re.compile(r"^Signed: (.+?), MD\s*$", re.MULTILINE))
_TITLE = re.compile(r"^(?:Dr\.|Mr\.|Mrs\.|Ms\.|Miss|Prof\.)\s+")
_SUFFIX = re.compile(r"(?:,?\s+(?:Jr\.|Sr\.|II|III|IV|V|MD|DDS|DVM|PhD))+$")


def _value(identity: Mapping[str, Any], key: str) -> str | None:
    value = identity.get(key)
    if value is None or (isinstance(value, float) and math.isnan(value)):  # None or NaN from a frame
        return None
    text = str(value).strip()
    return text or None


def occurrences(text: str, needle: str | None, label: str, *, whole_word: bool = False) -> list[Span]:
    """Every non-overlapping occurrence of ``needle``; ``whole_word`` for Latin names ("Ann" not in "annual")."""
    if not needle:
        return []
    if whole_word:
        pattern = re.compile(rf"(?<![\w]){re.escape(needle)}(?![\w])")
        return [Span(m.start(), m.end(), label, 1.0, "silver") for m in pattern.finditer(text)]
    found, at = [], text.find(needle)
    while at >= 0:
        found.append(Span(at, at + len(needle), label, 1.0, "silver"))
        at = text.find(needle, at + len(needle))
    return found


def bare_name(raw: str) -> tuple[int, int]:
    """Offsets of the name inside a signature (titles and degrees are not identifiers)."""
    start = 0
    title = _TITLE.match(raw)
    if title:
        start = title.end()
    suffix = _SUFFIX.search(raw, start)
    end = suffix.start() if suffix else len(raw)
    return start, end


def project_identifiers(text: str, identity: Mapping[str, Any], *, note_layout: bool = False) -> tuple[Span, ...]:
    """Spans of ``identity``'s identifiers in ``text``, sorted, without overlaps.

    Args:
        identity: the person's identity fields (``resident_id``, ``mrn``,
            ``phone``, ``email``, ``address``, ``name_zh``, ``name_en``,
            ``birth_date``); missing or empty fields are skipped.
        note_layout: also label every ISO date and the signature line's
            clinician name (clinical notes; not dialogues).
    """
    found: list[Span] = []
    for key, label in IDENTITY_LABELS:
        found += occurrences(text, _value(identity, key), label)
    found += occurrences(text, _value(identity, "birth_date"), DATE)
    for key in NAME_FIELDS:
        found += occurrences(text, _value(identity, key), NAME, whole_word=key == "name_en")
    name_en = _value(identity, "name_en")
    if name_en and " " in name_en:  # "Discussed results with Michael by phone"
        found += occurrences(text, name_en.split()[0], NAME, whole_word=True)
    if note_layout:
        found += [Span(m.start(), m.end(), DATE, 1.0, "silver") for m in _ISO_DATE.finditer(text)]
        for pattern in _SIGNATURES:
            for match in pattern.finditer(text):
                start, end = bare_name(match.group(1))
                if end > start:
                    found.append(Span(match.start(1) + start, match.start(1) + end, NAME, 1.0, "silver"))
    # a shorter hit inside a longer one (a given name inside the full name) is dropped
    found.sort(key=lambda s: (s.start, -(s.end - s.start)))
    kept: list[Span] = []
    for span in found:
        if kept and span.start < kept[-1].end:
            continue
        kept.append(span)
    return tuple(kept)


def merge_identities(records: Iterable[Mapping[str, Any]]) -> dict[str, list[str]]:
    """One person's identity fields over all their records (a person registered at two hospitals)."""
    merged: dict[str, list[str]] = {}
    for record in records:
        for key in (*(k for k, _ in IDENTITY_LABELS), *NAME_FIELDS, "birth_date"):
            value = _value(record, key)
            if value is not None and value not in merged.setdefault(key, []):
                merged[key].append(value)
    return merged


def project_person(text: str, merged: Mapping[str, Sequence[str]], *, note_layout: bool = False) -> tuple[Span, ...]:
    """``project_identifiers`` over every value a person has (``merge_identities``)."""
    width = max((len(v) for v in merged.values()), default=0)
    spans: list[Span] = []
    for index in range(max(width, 1)):
        identity = {key: values[index] for key, values in merged.items() if index < len(values)}
        spans.extend(project_identifiers(text, identity, note_layout=note_layout and index == 0))
    if width <= 1:
        return tuple(spans)
    spans.sort(key=lambda s: (s.start, -(s.end - s.start)))
    kept: list[Span] = []
    for span in spans:
        if kept and span.start < kept[-1].end:
            continue
        kept.append(span)
    return tuple(kept)


def known_identifiers(merged: Mapping[str, Sequence[str]]) -> KnownIdentifiers:
    """What the detector may look for verbatim in this person's texts (full names only: a bare
    given name is found by the detector's name propagation, with word boundaries)."""
    values: dict[str, list[str]] = {}
    for key, label in (*IDENTITY_LABELS, ("name_zh", NAME), ("name_en", NAME), ("birth_date", DATE)):
        values.setdefault(label, []).extend(v for v in merged.get(key, ()) if len(v) >= 2)
    return KnownIdentifiers({label: tuple(v) for label, v in values.items() if v})


# --- surrogates keyed by Vault ------------------------------------------------------
SUBKEY_CONTEXT = "text-surrogate-key"
DATE_SHIFT_CONTEXT = "date-shift"


def _hex(digest: str) -> str:
    from medllm_pipelines.lib.deidentify.policy import digest_to_hex

    return digest_to_hex(digest)


class AvoidingSurrogates:
    """A patient's surrogates that never spell a real patient's identifier.

    A surrogate name drawn from a vocabulary can be, by chance, another real
    patient's name; the text would then attribute this patient's record to
    them (and the leak gate rightly flags it). Such a draw is redrawn under a
    derived scope, up to ``attempts`` times, then falls back to ``[LABEL]``.
    """

    def __init__(self, factories: Sequence[SurrogateFactory], forbidden: Iterable[str]) -> None:
        self.factories = list(factories)
        self.forbidden = frozenset(forbidden)
        self._short = sorted((f for f in self.forbidden if len(f) <= 4), key=len)
        self._cache: dict[tuple[str, str], str] = {}
        self.redrawn = 0

    def _clashes(self, value: str) -> bool:
        if value in self.forbidden:
            return True
        return any(f in value for f in self._short if len(f) <= len(value)) or any(
            f in value for f in self.forbidden if 4 < len(f) <= len(value))

    def __call__(self, label: str, value: str) -> str:
        key = (label, value)
        found = self._cache.get(key)
        if found is None:
            found = f"[{label}]"
            for attempt, factory in enumerate(self.factories):
                candidate = factory(label, value)
                if not self._clashes(candidate):
                    found = candidate
                    self.redrawn += attempt
                    break
            self._cache[key] = found
        return found


def patient_surrogates(pseudonyms: Sequence[str], hmac_many: HmacMany, *, forbidden: Iterable[str] = (),
                       attempts: int = 4) -> dict[str, AvoidingSurrogates]:
    """One surrogate factory per patient pseudonym, keyed by the Vault transit HMAC key.

    Two HMAC calls per patient in all (batched): the patient's surrogate
    subkey ``HMAC_vault("text-surrogate-key|p")`` (then local HMAC-SHA-256
    under it per value, so there is no Vault round trip per identifier) and
    the date offset ``patient_date_shift(HMAC_vault, p)`` (the same offset
    the DICOM de-identification gives that patient). Scope = the pseudonym:
    one name gets one surrogate within a patient, a different one elsewhere.
    """
    unique = sorted(set(pseudonyms))
    if not unique:
        return {}
    messages = [f"{SUBKEY_CONTEXT}\x1f{p}" for p in unique] + [f"{DATE_SHIFT_CONTEXT}\x1f{p}" for p in unique]
    digests = [_hex(d) for d in hmac_many(messages)]
    subkeys = dict(zip(unique, digests[:len(unique)], strict=True))
    shift_digest = dict(zip(messages[len(unique):], digests[len(unique):], strict=True))
    forbidden = frozenset(f for f in forbidden if f)
    out: dict[str, AvoidingSurrogates] = {}
    for pseudonym in unique:
        key = bytes.fromhex(subkeys[pseudonym])

        def keyed(message: str, key: bytes = key) -> str:
            return hmac.new(key, message.encode("utf-8"), hashlib.sha256).hexdigest()

        shift = patient_date_shift(shift_digest.__getitem__, pseudonym)
        factories = [SurrogateFactory(keyed, scope=pseudonym if i == 0 else f"{pseudonym}\x1fredraw{i}",
                                      date_shift_days=shift) for i in range(attempts)]
        out[pseudonym] = AvoidingSurrogates(factories, forbidden)
    return out


def deidentify_turns(turns: Sequence[str], *, detector: Detector, surrogate_for: SurrogateFor,
                     known: KnownIdentifiers | None = None) -> tuple[list[str], list[Span]]:
    """A dialogue de-identified turn by turn, detection over the whole dialogue.

    Detecting on the joined text lets a name given in one turn be found again
    in another (name propagation); replacing per turn keeps the speaker
    structure. A span never crosses a turn boundary after clipping.
    """
    joined = "\n".join(turns)
    spans = detector.detect_many([joined], known=[known] if known is not None else None)[0]
    out: list[str] = []
    start = 0
    for turn in turns:
        end = start + len(turn)
        inside = [Span(max(s.start, start) - start, min(s.end, end) - start, s.label, s.score, s.source)
                  for s in spans if s.start < end and start < s.end]
        out.append(replace_spans(turn, inside, surrogate_for))
        start = end + 1
    return out, spans


def counts_by_label(spans: Iterable[Span], labels: Sequence[str]) -> dict[str, int]:
    counts = dict.fromkeys(labels, 0)
    for span in spans:
        if span.label in counts:
            counts[span.label] += 1
    return counts
