"""From several annotators to one accepted label: consensus, the review queue, expert decisions.

Per item the annotators either agree well enough (the guideline's review rule)
and the consensus is accepted - the unanimous label, the majority mask or
box, the entities a majority marked - or the item goes to the adjudication
queue. A queued item is accepted only once an expert (a registered
adjudicator) has decided it: a label for classification items,
``accept:<annotator>`` (take that annotator's annotation) or ``reject``
(leave the item out) for entities, masks and boxes. Until then it is
"pending" and stays out of the labelled set, counted.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from medllm_pipelines.lib.label.agreement import Span, span_f1

QUEUE_COLUMNS = [
    "labelled_set",
    "item_key",
    "patient_pseudonym",
    "institution",
    "reason_code",
    "reason",
    "priority",
    "annotators",
    "details",
    "status",
    "decision",
    "decided_by",
    "decided_at",
]
OPEN = "open"
RESOLVED = "resolved"
UNANIMOUS = "unanimous"
MAJORITY = "majority"
ADJUDICATED = "adjudicated"
REJECTED = "rejected"
PENDING = "pending_review"
REJECT = "reject"
ACCEPT_PREFIX = "accept:"
INVALID_DECISION = "invalid_decision"


@dataclass(frozen=True)
class Decision:
    item_key: str
    action: str  # label | accept | reject
    value: str | None  # the label, or the annotator whose annotation is accepted
    decided_by: str
    decided_at: str


def parse_decision(raw: str, task: str, labels: tuple[str, ...]) -> tuple[str, str | None] | None:
    """(action, value) of an expert's decision string, or None when it is not a valid decision."""
    raw = raw.strip()
    if raw == REJECT:
        return REJECT, None
    if task == "classification":
        return ("label", raw) if raw in labels else None
    if raw.startswith(ACCEPT_PREFIX) and len(raw) > len(ACCEPT_PREFIX):
        return "accept", raw[len(ACCEPT_PREFIX) :]
    return None


def latest_decisions(decisions: pd.DataFrame) -> dict[str, Decision]:
    """The last decision per item (an expert may revise one)."""
    found: dict[str, Decision] = {}
    if decisions.empty:
        return found
    ordered = decisions.sort_values(["decided_at", "decided_by"], kind="stable")
    for row in ordered.itertuples(index=False):
        found[row.item_key] = Decision(row.item_key, row.action, row.value, row.decided_by, row.decided_at)
    return found


def majority_label(labels: list[str]) -> tuple[str | None, bool]:
    """The strict-majority label (None if none) and whether the annotators were unanimous."""
    counts = Counter(labels)
    label, votes = counts.most_common(1)[0]
    return (label if votes * 2 > len(labels) else None), len(counts) == 1


def majority_mask(masks: list[np.ndarray]) -> np.ndarray:
    """Pixels marked by a strict majority of the annotators."""
    stacked = np.stack([np.asarray(m, dtype=bool) for m in masks])
    return stacked.sum(axis=0) * 2 > len(masks)


def mask_bbox(mask: np.ndarray) -> tuple[float, float, float, float] | None:
    rows, cols = np.nonzero(mask)
    if rows.size == 0:
        return None
    return float(cols.min()), float(rows.min()), float(cols.max() - cols.min() + 1), float(rows.max() - rows.min() + 1)


def majority_spans(by_annotator: Mapping[str, set[Span]]) -> set[Span]:
    counts = Counter(span for spans in by_annotator.values() for span in spans)
    return {span for span, votes in counts.items() if votes * 2 > len(by_annotator)}


def _queue_row(labelled_set: str, item: Mapping[str, Any], reason_code: str, reason: str, priority: str,
               annotators: list[str], details: dict[str, Any], decision: Decision | None) -> dict[str, Any]:
    return {
        "labelled_set": labelled_set,
        "item_key": item["item_key"],
        "patient_pseudonym": item.get("patient_pseudonym"),
        "institution": item.get("institution"),
        "reason_code": reason_code,
        "reason": reason,
        "priority": priority,
        "annotators": ",".join(annotators),
        "details": json.dumps(details, sort_keys=True, ensure_ascii=False),
        "status": RESOLVED if decision else OPEN,
        "decision": None if decision is None else (decision.value if decision.action == "label" else
                                                  REJECT if decision.action == REJECT else ACCEPT_PREFIX + str(decision.value)),
        "decided_by": decision.decided_by if decision else None,
        "decided_at": decision.decided_at if decision else None,
    }


def _json_number(value: float) -> float | None:
    return None if value is None or math.isnan(value) else round(float(value), 4)


@dataclass
class SetOutcome:
    """Accepted items of a labelled set and its review queue."""

    accepted: pd.DataFrame
    queue: pd.DataFrame
    by_basis: dict[str, int]


def _outcome(accepted_rows: list[dict[str, Any]], queue_rows: list[dict[str, Any]], columns: list[str],
             basis_counts: Counter) -> SetOutcome:
    accepted = pd.DataFrame(accepted_rows, columns=columns)
    queue = pd.DataFrame(queue_rows, columns=QUEUE_COLUMNS)
    return SetOutcome(accepted, queue, {k: int(v) for k, v in sorted(basis_counts.items())})


# --- classification -------------------------------------------------------------------
CLASSIFICATION_COLUMNS = ["item_key", "patient_pseudonym", "institution", "label", "basis", "annotators", "guideline_version"]


def classify_items(long: pd.DataFrame, decisions: Mapping[str, Decision], labelled_set: str) -> SetOutcome:
    """Unanimous items are accepted; any disagreement is queued (high priority without a majority)."""
    accepted, queue, basis = [], [], Counter()
    for item_key, group in long.sort_values(["item_key", "annotator_id"]).groupby("item_key", sort=True):
        labels = group["label"].tolist()
        annotators = group["annotator_id"].tolist()
        first = group.iloc[0]
        item = {"item_key": item_key, "patient_pseudonym": first.get("patient_pseudonym"), "institution": first.get("institution")}
        majority, unanimous = majority_label(labels)
        decision = decisions.get(item_key)
        if not unanimous:
            code, priority = ("no_majority", "high") if majority is None else ("annotators_disagree", "normal")
            reason = "no label has a majority" if majority is None else "annotators are not unanimous"
            queue.append(_queue_row(labelled_set, item, code, reason, priority, annotators,
                                    {"labels": dict(zip(annotators, labels, strict=True)), "majority": majority}, decision))
        if decision is not None and decision.action == REJECT:
            basis[REJECTED] += 1
            continue
        if decision is not None and decision.action == "label":
            label, how = decision.value, ADJUDICATED
        elif unanimous:
            label, how = labels[0], UNANIMOUS
        else:
            basis[PENDING] += 1
            continue
        basis[how] += 1
        accepted.append({**item, "label": label, "basis": how, "annotators": len(labels),
                         "guideline_version": first.get("guideline_version")})
    return _outcome(accepted, queue, CLASSIFICATION_COLUMNS, basis)


# --- overlap sets (masks, boxes) ------------------------------------------------------------
def overlap_items(
    items: Mapping[str, Mapping[str, Any]],
    regions: Mapping[str, Mapping[str, np.ndarray]],
    per_item: pd.DataFrame,
    decisions: Mapping[str, Decision],
    labelled_set: str,
    metric: str,
    review_threshold: float,
) -> tuple[SetOutcome, dict[str, np.ndarray]]:
    """Majority region where the annotators' minimum pairwise ``metric`` reaches the threshold.

    Returns the outcome and the accepted region per item (for the caller to store).
    """
    scores = per_item.set_index("item").to_dict("index") if len(per_item) else {}
    accepted, queue, basis, chosen = [], [], Counter(), {}
    for item_key in sorted(regions):
        by_annotator = regions[item_key]
        item = items[item_key]
        score = scores.get(item_key, {})
        worst = score.get(f"min_{metric}", math.nan)
        decision = decisions.get(item_key)
        needs_review = not (isinstance(worst, float) and math.isnan(worst)) and worst < review_threshold
        if needs_review:
            queue.append(_queue_row(
                labelled_set, item, f"low_{metric}", f"minimum pairwise {metric} below {review_threshold}", "normal",
                sorted(by_annotator), {f"min_{metric}": _json_number(worst), f"mean_{metric}": _json_number(score.get(f"mean_{metric}", math.nan))},
                decision))
        if decision is not None and decision.action == REJECT:
            basis[REJECTED] += 1
            continue
        if decision is not None and decision.action == "accept" and decision.value in by_annotator:
            region, how = np.asarray(by_annotator[decision.value], dtype=bool), ADJUDICATED
        elif needs_review:
            basis[PENDING] += 1
            continue
        else:
            region, how = majority_mask(list(by_annotator.values())), MAJORITY
        basis[how] += 1
        chosen[item_key] = region
        accepted.append({**item, "basis": how, "annotators": len(by_annotator), "lesion": bool(region.any())})
    columns = [*next(iter(items.values())).keys(), "basis", "annotators", "lesion"] if items else ["item_key", "basis", "annotators", "lesion"]
    return _outcome(accepted, queue, columns, basis), chosen


# --- entities ------------------------------------------------------------------------------
def entity_items(
    documents: Mapping[str, Mapping[str, Any]],
    spans: Mapping[str, Mapping[str, set[Span]]],
    per_document: pd.DataFrame,
    decisions: Mapping[str, Decision],
    labelled_set: str,
    review_threshold: float,
) -> tuple[SetOutcome, dict[str, set[Span]]]:
    """Entities marked by a majority; documents whose annotators' min pairwise F1 is low are queued."""
    scores = per_document.set_index("document").to_dict("index") if len(per_document) else {}
    accepted, queue, basis, chosen = [], [], Counter(), {}
    for doc in sorted(spans):
        by_annotator = spans[doc]
        item = documents[doc]
        worst = scores.get(doc, {}).get("min_f1", math.nan)
        decision = decisions.get(doc)
        needs_review = len(by_annotator) >= 2 and not math.isnan(worst) and worst < review_threshold
        if needs_review:
            pair_scores = {}
            names = sorted(by_annotator)
            for i, a in enumerate(names):
                for b in names[i + 1 :]:
                    pair_scores[f"{a}~{b}"] = _json_number(span_f1(by_annotator[a], by_annotator[b]))
            queue.append(_queue_row(labelled_set, item, "low_entity_f1", f"minimum pairwise entity F1 below {review_threshold}",
                                    "normal", names, {"pairwise_f1": pair_scores,
                                                      "entities": {a: len(by_annotator[a]) for a in names}}, decision))
        if decision is not None and decision.action == REJECT:
            basis[REJECTED] += 1
            continue
        if decision is not None and decision.action == "accept" and decision.value in by_annotator:
            kept, how = set(by_annotator[decision.value]), ADJUDICATED
        elif needs_review:
            basis[PENDING] += 1
            continue
        else:
            kept, how = majority_spans(by_annotator), MAJORITY if len(by_annotator) > 1 else "single_annotator"
        basis[how] += 1
        chosen[doc] = kept
        accepted.append({**item, "basis": how, "annotators": len(by_annotator), "entities": len(kept)})
    columns = [*next(iter(documents.values())).keys(), "basis", "annotators", "entities"] if documents else ["item_key", "basis", "annotators", "entities"]
    return _outcome(accepted, queue, columns, basis), chosen
