"""Clinicians' feedback as a table and as retraining evidence: what reaches the warehouse, when retraining is due."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from medllm_pipelines.lib.scenarios.feedback_table import (
    FEEDBACK_COLUMNS,
    REASON_DISAGREEMENT,
    REASON_OUTCOME_ERROR,
    evidence_key,
    feedback_frame,
    load_feedback_policy,
    retraining_signals,
    signal_label,
    summarise_feedback,
)
from medllm_pipelines.lib.scenarios.store import DocumentVersion

PLANTED_COMMENT = "Called Mrs Henrietta Vandersloot back on 0612345678 about her HbA1c"


def feedback(doc_id: str, agreement: str = "agree", *, scenario: str = "diagnosis", version: str | int = "3",
             probability: float | None = 0.8, threshold: float = 0.5, true_outcome: Any = None,
             comment: str | None = None, created_at: str = "2025-03-01T09:00:00.000000Z") -> DocumentVersion:
    """A stored feedback document as ``POST /v1/feedback`` writes it (the diagnosis result attached)."""
    result = None if probability is None else {
        "probability": probability, "threshold": threshold, "features": {"hba1c": 8.31, "bmi": 31.4},
        "model": {"name": "t2d_risk", "version": version, "alias": "champion"}}
    document = {"scenario": scenario, "result_id": "ab" * 32, "agreement": agreement, "true_outcome": true_outcome,
                "comment": comment, "recorded_by_role": "clinician", "result": result}
    return DocumentVersion("feedback", doc_id, 1, "dr-ward", created_at, False, None, None, document)


def many(count: int, agreement: str, start: int = 0, **kwargs: Any) -> list[DocumentVersion]:
    return [feedback(f"f{start + i:04d}", agreement, **kwargs) for i in range(count)]


def test_the_table_has_its_schema_and_no_comment_features_or_result_id() -> None:
    documents = [
        feedback("a1", "disagree", probability=0.81, true_outcome=0, comment=PLANTED_COMMENT),
        feedback("a2", "agree", probability=0.2, true_outcome=0, created_at="2025-02-01T09:00:00.000000Z"),
        feedback("a3", "unsure", scenario="triage", probability=None, true_outcome="cardiology"),
    ]
    frame = feedback_frame(documents)
    assert {c: str(t) for c, t in frame.dtypes.items()} == {
        c: str(pd.Series(dtype=t).dtype) for c, t in FEEDBACK_COLUMNS.items()}
    cells = "\x00".join(frame.astype(str).to_numpy().ravel())
    for withheld in ("Vandersloot", "0612345678", "8.31", "31.4", "ab" * 32, "dr-ward"):
        assert withheld not in cells
    assert frame["feedback_id"].tolist() == ["a2", "a1", "a3"]  # oldest first
    by_id = frame.set_index("feedback_id")
    assert bool(by_id.loc["a1", "has_comment"]) and not bool(by_id.loc["a2", "has_comment"])
    assert bool(by_id.loc["a1", "predicted_label"]) and not bool(by_id.loc["a2", "predicted_label"])
    assert by_id.loc["a1", "outcome_matches_prediction"] == False  # noqa: E712 (pandas NA-aware scalar)
    assert by_id.loc["a2", "outcome_matches_prediction"] == True  # noqa: E712
    assert by_id.loc["a1", "true_outcome"] == "0" and by_id.loc["a3", "true_outcome"] == "cardiology"
    assert pd.isna(by_id.loc["a3", "model_name"]) and pd.isna(by_id.loc["a3", "outcome_matches_prediction"])


def test_no_documents_give_an_empty_table_with_its_types_and_no_signal() -> None:
    frame = feedback_frame([])
    assert frame.empty and list(frame.columns) == list(FEEDBACK_COLUMNS)
    assert str(frame["recorded_at"].dtype) == "datetime64[ns, UTC]" and str(frame["has_comment"].dtype) == "boolean"
    assert retraining_signals(frame) == []


def test_values_outside_the_services_vocabulary_become_nulls_not_text() -> None:
    odd = DocumentVersion("feedback", "x1", 2, "other-client", "not a date", False, None, None,
                          {"scenario": "Mr Smith", "agreement": "see my note", "result": "free text",
                           "comment": ["not", "text"], "true_outcome": {"nested": 1}})
    row = feedback_frame([odd]).iloc[0]
    assert row[["scenario", "agreement", "model_name", "true_outcome", "probability", "recorded_at"]].isna().all()
    assert not bool(row["has_comment"])


@pytest.mark.parametrize(("disagreeing", "agreeing", "due"), [
    (6, 14, False),   # 20 positions, rate 0.30: at the maximum, not above it
    (7, 13, True),    # 20 positions, rate 0.35
    (7, 12, False),   # rate 0.37 but 19 positions: too little evidence
    (25, 0, True),
])
def test_disagreement_recommends_retraining_only_above_its_threshold_with_enough_positions(
        disagreeing: int, agreeing: int, due: bool) -> None:
    documents = many(disagreeing, "disagree") + many(agreeing, "agree", start=100) + many(10, "unsure", start=200)
    (signal,) = retraining_signals(feedback_frame(documents))
    assert signal["retraining_recommended"] is due
    assert signal["reasons"] == ([REASON_DISAGREEMENT] if due else [])
    assert (signal["disagree"], signal["agree"], signal["unsure"], signal["feedback"]) == (
        disagreeing, agreeing, 10, disagreeing + agreeing + 10)


@pytest.mark.parametrize(("wrong", "right", "due"), [(9, 21, False), (10, 20, True), (10, 19, False)])
def test_true_outcomes_contradicting_predictions_recommend_retraining(wrong: int, right: int, due: bool) -> None:
    # all agree (no disagreement signal); predicted positive (0.8 >= 0.5), the true outcome 0 contradicts it
    documents = many(wrong, "agree", true_outcome=0) + many(right, "agree", start=100, true_outcome=1)
    (signal,) = retraining_signals(feedback_frame(documents))
    assert signal["outcomes"] == wrong + right and signal["outcome_errors"] == wrong
    assert signal["reasons"] == ([REASON_OUTCOME_ERROR] if due else [])


def test_each_model_version_is_judged_on_its_own_evidence() -> None:
    documents = many(25, "disagree", version="3") + many(25, "agree", start=100, version="4")
    signals = {s["model_version"]: s for s in retraining_signals(feedback_frame(documents))}
    assert signals["3"]["retraining_recommended"] and not signals["4"]["retraining_recommended"]
    assert signal_label(signals["3"]) == "t2d_risk v3 (diagnosis)"
    assert evidence_key(signals["3"]) == "diagnosis:t2d_risk:3:25"


def test_feedback_without_a_result_counts_under_its_scenario() -> None:
    documents = many(21, "disagree", scenario="triage", probability=None)
    (signal,) = retraining_signals(feedback_frame(documents))
    assert (signal["scenario"], signal["model_name"], signal["model_version"]) == ("triage", None, None)
    assert signal["retraining_recommended"] and signal_label(signal) == "no model attached (triage)"


def test_thresholds_come_from_the_versioned_policy_file(tmp_path: Path) -> None:
    shipped = load_feedback_policy()
    assert shipped.version and shipped.thresholds() == {
        "min_feedback": 20, "max_disagreement": 0.3, "min_outcomes": 30, "max_outcome_error": 0.3}
    strict = tmp_path / "policy.yaml"
    strict.write_text('version: "9.9.9"\ndisagreement: {min_feedback: 5, max_rate: 0.1}\n'
                      "outcomes: {min_outcomes: 5, max_error_rate: 0.1}\n")
    documents = many(2, "disagree") + many(8, "agree", start=100)
    assert not summarise_feedback(documents).recommended
    summary = summarise_feedback(documents, load_feedback_policy(strict))
    assert summary.recommended and summary.as_metadata()["feedback_policy_version"] == "9.9.9"


@pytest.mark.parametrize("broken", [
    "version: '2'\ndisagreement: {min_feedback: 0, max_rate: 0.3}\noutcomes: {min_outcomes: 30, max_error_rate: 0.3}",
    "version: '2'\ndisagreement: {min_feedback: 20, max_rate: 30}\noutcomes: {min_outcomes: 30, max_error_rate: 0.3}",
    "version: '2'\ndisagreement: {min_feedback: 20}\noutcomes: {min_outcomes: 30, max_error_rate: 0.3}",
])
def test_a_malformed_policy_is_refused(tmp_path: Path, broken: str) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(broken)
    with pytest.raises(ValueError):
        load_feedback_policy(path)


def test_the_summary_counts_comments_and_agreement_without_their_text() -> None:
    documents = [*many(3, "agree", comment=PLANTED_COMMENT), *many(1, "disagree", start=10),
                 *many(2, "unsure", start=20, scenario="imaging", probability=None)]
    metadata = summarise_feedback(documents).as_metadata()
    assert metadata["comments_withheld"] == 3 and metadata["agreement_rate"] == 0.75
    assert metadata["feedback_by_scenario"] == {"diagnosis": 4, "imaging": 2}
    assert PLANTED_COMMENT.split()[2] not in repr(metadata)
