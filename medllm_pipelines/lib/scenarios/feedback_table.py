"""Clinician feedback as a table for continuous learning, and as evidence that a model needs retraining (rows A4, P4).

The service stores each feedback as an encrypted document of kind ``feedback`` (``store.py``, written by
``POST /v1/feedback``); the deploy stage turns the latest versions into a warehouse table and judges, per model
version, whether the feedback recommends retraining under the versioned thresholds of ``feedback_policy.yaml``.

The table keeps what learning needs and nothing that identifies a patient: the comment is free text and may hold
PHI, so only whether there was one is kept; the result's features (a patient's values) and its ``result_id`` (an
HMAC of the patient's bundle) are left out.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from medllm_pipelines.lib.scenarios.store import DocumentVersion

__all__ = [
    "FEEDBACK_COLUMNS",
    "FEEDBACK_KIND",
    "FEEDBACK_POLICY_PATH",
    "REASON_DISAGREEMENT",
    "REASON_OUTCOME_ERROR",
    "SIGNALS_METADATA_KEY",
    "FeedbackPolicy",
    "FeedbackSummary",
    "evidence_key",
    "feedback_frame",
    "load_feedback_policy",
    "retraining_signals",
    "signal_label",
    "summarise_feedback",
]

FEEDBACK_KIND = "feedback"  # the document kind the service stores feedback under
FEEDBACK_POLICY_PATH = Path(__file__).with_name("feedback_policy.yaml")
SIGNALS_METADATA_KEY = "retraining_signals"  # where the asset's metadata holds the signals (the sensor reads it)
REASON_DISAGREEMENT = "disagreement_above_threshold"
REASON_OUTCOME_ERROR = "outcome_error_above_threshold"
GROUP_COLUMNS = ("scenario", "model_name", "model_version")
BINARY_OUTCOMES = {"0": False, "1": True}

# The table's explicit schema (pandas dtypes): nullable types, so that an empty table keeps its column types.
FEEDBACK_COLUMNS: dict[str, str] = {
    "feedback_id": "string",
    "recorded_at": "datetime64[ns, UTC]",
    "scenario": "string",
    "model_name": "string",
    "model_version": "string",
    "agreement": "string",
    "true_outcome": "string",
    "probability": "float64",
    "predicted_label": "boolean",
    "outcome_matches_prediction": "boolean",
    "has_comment": "boolean",
}


# --- policy -----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FeedbackPolicy:
    """The versioned thresholds of ``feedback_policy.yaml``."""

    version: str
    min_feedback: int
    max_disagreement: float
    min_outcomes: int
    max_outcome_error: float

    def thresholds(self) -> dict[str, int | float]:
        """The keyword arguments of :func:`retraining_signals`."""
        return {"min_feedback": self.min_feedback, "max_disagreement": self.max_disagreement,
                "min_outcomes": self.min_outcomes, "max_outcome_error": self.max_outcome_error}


def load_feedback_policy(path: Path | str = FEEDBACK_POLICY_PATH) -> FeedbackPolicy:
    """Read and check the policy file: a wrong threshold must stop the asset, not silently never trigger."""
    raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    try:
        policy = FeedbackPolicy(
            version=str(raw["version"]),
            min_feedback=raw["disagreement"]["min_feedback"],
            max_disagreement=raw["disagreement"]["max_rate"],
            min_outcomes=raw["outcomes"]["min_outcomes"],
            max_outcome_error=raw["outcomes"]["max_error_rate"],
        )
    except (KeyError, TypeError) as missing:
        raise ValueError(f"{Path(path).name}: missing or malformed entry {missing}") from None
    _check_thresholds(**policy.thresholds())
    return policy


def _check_thresholds(*, min_feedback: Any, max_disagreement: Any, min_outcomes: Any, max_outcome_error: Any) -> None:
    for name, value in (("min_feedback", min_feedback), ("min_outcomes", min_outcomes)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer")
    for name, value in (("max_disagreement", max_disagreement), ("max_outcome_error", max_outcome_error)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
            raise ValueError(f"{name} must be a rate in [0, 1)")


def _vocabulary() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The service's scenarios and agreements (``diagnosis/feedback.py``), imported on use: the diagnosis package
    loads its model stack (torch) on import, which definitions.py and the sensor must not pay for."""
    from medllm_pipelines.lib.scenarios.diagnosis.feedback import AGREEMENTS, FEEDBACK_SCENARIOS

    return FEEDBACK_SCENARIOS, AGREEMENTS


# --- the table --------------------------------------------------------------------------------------------------
def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _label(value: Any) -> str | None:
    """A short server-side label (model name, version, outcome class) as text; anything else is no value."""
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str) and value.strip():
        return " ".join(value.split())
    return None


def _row(version: DocumentVersion, scenarios: tuple[str, ...], agreements: tuple[str, ...]) -> dict[str, Any]:
    document = version.document if isinstance(version.document, Mapping) else {}
    result = document.get("result") if isinstance(document.get("result"), Mapping) else {}
    model = result.get("model") if isinstance(result.get("model"), Mapping) else {}
    probability, threshold = _number(result.get("probability")), _number(result.get("threshold"))
    predicted = None if probability is None or threshold is None else probability >= threshold
    outcome = _label(document.get("true_outcome"))
    binary = BINARY_OUTCOMES.get(outcome) if outcome is not None else None
    comment = document.get("comment")
    return {
        "feedback_id": version.doc_id,
        "recorded_at": version.created_at,
        "scenario": document.get("scenario") if document.get("scenario") in scenarios else None,
        "model_name": _label(model.get("name")),
        "model_version": _label(model.get("version")),
        "agreement": document.get("agreement") if document.get("agreement") in agreements else None,
        "true_outcome": outcome,
        "probability": probability,
        "predicted_label": predicted,
        "outcome_matches_prediction": None if predicted is None or binary is None else binary == predicted,
        "has_comment": isinstance(comment, str) and bool(comment.strip()),
    }


def feedback_frame(documents: Iterable[DocumentVersion]) -> pd.DataFrame:
    """One row per feedback document (its latest version), in the columns and types of ``FEEDBACK_COLUMNS``.

    Values outside the service's vocabulary (a document written by another client) become nulls, never text.
    """
    scenarios, agreements = _vocabulary()
    frame = pd.DataFrame([_row(d, scenarios, agreements) for d in documents], columns=list(FEEDBACK_COLUMNS))
    frame["recorded_at"] = pd.to_datetime(frame["recorded_at"], utc=True, format="ISO8601", errors="coerce")
    frame = frame.astype(FEEDBACK_COLUMNS)
    return frame.sort_values(["recorded_at", "feedback_id"], kind="stable").reset_index(drop=True)


# --- retraining evidence ----------------------------------------------------------------------------------------
def _rate(part: int, whole: int) -> float | None:
    return part / whole if whole else None


def retraining_signals(frame: pd.DataFrame, *, min_feedback: int = 20, max_disagreement: float = 0.3,
                       min_outcomes: int = 30, max_outcome_error: float = 0.3) -> list[dict[str, Any]]:
    """Per scenario, model name and version: the counts, rates and the reasons retraining is recommended.

    The disagreement rate is disagree / (agree + disagree), judged once ``min_feedback`` positions exist; the
    outcome error rate is the share of comparable true outcomes that contradict the prediction, judged once
    ``min_outcomes`` exist. A rate must be *above* its maximum. Feedback with no result attached is grouped
    under its scenario with a null model (the evidence still counts; it names no version).
    """
    _check_thresholds(min_feedback=min_feedback, max_disagreement=max_disagreement, min_outcomes=min_outcomes,
                      max_outcome_error=max_outcome_error)
    if frame.empty:
        return []
    matches = frame["outcome_matches_prediction"]
    counts = pd.DataFrame({
        **{c: frame[c].astype(object).where(frame[c].notna(), None) for c in GROUP_COLUMNS},
        "feedback": 1,
        **{a: frame["agreement"].eq(a).fillna(False).astype(int) for a in _vocabulary()[1]},
        "outcomes": matches.notna().astype(int),
        "outcome_errors": matches.eq(False).fillna(False).astype(int),
        "comments": frame["has_comment"].fillna(False).astype(int),
    })
    grouped = counts.groupby(list(GROUP_COLUMNS), dropna=False, sort=False).sum()
    signals: list[dict[str, Any]] = []
    for group, row in grouped.iterrows():
        scenario, model_name, model_version = (None if pd.isna(v) else str(v) for v in group)
        figures = {k: int(v) for k, v in row.items()}
        positions = figures["agree"] + figures["disagree"]
        disagreement = _rate(figures["disagree"], positions)
        outcome_error = _rate(figures["outcome_errors"], figures["outcomes"])
        reasons = []
        if positions >= min_feedback and disagreement is not None and disagreement > max_disagreement:
            reasons.append(REASON_DISAGREEMENT)
        if figures["outcomes"] >= min_outcomes and outcome_error is not None and outcome_error > max_outcome_error:
            reasons.append(REASON_OUTCOME_ERROR)
        signals.append({
            "scenario": scenario, "model_name": model_name, "model_version": model_version, **figures,
            "disagreement_rate": None if disagreement is None else round(disagreement, 4),
            "outcome_error_rate": None if outcome_error is None else round(outcome_error, 4),
            "retraining_recommended": bool(reasons), "reasons": reasons,
        })
    return sorted(signals, key=lambda s: tuple(s[c] or "" for c in GROUP_COLUMNS))


def signal_label(signal: Mapping[str, Any]) -> str:
    """``t2d_risk v3 (diagnosis)``: how a check or a run names the model version a signal is about."""
    model = signal.get("model_name") or "no model attached"
    version = f" v{signal['model_version']}" if signal.get("model_version") else ""
    return f"{model}{version} ({signal.get('scenario') or 'unknown scenario'})"


def evidence_key(signal: Mapping[str, Any]) -> str:
    """What a retraining request is for: the model version and how much feedback it rests on (a run key)."""
    parts = (signal.get("scenario"), signal.get("model_name"), signal.get("model_version"), signal.get("feedback"))
    return ":".join("-" if p is None else str(p) for p in parts)


@dataclass(frozen=True)
class FeedbackSummary:
    """The table, its signals and the policy they were judged under; ``as_metadata`` is what the asset shows."""

    frame: pd.DataFrame
    signals: list[dict[str, Any]]
    policy: FeedbackPolicy
    recommended: list[dict[str, Any]] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "recommended", [s for s in self.signals if s["retraining_recommended"]])

    def as_metadata(self) -> dict[str, Any]:
        agreement = self.frame["agreement"]
        positions = int(agreement.isin(("agree", "disagree")).sum())
        return {
            "feedback": len(self.frame),
            "feedback_by_scenario": _counts(self.frame["scenario"]),
            "feedback_by_agreement": _counts(agreement),
            "agreement_rate": _rate(int(agreement.eq("agree").sum()), positions),
            "true_outcomes_recorded": int(self.frame["true_outcome"].notna().sum()),
            "results_attached": int(self.frame["model_name"].notna().sum()),
            "comments_withheld": int(self.frame["has_comment"].fillna(False).sum()),
            SIGNALS_METADATA_KEY: self.signals,
            "retraining_recommended": [signal_label(s) for s in self.recommended],
            "feedback_policy_version": self.policy.version,
            "feedback_policy": self.policy.thresholds(),
        }


def _counts(column: pd.Series) -> dict[str, int]:
    return {str(k): int(v) for k, v in column.fillna("<none>").astype(str).value_counts().sort_index().items()}


def summarise_feedback(documents: Iterable[DocumentVersion], policy: FeedbackPolicy | None = None) -> FeedbackSummary:
    """The feedback table and its retraining signals under ``policy`` (default: the shipped policy file)."""
    policy = policy or load_feedback_policy()
    frame = feedback_frame(documents)
    return FeedbackSummary(frame, retraining_signals(frame, **policy.thresholds()), policy)
