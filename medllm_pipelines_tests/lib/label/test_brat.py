"""brat standoff import: every line accepted or rejected with its reason."""

from __future__ import annotations

import pytest

from medllm_pipelines.lib.label.brat import (
    annotation_positions,
    parse_ann,
    read_provenance,
)
from medllm_pipelines.lib.label.registry import load_guidelines

TEXT = "Patient: I have high blood pressure and take pills for it. My head aches.\n"
PROVENANCE = "#0\tProvenance\tannotator_id=ann-01;annotated_at=2025-11-10T09:00:00+08:00;tool=brat v1.3;guideline_version=clinical-entities-v1.0"


def _span(text: str, phrase: str) -> tuple[int, int]:
    start = text.index(phrase)
    return start, start + len(phrase)


def _line(ident: str, entity_type: str, phrase: str) -> str:
    s, e = _span(TEXT, phrase)
    return f"{ident}\t{entity_type} {s} {e}\t{phrase}"


@pytest.fixture(scope="module")
def guideline():
    return load_guidelines()["clinical-entities-v1.0"]


def test_entities_relations_and_provenance_are_read(guideline):
    ann = "\n".join([PROVENANCE, _line("T1", "DISEASE", "high blood pressure"), _line("T2", "DRUG", "pills"),
                     "R1\tTREATS Arg1:T2 Arg2:T1", "#1\tAnnotatorNotes T1\tfree text never imported"]) + "\n"
    parsed = parse_ann(ann, TEXT, guideline)
    assert parsed.rejections == []
    assert [(e.type, TEXT[e.start:e.end]) for e in parsed.entities] == [("DISEASE", "high blood pressure"), ("DRUG", "pills")]
    assert [(r.type, r.arg1, r.arg2) for r in parsed.relations] == [("TREATS", "T2", "T1")]
    assert read_provenance(ann)["annotator_id"] == "ann-01"
    assert parsed.records_in == 3 and parsed.notes == 2


def test_discontinuous_spans_are_supported(guideline):
    s1, e1 = _span(TEXT, "head")
    s2, e2 = _span(TEXT, "aches")
    parsed = parse_ann(f"T1\tSYMPTOM {s1} {e1};{s2} {e2}\thead aches\n", TEXT, guideline)
    assert parsed.rejections == [] and parsed.entities[0].fragments == ((s1, e1), (s2, e2))


@pytest.mark.parametrize(
    ("lines", "reason"),
    [
        ([f"T1\tSYMPTOM {len(TEXT) + 2} {len(TEXT) + 6}\tnope"], "span_out_of_bounds"),
        (["T1\tSYMPTOM 5 3\tx"], "span_out_of_bounds"),
        ([_line("T1", "SYMPTOM", "head").replace("\thead", "\thand")], "span_text_mismatch"),
        ([_line("T1", "VITAL_SIGN", "head")], "unknown_label"),
        ([_line("T1", "DISEASE", "high blood pressure"), _line("T2", "SYMPTOM", "blood pressure")], "overlapping_span"),
        ([_line("T1", "DRUG", "pills"), "R1\tCAUSES Arg1:T1 Arg2:T1"], "unknown_relation_type"),
        ([_line("T1", "DRUG", "pills"), "R1\tTREATS Arg1:T1 Arg2:T7"], "relation_argument_missing"),
        ([_line("T1", "DRUG", "pills"), _line("T2", "SYMPTOM", "head"), "R1\tTREATS Arg1:T1 Arg2:T2"], "relation_argument_type"),
        (["A1\tNegated T1"], "unsupported_annotation_kind"),
        ([_line("T1", "DRUG", "pills"), _line("T1", "SYMPTOM", "head")], "duplicate_id"),
        (["T1\tSYMPTOM five six\thead"], "malformed_line"),
    ],
)
def test_bad_annotations_are_rejected_with_a_reason(guideline, lines, reason):
    ann = PROVENANCE + "\n" + "\n".join(lines) + "\n"
    parsed = parse_ann(ann, TEXT, guideline)
    codes = [r.reason_code for r in parsed.rejections]
    assert codes[-1] == reason
    assert len(parsed.entities) + len(parsed.relations) + len(parsed.rejections) == len(annotation_positions(ann))
    assert all("head" not in r.reason and "pills" not in r.reason for r in parsed.rejections)
