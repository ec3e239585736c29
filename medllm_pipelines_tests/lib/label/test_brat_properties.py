"""Property test: whatever a brat .ann holds, every annotation line is accepted or rejected with a reason
code; the parser never raises."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from medllm_pipelines.lib.label.brat import parse_ann
from medllm_pipelines.lib.label.registry import load_guidelines

TEXT = "Patient: I have high blood pressure and take pills for it. My head aches.\n"
GOOD = ["T1\tDISEASE 16 35\thigh blood pressure", "T2\tDRUG 45 50\tpills", "R1\tTREATS Arg1:T2 Arg2:T1",
        "#1\tAnnotatorNotes T1\tnote", "T3\tSYMPTOM 62 72;73 78\thead aches"]
PIECES = st.sampled_from(["T1", "T9", "R1", "E1", "A1", "#", "\t", " ", ";", ":", "Arg1:", "Arg2:T1", "DISEASE",
                          "DRUG", "-3", "0", "16", "35", "99999", "x", "\r", "头痛"])


@st.composite
def ann_files(draw) -> str:
    lines = []
    for _ in range(draw(st.integers(0, 8))):
        if draw(st.booleans()):
            line = draw(st.sampled_from(GOOD))
            cut = draw(st.integers(0, len(line)))
            lines.append(line[:cut] + draw(st.text(max_size=6)) if draw(st.booleans()) else line)
        else:
            lines.append("".join(draw(st.lists(PIECES, max_size=8))))
    return "\n".join(lines)


@pytest.fixture(scope="module")
def guideline():
    return load_guidelines()["clinical-entities-v1.0"]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(ann=ann_files(), doc=st.sampled_from([TEXT, "", TEXT[:20]]))
def test_any_ann_file_gives_entities_relations_or_rejections(guideline, ann: str, doc: str) -> None:
    parsed = parse_ann(ann, doc, guideline)
    accounted = len(parsed.entities) + len(parsed.relations) + len(parsed.rejections)
    assert accounted == parsed.records_in
    assert all(r.reason_code for r in parsed.rejections)
