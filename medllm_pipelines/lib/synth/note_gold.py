"""Gold identifier spans of the synthetic hospital's free text (notes, dialogues).

A learned de-identification tagger needs character offsets of every
identifier; the generator knows the identifiers (``_truth/identities.jsonl``,
written with ``write_identities=True``) and the templates it filled, so the
spans are recovered here by locating each identity string in the delivered
text, plus the two template slots that are not the patient's own identity:
the visit date in the first line and the signing clinician's name in the
last (``医师：…`` / ``Signed: …, MD``). Nothing is written: the spans are
computed from the delivered files, so they can never drift from them.

Labels: NAME, ID_NUMBER (身份证号), MRN, PHONE, EMAIL, ADDRESS, DATE.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from medllm_pipelines.lib.deidentify.text.silver import project_identifiers
from medllm_pipelines.lib.synth.manifest import IDENTITIES_PATH


@dataclass(frozen=True)
class GoldSpan:
    start: int
    end: int
    label: str


@dataclass(frozen=True)
class AnnotatedText:
    """One delivered free text with its gold identifier spans."""

    text_id: str  # institution/source/position: no identifier in it
    institution: str
    person_index: int  # the person the text is about (split and surrogate scope key)
    language: str
    kind: str  # note | dialogue
    text: str
    spans: tuple[GoldSpan, ...]


def gold_spans(text: str, identity: dict[str, Any], kind: str) -> tuple[GoldSpan, ...]:
    """Gold spans of one text about the person in ``identity``, without overlaps.

    The platform trains on the same projection of known identifiers
    (``lib.deidentify.text.silver``), so gold and training labels cannot drift.
    """
    spans = project_identifiers(text, identity, note_layout=kind == "note")
    return tuple(GoldSpan(s.start, s.end, s.label) for s in spans)


def _decode_note(resource: dict[str, Any]) -> str | None:
    for content in resource.get("content") or []:
        data = (content.get("attachment") or {}).get("data")
        if data:
            try:
                return base64.b64decode(data, validate=True).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError):
                return None
    return None


def _mrn_of(patient: dict[str, Any]) -> str | None:
    for identifier in patient.get("identifier") or []:
        if identifier.get("system", "").endswith(":mrn"):
            return identifier.get("value")
    return None


def _resources(path: Path) -> Iterator[tuple[dict[str, Any], str | None]]:
    """(resource, fullUrl) of a Bundle file or an NDJSON file; unreadable content is skipped."""
    try:
        raw = path.read_bytes()
    except OSError:
        return
    if path.suffix == ".ndjson":
        for line in raw.splitlines():
            try:
                resource = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            if isinstance(resource, dict):
                yield resource, None
        return
    try:
        bundle = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return
    if not isinstance(bundle, dict):
        return
    for entry in bundle.get("entry") or []:
        if isinstance(entry, dict) and isinstance(entry.get("resource"), dict):
            yield entry["resource"], entry.get("fullUrl")


def load_identities(hospital_dir: Path) -> list[dict[str, Any]]:
    path = Path(hospital_dir) / IDENTITIES_PATH
    if not path.exists():
        raise FileNotFoundError(f"{IDENTITIES_PATH} missing: generate the hospital with write_identities=True")
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


def annotated_texts(hospital_dir: Path, *, include_dialogues: bool = True) -> list[AnnotatedText]:
    """Every clinical note (and triage dialogue) of the hospital with gold spans, in file order."""
    root = Path(hospital_dir)
    identities = {(row["institution"], row["mrn"]): row for row in load_identities(root)}
    texts: list[AnnotatedText] = []
    for institution_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("_")):
        code = institution_dir.name
        files = sorted((institution_dir / "fhir").glob("**/*.json")) + sorted(
            (institution_dir / "fhir").glob("**/*.ndjson"))
        mrn_by_ref: dict[str, str] = {}
        notes: list[tuple[str, dict[str, Any]]] = []
        for path in files:
            for resource, full_url in _resources(path):
                kind = resource.get("resourceType")
                if kind == "Patient":
                    mrn = _mrn_of(resource)
                    if mrn:
                        mrn_by_ref[f"Patient/{resource.get('id')}"] = mrn
                        if full_url:
                            mrn_by_ref[full_url] = mrn
                elif kind == "DocumentReference":
                    notes.append((path.relative_to(root).as_posix(), resource))
        for position, (relpath, resource) in enumerate(notes):
            reference = (resource.get("subject") or {}).get("reference", "")
            identity = identities.get((code, mrn_by_ref.get(reference, "")))
            text = _decode_note(resource)
            if identity is None or text is None:
                continue
            language = "zh" if "zh" in str(((resource.get("content") or [{}])[0].get("attachment") or {})
                                            .get("language", "")) else "en"
            texts.append(AnnotatedText(f"{code}/note/{position:05d}", code, int(identity["person_index"]),
                                       language, "note", text, gold_spans(text, identity, "note")))
        dialogue_file = institution_dir / "dialogues" / "dialogues.jsonl"
        if include_dialogues and dialogue_file.exists():
            for position, line in enumerate(dialogue_file.read_bytes().splitlines()):
                try:
                    row = orjson.loads(line)
                except orjson.JSONDecodeError:
                    continue
                identity = identities.get((code, row.get("patient_mrn", "")))
                if identity is None:
                    continue
                text = "\n".join(turn.get("text", "") for turn in row.get("turns") or [])
                texts.append(AnnotatedText(f"{code}/dialogue/{position:05d}", code, int(identity["person_index"]),
                                           str(row.get("language", "zh")), "dialogue", text,
                                           gold_spans(text, identity, "dialogue")))
    return texts


def annotated_consultations(hospital_dir: Path) -> list[AnnotatedText]:
    """Every recorded visit (``<inst>/consultations/``): the transcript turns and the signed record as one text,
    with the gold spans of the patient's identifiers said in it (the record itself names nobody: every span the
    detector finds there is over-masking)."""
    root = Path(hospital_dir)
    identities = {(row["institution"], row["mrn"]): row for row in load_identities(root)}
    texts: list[AnnotatedText] = []
    for institution_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("_")):
        path = institution_dir / "consultations" / "consultations.jsonl"
        if not path.exists():
            continue
        for position, line in enumerate(path.read_bytes().splitlines()):
            row = orjson.loads(line)
            identity = identities.get((institution_dir.name, row.get("patient_mrn", "")))
            if identity is None:
                continue
            text = "\n".join([*(turn.get("text", "") for turn in row.get("turns") or []), row.get("record_text", "")])
            texts.append(AnnotatedText(f"{institution_dir.name}/consultation/{position:05d}", institution_dir.name,
                                       int(identity["person_index"]), str(row.get("language", "zh")), "consultation",
                                       text, gold_spans(text, identity, "dialogue")))
    return texts
