"""Property test: whatever a JSON Lines feed holds, every line becomes a row or a quarantine record with a
reason code and its position; the parser never raises and always reconciles."""

from __future__ import annotations

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from medllm_pipelines.lib.ingest.jsonl import parse_jsonl_object
from medllm_pipelines.lib.ingest.landing import ANNOTATIONS, DIALOGUES

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
FIELDS = ["dialogue_id", "patient_mrn", "language", "department", "turns", "item_id", "annotator_id", "label",
          "annotated_at", "tool", "guideline_version"]


@st.composite
def jsonl_files(draw) -> bytes:
    lines: list[bytes] = []
    for _ in range(draw(st.integers(0, 8))):
        choice = draw(st.sampled_from([0, 0, 0, 1, 2, 3, 4]))
        if choice == 0:  # a record with real field names and any values
            names = draw(st.sampled_from([FIELDS[:5], FIELDS[5:], FIELDS]))  # all of a kind's fields, any values
            record = {name: draw(JSON_VALUES) for name in names if draw(st.integers(0, 19))}
            lines.append(orjson.dumps(record))
        elif choice == 1:  # any JSON value
            lines.append(orjson.dumps(draw(JSON_VALUES)))
        elif choice == 2:  # a valid record cut anywhere
            line = orjson.dumps({"dialogue_id": "d1", "language": "zh", "department": "x",
                                 "turns": [{"role": "patient", "text": "口渴"}]})
            lines.append(line[: draw(st.integers(0, len(line)))])
        elif choice == 3:
            lines.append(draw(st.text(max_size=40)).encode())
        else:  # bytes that may not be UTF-8 (the whole file is then quarantined as one record)
            lines.append(draw(st.binary(max_size=40)))
    separator = draw(st.sampled_from([b"\n", b"\r\n", b"\r"]))
    return separator.join(lines)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(content=jsonl_files(), kind=st.sampled_from([DIALOGUES, ANNOTATIONS]))
def test_any_jsonl_file_gives_rows_or_quarantine_records_and_reconciles(content: bytes, kind: str) -> None:
    parsed = parse_jsonl_object(content, kind=kind, institution="h1", source_object="s" * 64, asset="ingest/x")
    assert parsed.lines_seen == len(parsed.rows) + len(parsed.quarantine)
    for record in parsed.quarantine:
        assert record.reason_code and record.source_object == "s" * 64
    for row in parsed.rows:
        assert row["source_object"] == "s" * 64 and isinstance(row["source_position"], int)
