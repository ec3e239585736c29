"""brat standoff (.ann + .txt) import with validation against the text and the guideline.

brat writes one ``.ann`` per document and annotator; entities are
``T<n><TAB><type> <start> <end>[;<start> <end>...]<TAB><text>`` with character
offsets into the ``.txt``, relations ``R<n><TAB><type> Arg1:T<i> Arg2:T<j>``,
notes ``#<n><TAB><type> <ref><TAB><text>``. Who annotated, when, with which
tool and under which guideline is carried by a file-level note
``#0<TAB>Provenance<TAB>annotator_id=...;annotated_at=...;tool=...;guideline_version=...``
(the export convention agreed with the labelling office).

Every annotation line is either accepted or rejected with a reason code;
rejections never carry the line's text (it can hold a name).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from medllm_pipelines.lib.label.registry import UNKNOWN_LABEL, Guideline

SPAN_OUT_OF_BOUNDS = "span_out_of_bounds"
SPAN_TEXT_MISMATCH = "span_text_mismatch"
OVERLAPPING_SPAN = "overlapping_span"
MALFORMED_LINE = "malformed_line"
DUPLICATE_ID = "duplicate_id"
UNKNOWN_RELATION_TYPE = "unknown_relation_type"
RELATION_ARGUMENT_MISSING = "relation_argument_missing"
RELATION_ARGUMENT_TYPE = "relation_argument_type"
UNSUPPORTED_KIND = "unsupported_annotation_kind"
MISSING_PROVENANCE = "missing_provenance"
TEXT_NOT_FOUND = "text_not_found"
ENCODING_ERROR = "encoding_error"

PROVENANCE_NOTE = "Provenance"
PROVENANCE_FIELDS = ("annotator_id", "annotated_at", "tool", "guideline_version")


@dataclass(frozen=True)
class BratEntity:
    id: str
    type: str
    fragments: tuple[tuple[int, int], ...]
    position: int  # line number in the .ann

    @property
    def start(self) -> int:
        return self.fragments[0][0]

    @property
    def end(self) -> int:
        return self.fragments[-1][1]

    def overlaps(self, other: BratEntity) -> bool:
        return any(s < oe and os < e for s, e in self.fragments for os, oe in other.fragments)


@dataclass(frozen=True)
class BratRelation:
    id: str
    type: str
    arg1: str
    arg2: str
    position: int


@dataclass(frozen=True)
class Rejection:
    position: int | None
    reason_code: str
    reason: str


@dataclass
class ParsedAnn:
    provenance: dict[str, str]
    entities: list[BratEntity] = field(default_factory=list)
    relations: list[BratRelation] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)
    annotation_lines: list[int] = field(default_factory=list)  # positions of T/R/other annotation lines
    notes: int = 0

    @property
    def records_in(self) -> int:
        return len(self.annotation_lines)


def decode(content: bytes) -> str | None:
    try:
        return content.decode("utf-8")
    except UnicodeDecodeError:
        return None


def read_provenance(ann_text: str) -> dict[str, str]:
    """The provenance note's fields (empty when the file has none)."""
    for line in ann_text.splitlines():
        parts = line.split("\t")
        if line.startswith("#") and len(parts) == 3 and parts[1].strip() == PROVENANCE_NOTE:
            fields = {}
            for item in parts[2].split(";"):
                key, _, value = item.partition("=")
                if key.strip() in PROVENANCE_FIELDS:
                    fields[key.strip()] = value.strip()
            return fields
    return {}


def annotation_positions(ann_text: str) -> list[int]:
    """Line numbers that carry an annotation (everything but blank lines and # notes)."""
    return [n for n, line in enumerate(ann_text.splitlines()) if line.strip() and not line.startswith("#")]


def _fragments(spec: str) -> tuple[tuple[int, int], ...] | None:
    try:
        pieces = [tuple(int(x) for x in piece.split()) for piece in spec.split(";")]
    except ValueError:
        return None
    if not pieces or any(len(p) != 2 for p in pieces):
        return None
    return tuple((p[0], p[1]) for p in pieces)  # type: ignore[misc]


def parse_ann(ann_text: str, doc_text: str, guideline: Guideline) -> ParsedAnn:
    """Entities and relations of one .ann, each validated against its text and the guideline."""
    parsed = ParsedAnn(provenance=read_provenance(ann_text))
    seen_ids: set[str] = set()
    accepted: dict[str, BratEntity] = {}

    def reject(position: int, code: str, reason: str) -> None:
        parsed.rejections.append(Rejection(position, code, reason))

    pending_relations: list[tuple[int, str, str]] = []
    for position, raw in enumerate(ann_text.splitlines()):
        line = raw.rstrip("\r")
        if not line.strip():
            continue
        if line.startswith("#"):
            parsed.notes += 1
            continue
        parsed.annotation_lines.append(position)
        parts = line.split("\t")
        ident = parts[0].strip()
        if ident in seen_ids:
            reject(position, DUPLICATE_ID, "annotation id used twice in the file")
            continue
        seen_ids.add(ident)
        if ident.startswith("T"):
            if len(parts) < 2 or " " not in parts[1]:
                reject(position, MALFORMED_LINE, "entity line is not 'T<n> TAB type start end TAB text'")
                continue
            entity_type, _, offsets = parts[1].partition(" ")
            fragments = _fragments(offsets)
            if fragments is None:
                reject(position, MALFORMED_LINE, "entity offsets are not integers")
                continue
            if any(s < 0 or e <= s or e > len(doc_text) for s, e in fragments) or any(
                fragments[i][1] > fragments[i + 1][0] for i in range(len(fragments) - 1)
            ):
                reject(position, SPAN_OUT_OF_BOUNDS, "entity offsets fall outside the text (or are empty/reversed)")
                continue
            if len(parts) >= 3 and parts[2] != " ".join(doc_text[s:e] for s, e in fragments):
                reject(position, SPAN_TEXT_MISMATCH, "entity text differs from the .txt at its offsets")
                continue
            if entity_type not in guideline.entity_types:
                reject(position, UNKNOWN_LABEL, f"entity type not declared in guideline {guideline.version_id}")
                continue
            entity = BratEntity(ident, entity_type, fragments, position)
            if not guideline.allow_overlaps and any(entity.overlaps(other) for other in accepted.values()):
                reject(position, OVERLAPPING_SPAN, f"span overlaps an earlier entity ({guideline.version_id} forbids overlaps)")
                continue
            accepted[ident] = entity
            parsed.entities.append(entity)
        elif ident.startswith("R"):
            pending_relations.append((position, ident, parts[1] if len(parts) > 1 else ""))
        else:
            reject(position, UNSUPPORTED_KIND, "only entities (T) and relations (R) are imported")
    for position, ident, body in pending_relations:
        pieces = body.split()
        args = dict(piece.split(":", 1) for piece in pieces[1:] if ":" in piece)
        if len(pieces) != 3 or set(args) != {"Arg1", "Arg2"}:
            reject(position, MALFORMED_LINE, "relation line is not 'R<n> TAB type Arg1:T<i> Arg2:T<j>'")
            continue
        relation_type = pieces[0]
        declared = guideline.relation_types.get(relation_type)
        if declared is None:
            reject(position, UNKNOWN_RELATION_TYPE, f"relation type not declared in guideline {guideline.version_id}")
            continue
        first, second = accepted.get(args["Arg1"]), accepted.get(args["Arg2"])
        if first is None or second is None:
            reject(position, RELATION_ARGUMENT_MISSING, "a relation argument is not an accepted entity of this file")
            continue
        if first.type not in declared.arg1 or second.type not in declared.arg2:
            reject(position, RELATION_ARGUMENT_TYPE, "relation arguments have types the guideline does not allow")
            continue
        parsed.relations.append(BratRelation(ident, relation_type, first.id, second.id, position))
    return parsed
