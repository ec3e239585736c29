"""JSON Lines feeds: dialogues and annotations, line by line."""

from __future__ import annotations

from typing import Any

import hashlib

import orjson
import pandas as pd
import pytest

from medllm_pipelines.lib.ingest.jsonl import COLUMNS, ParsedLines, parse_jsonl_object, parse_jsonl_partition
from medllm_pipelines.lib.ingest.landing import ANNOTATIONS, DIALOGUES


def dialogue(**overrides: Any) -> dict[str, Any]:
    record = {
        "dialogue_id": "d-001",
        "patient_mrn": "MRN000123",
        "language": "zh",
        "department": "endocrinology",
        "turns": [{"role": "patient", "text": "我最近口渴"}, {"role": "doctor", "text": "多久了？"}],
    }
    record.update(overrides)
    return record


def annotation(**overrides: Any) -> dict[str, Any]:
    record = {
        "item_id": "d-001",
        "annotator_id": "ann-7",
        "label": 0,
        "annotated_at": "2024-03-05T10:00:00+08:00",
        "guideline_version": "1.2",
    }
    record.update(overrides)
    return record


def parse(content: bytes, kind: str = DIALOGUES) -> ParsedLines:
    result = parse_jsonl_object(content, kind=kind, institution="h1", source_object="b" * 64, asset="ingest/dialogues")
    assert result.lines_seen == len(result.rows) + len(result.quarantine)
    return result


def lines(*records: Any) -> bytes:
    return b"\n".join(r if isinstance(r, bytes) else orjson.dumps(r) for r in records) + b"\n"


def test_dialogue_rows_keep_the_turns_and_their_position():
    result = parse(lines(dialogue(), b"", dialogue(dialogue_id=42)))

    rows = [(r["dialogue_id"], r["turn_count"], r["source_position"]) for r in result.rows]
    assert rows == [("d-001", 2, 0), ("42", 2, 2)]
    assert orjson.loads(result.rows[0]["turns_json"])[0]["text"] == "我最近口渴"
    assert result.quarantine == []


def test_a_line_separator_inside_a_text_is_not_a_line_break():
    # JSON allows raw U+2028/U+2029 in strings and orjson writes them unescaped.
    result = parse(lines(dialogue(turns=[{"role": "patient", "text": "第一句\u2028第二句\u2029完"}]), dialogue(dialogue_id="d-2")))

    assert [(r["dialogue_id"], r["source_position"]) for r in result.rows] == [("d-001", 0), ("d-2", 1)]
    assert result.quarantine == []


@pytest.mark.parametrize(
    ("record", "missing"),
    [
        ({k: v for k, v in dialogue().items() if k != "turns"}, "turns"),
        (dialogue(language="", department=None), "language, department"),
        (dialogue(turns=[]), "turns"),
    ],
)
def test_records_missing_required_fields_are_quarantined_by_name(record, missing):
    result = parse(lines(dialogue(), record))

    (rejected,) = result.quarantine
    assert (rejected.position, rejected.reason_code, rejected.reason) == (1, "missing_required_field", f"missing {missing}")
    assert len(result.rows) == 1


def test_annotation_with_a_zero_label_is_not_missing_a_label():
    result = parse(lines(annotation(), annotation(item_id="d-2", annotator_id=None)), kind=ANNOTATIONS)

    assert [(r["item_id"], r["label"]) for r in result.rows] == [("d-001", "0")]
    assert [(q.position, q.reason) for q in result.quarantine] == [(1, "missing annotator_id")]


@pytest.mark.parametrize(
    ("line", "code"),
    [
        (b'{"dialogue_id": "d-9", "turns": [', "malformed_json"),
        (b"[1, 2]", "malformed_record"),
        (b'"text"', "malformed_record"),
    ],
)
def test_bad_lines_are_quarantined_and_the_rest_proceeds(line, code):
    result = parse(lines(dialogue(), line, dialogue(dialogue_id="d-3")))

    assert [(q.position, q.reason_code) for q in result.quarantine] == [(1, code)]
    assert [r["dialogue_id"] for r in result.rows] == ["d-001", "d-3"]


@pytest.mark.parametrize(
    ("content", "code"),
    [(b"", "empty_file"), (b"\n \n", "empty_file"), (orjson.dumps(dialogue()).decode().encode("gbk"), "encoding_error")],
)
def test_unreadable_files_are_quarantined_whole(content, code):
    result = parse(content)

    assert [(q.position, q.reason_code) for q in result.quarantine] == [(None, code)]
    assert result.rows == []


class Objects:
    """Stored objects by content hash, as the raw zone hands them to a partition parser."""

    def __init__(self, *contents: bytes) -> None:
        self.objects = {hashlib.sha256(c).hexdigest(): c for c in contents}

    def get_object(self, sha256: str) -> bytes:
        return self.objects[sha256]

    def ledger_rows(self, institution: str) -> pd.DataFrame:
        return pd.DataFrame({"content_sha256": sorted(self.objects), "institution": institution})


def test_a_partition_is_one_table_that_reconciles_with_its_files():
    store = Objects(lines(dialogue(), b"{broken"), lines(dialogue(dialogue_id="d-2")))

    parsed = parse_jsonl_partition(store, store.ledger_rows("h1"), kind=DIALOGUES, partition="h1",
                                   asset="ingest/dialogues")

    meta = parsed.as_metadata()
    assert (meta["records_in"], meta["records_out"], meta["records_quarantined"], meta["reconciled"]) == (3, 2, 1, True)
    assert meta["dagster/row_count"] == len(parsed.frame) == 2 and meta["rows_by_institution"] == {"h1": 2}
    assert meta["quarantined_by_reason"] == {"malformed_json": 1} and meta["source_files"] == 2
    assert parsed.outcomes.unbalanced() == []


def test_a_partition_without_files_has_the_feeds_columns():
    store = Objects()

    parsed = parse_jsonl_partition(store, store.ledger_rows("h2"), kind=ANNOTATIONS, partition="h2",
                                   asset="ingest/annotations")

    assert parsed.frame.empty and list(parsed.frame.columns) == COLUMNS[ANNOTATIONS]
    assert parsed.as_metadata()["reconciled"] is True
