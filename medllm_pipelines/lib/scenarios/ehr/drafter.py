"""Drafting, editing and signing a clinical note from a dialogue or a dictation (clause 6.2.2, row A2).

A draft is the note generator's output (or, before one is trained, the extractive fallback of ``extract.py``)
mapped onto the note kind's fields, terminology-normalised, rendered as text and as a FHIR R4 Composition, and
screened for direct identifiers before anyone sees it. Every note this module returns -- drafted, edited or
signed -- is re-rendered from its fields (a note coming back from a client cannot smuggle in a composition that
disagrees with them) and passes the same leak check: the note is about a patient, but it is linked to them by the
pseudonymous ``patient_ref``, never by a name or number in its text.
"""

from __future__ import annotations

import copy
import datetime as dt
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from medllm_pipelines.lib.common.structured_note import (
    SEPARATOR,
    StructuredNote,
    note_from_mapping,
    parse_note,
    render_note,
)
from medllm_pipelines.lib.scenarios.ehr.composition import build_composition, validate_composition
from medllm_pipelines.lib.scenarios.ehr.extract import EXTRACTOR_VERSION, extract_note_fields
from medllm_pipelines.lib.scenarios.ehr.kinds import KINDS, NOTE_KINDS, NoteKind
from medllm_pipelines.lib.scenarios.ehr.terminology import Terminology, load_terminology
from medllm_pipelines.lib.scenarios.errors import ScenarioInputError

__all__ = ["LANGUAGES", "MAX_TEXT_CHARS", "SOURCES", "NoteDrafter", "pattern_leak_check", "render_fields"]

LANGUAGES = ("en", "zh")
SOURCES = ("dialogue", "dictation")
MAX_TEXT_CHARS = 20_000
MAX_ITEM_CHARS = 2_000
MAX_AUTHOR_CHARS = 200
_FHIR_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
_ITEM_SPLIT = re.compile(r"\s*(?:[;；]|\n)\s*")
FALLBACK_MODEL = {"name": "extractive-fallback", "version": EXTRACTOR_VERSION}


def pattern_leak_check() -> Callable[[str], list[str]]:
    """The default leak check: the de-identification stage's validated pattern recognisers, restricted to the
    identifiers a note never needs (resident ID and other ID numbers, record numbers, phones, e-mails).

    Names and dates are left to a caller-supplied check (e.g. an ``IdentifierMatcher`` over the patient's known
    identifiers): without the trained tagger, name patterns would flag eponyms and drug brands."""
    from medllm_pipelines.lib.deidentify.text.detector import build_detector
    from medllm_pipelines.lib.deidentify.text.spans import EMAIL, ID_NUMBER, MRN, PHONE

    detector = build_detector()
    detector.labels = (ID_NUMBER, MRN, PHONE, EMAIL)
    detector.propagate_names = False

    def check(text: str) -> list[str]:
        return [span.label for span in detector.detect(text)]

    check("Patient: 我头痛。 I have a headache.")  # loads the recognisers' dictionaries now, not on a request
    return check


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _iso(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


class NoteDrafter:
    """Loaded once per service: the generator (or None for the extractive fallback), the leak check and the
    terminology; ``draft``/``edit``/``sign`` are then pure functions of their arguments and the clock.

    Args:
        generate: ``(dialogue or dictation text, language) -> output`` where output is the note text
            (``NoteGeneratorPredictor.generate``), a ``StructuredNote`` (``generate_note``), or a mapping with
            ``text`` or ``fields`` and optionally ``generated_tokens``.
        leak_check: ``text -> identifier kinds found`` (one entry per hit; never the values); default
            :func:`pattern_leak_check`.
        model: what the generator is (name, version, run id...), recorded in every draft.
    """

    def __init__(self, generate: Callable[[str, str], Any] | None, *,
                 leak_check: Callable[[str], Sequence[str]] | None = None, model: dict[str, Any] | None = None,
                 terminology: Terminology | None = None, clock: Callable[[], dt.datetime] = _now,
                 validate_fhir: bool = True) -> None:
        self._generate = generate
        self._leak_check = leak_check if leak_check is not None else pattern_leak_check()
        self._terminology = terminology if terminology is not None else load_terminology()
        self._clock = clock
        self._validate_fhir = validate_fhir
        base = dict(FALLBACK_MODEL) if generate is None else {"name": "note-generator", **(model or {})}
        self._model = {**base, "terminology_version": self._terminology.version}
        self._pretokens: re.Pattern[str] | None = None
        if validate_fhir:
            from fhir.resources.R4B.composition import Composition  # noqa: F401  (imported once, here)

    @property
    def model(self) -> dict[str, Any]:
        return dict(self._model)

    # --- public API -------------------------------------------------------------------------------------------
    def draft(self, text: str, *, language: str = "en", kind: str = "outpatient", source: str = "dialogue",
              patient_ref: str | None = None) -> dict[str, Any]:
        """A preliminary note of ``kind`` from ``text``; ``draft_leaks_identifier`` (422) instead of a draft that
        contains a direct identifier."""
        text = _check_text(text)
        _check_choice(language, LANGUAGES, "unsupported_language", "language")
        note_kind = KINDS[_check_choice(kind, NOTE_KINDS, "unknown_note_kind", "note kind")]
        _check_choice(source, SOURCES, "unknown_source", "source")
        if patient_ref is not None and (not isinstance(patient_ref, str) or not _FHIR_ID.match(patient_ref)):
            raise ScenarioInputError("invalid_patient_ref", "patient_ref must be a FHIR id (1-64 of A-Z a-z 0-9 - .)")
        if self._generate is None:
            generated, tokens = extract_note_fields(text, language, self._terminology), 0
        else:
            generated, tokens = self._read_generator_output(self._generate(text, language), language)
        note = {"kind": note_kind.name, "language": language, "source": source, "patient_ref": patient_ref,
                "status": "preliminary", "fields": note_kind.map_generator_fields(generated), "model": self.model,
                "generated_tokens": tokens}
        return self._render(note, date=_iso(self._clock()))

    def edit(self, note: dict[str, Any], fields: dict[str, Any]) -> dict[str, Any]:
        """The note with ``fields`` replaced (fields not named are kept), re-rendered and re-screened."""
        edited = self._checked_note(note)
        note_kind = KINDS[edited["kind"]]
        if not isinstance(fields, Mapping) or not fields:
            raise ScenarioInputError("invalid_fields", "fields must be a non-empty object of field name -> items")
        for name, value in fields.items():
            if name not in note_kind.fields:
                raise ScenarioInputError("unknown_field", f"a {note_kind.name} note has the fields "
                                         f"{', '.join(note_kind.fields)}")
            edited["fields"][name] = _check_items(value, name)
        _check_total(edited["fields"])
        edited["edited"] = True
        return self._render(edited, date=_iso(self._clock()))

    def sign(self, note: dict[str, Any], *, author: str, signed_at: str) -> dict[str, Any]:
        """The note made final: Composition status ``final`` with ``author`` as legal attester at ``signed_at``."""
        signed = self._checked_note(note)
        if not isinstance(author, str) or not author.strip() or len(author) > MAX_AUTHOR_CHARS:
            raise ScenarioInputError("invalid_author", f"the author is a principal name of 1-{MAX_AUTHOR_CHARS} "
                                     "characters")
        moment = _parse_instant(signed_at)
        signed.update(status="final", signed_by=author, signed_at=_iso(moment))
        return self._render(signed, date=_iso(moment))

    # --- internals --------------------------------------------------------------------------------------------
    def _render(self, note: dict[str, Any], *, date: str) -> dict[str, Any]:
        """Text, terminology and Composition from ``note['fields']``; the leak check gates the result."""
        note_kind = KINDS[note["kind"]]
        language = note["language"]
        fields = note["fields"]
        note["text"] = render_fields(note_kind, language, fields)
        hits = list(self._leak_check(note["text"]))
        if hits:
            raise ScenarioInputError("draft_leaks_identifier", f"the note contains {len(hits)} direct identifier(s) "
                                     "and was withheld; identify the patient by patient_ref only")
        note["terminology"] = self._terminology.normalise(fields, diagnosis_fields=note_kind.diagnosis_fields,
                                                         medication_fields=note_kind.medication_fields)
        final = note.get("status") == "final"
        author_display = f"{note['model'].get('name', 'note-generator')} {note['model'].get('version', '')}".strip()
        composition = build_composition(note_kind, language, fields, date=date, author_display=author_display,
                                        patient_ref=note.get("patient_ref"), status="final" if final else "preliminary",
                                        terminology=note["terminology"])
        if final:
            composition["author"].insert(0, {"display": note["signed_by"]})
            composition["attester"] = [{"mode": "legal", "time": note["signed_at"],
                                        "party": {"display": note["signed_by"]}}]
        if self._validate_fhir:
            validate_composition(composition)
        note["composition"] = composition
        note["leak_scan"] = {"passed": True, "hits": 0}
        return note

    def _read_generator_output(self, output: Any, language: str) -> tuple[dict[str, tuple[str, ...]], int]:
        tokens: int | None = None
        if isinstance(output, Mapping):
            tokens = output.get("generated_tokens")
            if "fields" in output:
                output = note_from_mapping(output["fields"], language=language)
            else:
                output = str(output.get("text") or "")
        if isinstance(output, StructuredNote):
            written = render_note(output) if output.language == language else render_note(
                StructuredNote(output.fields, language=language))
            note = output
        elif isinstance(output, str):
            written, note = output, parse_note(output, language=language)
        else:
            raise TypeError(f"the note generator returned a {type(output).__name__}; expected text, a StructuredNote "
                            "or a mapping with 'text' or 'fields'")
        if tokens is None:
            tokens = self._count_tokens(written)
        return {name: note.items(name) for name in note.fields}, int(tokens)

    def _count_tokens(self, written: str) -> int:
        """Generated tokens of the note generator's lossless word-level tokenizer: one per pre-token."""
        if self._pretokens is None:
            from medllm_pipelines.lib.train.generative.note_text import PRETOKEN_PATTERN

            self._pretokens = re.compile(PRETOKEN_PATTERN)
        return len(self._pretokens.findall(written))

    @staticmethod
    def _checked_note(note: Any) -> dict[str, Any]:
        """A deep copy of a note that came back from a client, with its shape checked; signed notes refused."""
        if not isinstance(note, Mapping) or note.get("kind") not in KINDS or note.get("language") not in LANGUAGES:
            raise ScenarioInputError("invalid_note", "the note is not one this service drafted (kind or language "
                                     "missing)")
        if note.get("status") == "final":
            raise ScenarioInputError("note_signed", "the note is signed and can no longer change", status=409)
        note_kind = KINDS[note["kind"]]
        fields = note.get("fields")
        if not isinstance(fields, Mapping) or set(fields) - set(note_kind.fields):
            raise ScenarioInputError("invalid_note", f"the note's fields are not those of a {note_kind.name} note")
        model = note.get("model")
        patient_ref = note.get("patient_ref")
        if not isinstance(model, Mapping) or (patient_ref is not None and (
                not isinstance(patient_ref, str) or not _FHIR_ID.match(patient_ref))):
            raise ScenarioInputError("invalid_note", "the note's model or patient_ref is malformed")
        checked = copy.deepcopy(dict(note))
        checked["fields"] = {name: _check_items(fields.get(name, []), name) for name in note_kind.fields}
        _check_total(checked["fields"])
        return checked


def render_fields(kind: NoteKind, language: str, fields: Mapping[str, Sequence[str]]) -> str:
    """The note as text, as ``structured_note.render_note`` writes it: ``Header: item; item`` per non-empty field."""
    headers, separator = kind.headers[language], SEPARATOR[language]
    colon = "：" if language == "zh" else ": "
    return "\n".join(f"{headers[name]}{colon}{separator.join(fields.get(name, ()))}"
                     for name in kind.fields if fields.get(name))


def _check_text(text: Any) -> str:
    if not isinstance(text, str):
        raise ScenarioInputError("invalid_text", "text must be a string")
    if not text.strip():
        raise ScenarioInputError("empty_text", "the dialogue or dictation text is empty")
    if len(text) > MAX_TEXT_CHARS:
        raise ScenarioInputError("text_too_long", f"the text has {len(text)} characters; at most {MAX_TEXT_CHARS} "
                                 "are accepted")
    return text


def _check_choice(value: Any, choices: Sequence[str], reason: str, what: str) -> str:
    if value not in choices:
        raise ScenarioInputError(reason, f"{what} must be one of {', '.join(choices)}")
    return value


def _check_items(value: Any, name: str) -> list[str]:
    items = _ITEM_SPLIT.split(value) if isinstance(value, str) else value
    if not isinstance(items, list | tuple) or not all(isinstance(item, str) for item in items):
        raise ScenarioInputError("invalid_field_value", f"field {name} must be a list of strings or a string")
    cleaned = [item.strip() for item in items if item.strip()]
    if any(len(item) > MAX_ITEM_CHARS for item in cleaned):
        raise ScenarioInputError("invalid_field_value", f"an item of field {name} exceeds {MAX_ITEM_CHARS} characters")
    return cleaned


def _check_total(fields: Mapping[str, Sequence[str]]) -> None:
    if sum(len(item) for items in fields.values() for item in items) > MAX_TEXT_CHARS:
        raise ScenarioInputError("note_too_long", f"a note may hold at most {MAX_TEXT_CHARS} characters")


def _parse_instant(value: Any) -> dt.datetime:
    try:
        moment = dt.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        moment = None
    if not isinstance(value, str) or moment is None or moment.tzinfo is None:
        raise ScenarioInputError("invalid_signed_at", "signed_at must be an ISO 8601 date-time with a time zone")
    return moment
