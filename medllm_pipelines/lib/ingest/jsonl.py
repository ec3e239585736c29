"""JSON Lines feeds (pre-consultation dialogues, recorded consultations, annotations) -> rows."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson
import pandas as pd

from medllm_pipelines.lib.common.records import FileOutcomes, QuarantineRecord, Reconciliation, count_reasons
from medllm_pipelines.lib.ingest.landing import ANNOTATIONS, CONSULTATIONS, DIALOGUES
from medllm_pipelines.lib.security.raw_zone import RawZone

STAGE = "ingest"

REQUIRED_FIELDS: dict[str, tuple[str, ...]] = {
    DIALOGUES: ("dialogue_id", "language", "turns", "department"),
    CONSULTATIONS: ("visit_id", "language", "turns", "record_text"),
    ANNOTATIONS: ("item_id", "annotator_id", "label", "annotated_at", "guideline_version"),
}

# The columns of each feed's raw-zone table (also when a partition has no rows).
COLUMNS: dict[str, list[str]] = {
    DIALOGUES: ["dialogue_id", "patient_mrn", "language", "department", "turn_count", "turns_json", "institution",
                "source_object", "source_position"],
    CONSULTATIONS: ["visit_id", "patient_mrn", "visit_kind", "language", "department", "turn_count", "turns_json",
                    "record_text", "institution", "source_object", "source_position"],
    ANNOTATIONS: ["item_id", "annotator_id", "label", "annotated_at", "tool", "guideline_version", "institution",
                  "source_object", "source_position"],
}


@dataclass
class ParsedLines:
    rows: list[dict[str, Any]] = field(default_factory=list)
    quarantine: list[QuarantineRecord] = field(default_factory=list)
    lines_seen: int = 0


def _dialogue_row(record: dict[str, Any]) -> dict[str, Any]:
    turns = record["turns"]
    return {
        "dialogue_id": str(record["dialogue_id"]),
        "patient_mrn": record.get("patient_mrn"),
        "language": record["language"],
        "department": record["department"],
        "turn_count": len(turns),
        "turns_json": orjson.dumps(turns).decode(),
    }


def _consultation_row(record: dict[str, Any]) -> dict[str, Any]:
    turns = record["turns"]
    return {
        "visit_id": str(record["visit_id"]),
        "patient_mrn": record.get("patient_mrn"),
        "visit_kind": str(record.get("kind") or "unspecified"),
        "language": record["language"],
        "department": record.get("department"),
        "turn_count": len(turns),
        "turns_json": orjson.dumps(turns).decode(),
        "record_text": record["record_text"],
    }


def _annotation_row(record: dict[str, Any]) -> dict[str, Any]:
    return {
        "item_id": str(record["item_id"]),
        "annotator_id": str(record["annotator_id"]),
        "label": str(record["label"]),
        "annotated_at": str(record["annotated_at"]),
        "tool": record.get("tool"),
        "guideline_version": str(record["guideline_version"]),
    }


_ROW_BUILDERS = {DIALOGUES: _dialogue_row, CONSULTATIONS: _consultation_row, ANNOTATIONS: _annotation_row}

# Fields whose JSON type is fixed; any other present field is stringified as it comes.
_SCALAR = (str, int)
FIELD_TYPES: dict[str, dict[str, tuple[type, ...]]] = {
    DIALOGUES: {"dialogue_id": _SCALAR, "language": (str,), "department": (str,), "turns": (list,),
                "patient_mrn": (str, int, type(None))},
    CONSULTATIONS: {"visit_id": _SCALAR, "language": (str,), "turns": (list,), "record_text": (str,),
                    "kind": (str, type(None)), "department": (str, type(None)), "patient_mrn": (str, int, type(None))},
    ANNOTATIONS: {"item_id": _SCALAR, "annotator_id": _SCALAR, "annotated_at": (str,), "guideline_version": _SCALAR,
                  "label": (str, int, float, bool)},
}


def _wrong_types(record: dict[str, Any], kind: str) -> list[str]:
    """Field names (never values) whose JSON type the feed's contract does not allow."""
    return [name for name, allowed in FIELD_TYPES[kind].items()
            if name in record and not isinstance(record[name], allowed)]


def parse_jsonl_object(
    content: bytes, *, kind: str, institution: str | None, source_object: str, asset: str
) -> ParsedLines:
    result = ParsedLines()

    def reject(position: int | None, code: str, reason: str) -> None:
        result.quarantine.append(QuarantineRecord(STAGE, asset, institution, source_object, position, kind, code, reason))

    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError as exc:
        result.lines_seen = 1
        reject(None, "encoding_error", f"file is not valid UTF-8 (byte offset {exc.start})")
        return result
    if not text.strip():
        result.lines_seen = 1
        reject(None, "empty_file", "file is empty")
        return result
    # Split the bytes, not the text: str.splitlines also breaks on U+2028/U+2029
    # and other separators that JSON allows unescaped inside strings.
    for line_no, line in enumerate(content.splitlines()):
        if not line.strip():
            continue
        result.lines_seen += 1
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError:
            reject(line_no, "malformed_json", "line is not valid JSON")
            continue
        if not isinstance(record, dict):
            reject(line_no, "malformed_record", "line is not a JSON object")
            continue
        missing = [f for f in REQUIRED_FIELDS[kind] if record.get(f) in (None, "", [])]
        if missing:
            reject(line_no, "missing_required_field", f"missing {', '.join(missing)}")
            continue
        wrong = _wrong_types(record, kind)
        if wrong:
            reject(line_no, "invalid_field_type", f"wrong JSON type for {', '.join(wrong)}")
            continue
        try:
            row = _ROW_BUILDERS[kind](record)
        except Exception as exc:  # noqa: BLE001 - one unmappable line is quarantined, never a failed step
            reject(line_no, "unmappable_record", f"record could not be mapped: {type(exc).__name__}")
            continue
        row.update(institution=institution, source_object=source_object, source_position=line_no)
        result.rows.append(row)
    return result


@dataclass
class JsonlPartition:
    """One institution's files of one JSONL feed: the table, what was quarantined, and per-file outcomes."""

    partition: str
    frame: pd.DataFrame
    quarantine: list[QuarantineRecord]
    outcomes: FileOutcomes
    lines_seen: int

    def reconciliation(self) -> Reconciliation:
        """Lines read = rows + quarantined (raises when it does not hold)."""
        return Reconciliation(self.lines_seen, len(self.frame), len(self.quarantine)).check()

    def as_metadata(self) -> dict[str, Any]:
        return {
            "dagster/row_count": len(self.frame),
            **self.reconciliation().as_metadata(),
            "quarantined": len(self.quarantine),
            "quarantined_by_reason": dict(sorted(count_reasons(self.quarantine).items())),
            "rows_by_institution": {self.partition: len(self.frame)},
            "source_files": len(self.outcomes),
        }


def parse_jsonl_partition(
    zone: RawZone, objects: pd.DataFrame, *, kind: str, partition: str, asset: str
) -> JsonlPartition:
    """Parse ``objects`` (stored-object ledger rows of one institution, of feed ``kind``) into one table."""
    rows: list[dict[str, Any]] = []
    quarantine: list[QuarantineRecord] = []
    outcomes = FileOutcomes(asset)
    seen = 0
    for row in objects.itertuples(index=False):
        parsed = parse_jsonl_object(zone.get_object(row.content_sha256), kind=kind, institution=row.institution,
                                    source_object=row.content_sha256, asset=asset)
        seen += parsed.lines_seen
        rows.extend(parsed.rows)
        quarantine.extend(parsed.quarantine)
        outcomes.add(row.content_sha256, row.institution, records_in=parsed.lines_seen,
                     records_out=len(parsed.rows), quarantine=parsed.quarantine)
    frame = pd.DataFrame(rows) if rows else pd.DataFrame(columns=COLUMNS[kind])
    result = JsonlPartition(partition, frame, quarantine, outcomes, seen)
    result.reconciliation()
    return result
