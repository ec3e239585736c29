"""Clinician feedback on a scenario result, validated and normalised before the service stores it.

Feedback is the input of continuous learning (clause 6.2.4): agreement with the
result and, when known, the true outcome, in the scenario's own terms. The record
is strict (unknown keys refused) so that a client cannot smuggle fields into the
store; a comment is free text and may hold PHI, so it is never echoed in an error.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from medllm_pipelines.lib.scenarios.errors import ScenarioInputError

__all__ = ["AGREEMENTS", "FEEDBACK_SCENARIOS", "MAX_COMMENT_CHARS", "feedback_record"]

FEEDBACK_SCENARIOS = ("diagnosis", "triage", "imaging", "ehr")
AGREEMENTS = ("agree", "disagree", "unsure")
MAX_COMMENT_CHARS = 1000
MAX_OUTCOME_CHARS = 100
FIELDS = frozenset({"scenario", "result_id", "agreement", "true_outcome", "comment"})
RESULT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")  # the ids the service hands out (uuid, ulid, hex)
# control characters other than tab and newlines
CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def _invalid(detail: str) -> ScenarioInputError:
    return ScenarioInputError("invalid_feedback", detail)


def _outcome(scenario: str, value: Any) -> int | str | None:
    """0/1 for the diagnosis scenario's binary target; a short label (a department, a finding) otherwise."""
    if value is None:
        return None
    if scenario == "diagnosis":
        if isinstance(value, bool) or (isinstance(value, int) and value in (0, 1)):
            return int(value)
        raise _invalid("true_outcome of a diagnosis is 0 or 1 (type 2 diabetes absent / present)")
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise _invalid("true_outcome must be a label (string) or a class number")
    if isinstance(value, int):
        return value
    label = " ".join(value.split())
    if not label or len(label) > MAX_OUTCOME_CHARS or CONTROL.search(label):
        raise _invalid(f"true_outcome must be 1..{MAX_OUTCOME_CHARS} printable characters")
    return label


def feedback_record(payload: Mapping[str, Any]) -> dict[str, Any]:
    """The normalised record: scenario, result_id, agreement, true_outcome (or None), comment (or None)."""
    if not isinstance(payload, Mapping):
        raise _invalid("feedback must be a JSON object")
    unknown = set(payload) - FIELDS
    if unknown:
        raise _invalid(f"{len(unknown)} unknown field(s); allowed: {', '.join(sorted(FIELDS))}")
    scenario = payload.get("scenario")
    if scenario not in FEEDBACK_SCENARIOS:
        raise _invalid(f"scenario must be one of {', '.join(FEEDBACK_SCENARIOS)}")
    result_id = payload.get("result_id")
    if not isinstance(result_id, str) or not RESULT_ID.fullmatch(result_id):
        raise _invalid("result_id must be the id of a result (1-128 letters, digits, '.', '_', ':', '-')")
    agreement = payload.get("agreement")
    if agreement not in AGREEMENTS:
        raise _invalid(f"agreement must be one of {', '.join(AGREEMENTS)}")
    comment = payload.get("comment")
    if comment is not None:
        if not isinstance(comment, str):
            raise _invalid("comment must be a string")
        comment = comment.strip().replace("\r\n", "\n")
        if len(comment) > MAX_COMMENT_CHARS:
            raise _invalid(f"comment is longer than {MAX_COMMENT_CHARS} characters")
        if CONTROL.search(comment):
            raise _invalid("comment holds control characters")
        comment = comment or None
    return {
        "scenario": scenario,
        "result_id": result_id,
        "agreement": agreement,
        "true_outcome": _outcome(scenario, payload.get("true_outcome")),
        "comment": comment,
    }
