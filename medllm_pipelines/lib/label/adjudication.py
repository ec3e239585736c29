"""Review queue and accepted labelled sets, with the dataset card of each (clause 5.1.4.2).

``adjudicate`` turns the four stored import tables into the adjudication queue (items the guideline's
review rule sends to an expert, open or resolved) and the four accepted sets (consensus where the rule is
met, the expert's decision where it was not). Each ``AcceptedSet`` builds its own card and metadata, so
the adjudication asset only writes tables and cards.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd

from medllm_pipelines.lib.curate.cards import LABELLED_SET, build_card
from medllm_pipelines.lib.label.consensus import SetOutcome
from medllm_pipelines.lib.label.importers import BOX_SET, ENTITY_SET, MASK_SET, TRIAGE_SET
from medllm_pipelines.lib.label.imports import counts_by_value, guideline_metadata
from medllm_pipelines.lib.label.registry import Guideline, Registry
from medllm_pipelines.lib.label.sets import (
    AgreementReport,
    combine_queues,
    entity_agreement_report,
    entity_set,
    image_agreement_reports,
    image_sets,
    triage_agreement,
    triage_set,
)

# labelled set -> (what a row labels, the column holding the class)
SET_DESCRIPTIONS = {
    TRIAGE_SET: ("department of a pre-consultation dialogue (7 classes)", "label"),
    ENTITY_SET: ("clinical entities in pre-consultation dialogues (brat)", "entity_type"),
    MASK_SET: ("lesion outlines on CT/MR slices", "lesion"),
    BOX_SET: ("lesion bounding boxes on CT/MR slices", "lesion"),
}
QUEUE_PREVIEW_ROWS = 25


@dataclass
class AcceptedSet:
    """One accepted labelled set: its rows, how each item was accepted, and the agreement it rests on."""

    name: str
    frame: pd.DataFrame
    outcome: SetOutcome
    report: AgreementReport

    @property
    def pending_review(self) -> int:
        return self.outcome.by_basis.get("pending_review", 0)

    def card(self, *, asset: str, sources: list[str], patients: pd.DataFrame, guidelines: dict[str, Guideline]) -> dict[str, Any]:
        description, label_column = SET_DESCRIPTIONS[self.name]
        return build_card(
            name=asset, kind=LABELLED_SET, frame=self.frame, description=description, sources=sources,
            label_column=label_column, patients=patients, agreement=self.report.as_dict(),
            guidelines={v: guidelines[v].describe() for v in self.report.guideline_versions},
            known_defects={"items_pending_review": self.pending_review,
                           "items_rejected_by_expert": self.outcome.by_basis.get("rejected", 0)},
            extra={"accepted_by_basis": self.outcome.by_basis},
        )

    def as_metadata(self, card: dict[str, Any], guidelines: dict[str, Guideline], registry: Registry) -> dict[str, Any]:
        return {
            "dataset_version": card["version"],
            "accepted_by_basis": self.outcome.by_basis,
            "items_pending_review": self.pending_review,
            "agreement_passed": self.report.passed,
            "agreement": self.report.as_dict(),
            **guideline_metadata(self.report.guideline_versions, guidelines, registry),
        }


@dataclass
class Adjudication:
    """The review queue over every set, and the accepted sets (triage, entities, masks, boxes in that order)."""

    queue: pd.DataFrame
    sets: dict[str, AcceptedSet]

    @property
    def open_items(self) -> pd.DataFrame:
        return self.queue[self.queue["status"] == "open"]

    def queue_metadata(self) -> dict[str, Any]:
        return {
            "items_in_queue": len(self.queue),
            "open": len(self.open_items),
            "resolved": int((self.queue["status"] == "resolved").sum()),
            "open_by_set": counts_by_value(self.open_items, "labelled_set"),
            "queued_by_reason": counts_by_value(self.queue, "reason_code"),
        }

    def queue_markdown(self, limit: int = QUEUE_PREVIEW_ROWS) -> str:
        """The first open items as a Markdown table (keys and reasons only), for the asset page."""
        open_items = self.open_items
        if open_items.empty:
            return "No open items."
        head = "| set | item | reason | priority | annotators |\n|---|---|---|---|---|\n"
        rows = "".join(
            f"| {r.labelled_set} | `{r.item_key}` | {r.reason} | {r.priority} | {r.annotators} |\n"
            for r in open_items.head(limit).itertuples(index=False)
        )
        more = f"\n… and {len(open_items) - limit} more" if len(open_items) > limit else ""
        return head + rows + more


def adjudicate(
    triage: pd.DataFrame,
    entities: pd.DataFrame,
    images: pd.DataFrame,
    decisions: pd.DataFrame,
    guidelines: dict[str, Guideline],
) -> Adjudication:
    """Queue and accepted sets from the stored import tables and the experts' decisions."""
    triage_report, _ = triage_agreement(triage, guidelines)
    entity_report, entity_stats = entity_agreement_report(entities, guidelines)
    image_reports = image_agreement_reports(images, guidelines)
    triage_outcome = triage_set(triage, decisions)
    sets = {TRIAGE_SET: AcceptedSet(TRIAGE_SET, triage_outcome.accepted, triage_outcome, triage_report)}
    entity_outcome, entity_frame = entity_set(entities, decisions, guidelines, entity_stats)
    sets[ENTITY_SET] = AcceptedSet(ENTITY_SET, entity_frame, entity_outcome, entity_report)
    for name, (outcome, frame) in image_sets(images, decisions, guidelines, image_reports).items():
        sets[name] = AcceptedSet(name, frame, outcome, image_reports[name][0])
    return Adjudication(combine_queues([s.outcome for s in sets.values()]), sets)
