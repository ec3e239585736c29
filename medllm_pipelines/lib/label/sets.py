"""Labelled sets from imported annotations: agreement, review queue and accepted labels.

Pure functions over the warehouse label tables (pseudonymised): the import
assets compute agreement with them, the adjudication asset the queue and the
accepted sets, and the blocking checks recompute agreement from the stored
annotations so that a check never trusts an asset's own numbers.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from medllm_pipelines.lib.label.agreement import (
    EntityAgreement,
    LabelAgreement,
    OverlapAgreement,
    ThresholdResult,
    compare_with_thresholds,
    entity_agreement,
    label_agreement,
    mask_agreement,
)
from medllm_pipelines.lib.label.consensus import (
    QUEUE_COLUMNS,
    Decision,
    SetOutcome,
    classify_items,
    entity_items,
    latest_decisions,
    mask_bbox,
    overlap_items,
)
from medllm_pipelines.lib.label.images import BOX, MASK, mask_to_rle, rle_to_mask
from medllm_pipelines.lib.label.importers import (
    BOX_SET,
    DOCUMENT,
    ENTITY_SET,
    MASK_SET,
    TRIAGE_SET,
)
from medllm_pipelines.lib.label.registry import ADJUDICATOR, Guideline

AGREEMENT_COLUMNS = ["labelled_set", "guideline_versions", "statistics_json", "thresholds_json", "passed"]
ENTITY_SET_COLUMNS = ["item_key", "patient_pseudonym", "institution", "entity_type", "start", "end", "text", "basis"]
MASK_SET_COLUMNS = ["image_id", "study_key", "patient_pseudonym", "institution", "rows", "columns", "mask_rle",
                    "lesion", "lesion_pixels", "basis", "annotators"]
BOX_SET_COLUMNS = ["image_id", "study_key", "patient_pseudonym", "institution", "rows", "columns", "bbox_x", "bbox_y",
                   "bbox_width", "bbox_height", "lesion", "basis", "annotators"]


@dataclass
class AgreementReport:
    """Agreement of one labelled set against its guideline's thresholds."""

    labelled_set: str
    guideline_versions: list[str]
    statistics: dict[str, Any]
    thresholds: list[ThresholdResult]

    @property
    def passed(self) -> bool:
        return all(t.passed for t in self.thresholds)

    def as_dict(self) -> dict[str, Any]:
        return {
            "labelled_set": self.labelled_set,
            "guideline_versions": self.guideline_versions,
            "passed": self.passed,
            "thresholds": [t.__dict__ for t in self.thresholds],
            **self.statistics,
        }

    def as_row(self) -> dict[str, Any]:
        return {
            "labelled_set": self.labelled_set,
            "guideline_versions": ",".join(self.guideline_versions),
            "statistics_json": json.dumps(self.statistics, sort_keys=True),
            "thresholds_json": json.dumps([t.__dict__ for t in self.thresholds], sort_keys=True),
            "passed": self.passed,
        }


def _thresholds(guidelines: dict[str, Guideline], versions: list[str]) -> dict[str, float]:
    """The strictest threshold per statistic over the guideline versions a set was annotated under."""
    merged: dict[str, float] = {}
    for version in versions:
        for name, value in guidelines[version].thresholds.items():
            merged[name] = max(value, merged.get(name, -math.inf))
    return merged


def _versions(frame: pd.DataFrame) -> list[str]:
    return sorted(frame["guideline_version"].dropna().unique().tolist()) if len(frame) else []


# --- triage ---------------------------------------------------------------------------------
def triage_agreement(annotations: pd.DataFrame, guidelines: dict[str, Guideline]) -> tuple[AgreementReport, LabelAgreement]:
    agreement = label_agreement(annotations, "item_key", "annotator_id", "label")
    versions = _versions(annotations)
    report = AgreementReport(TRIAGE_SET, versions, agreement.as_dict(),
                             compare_with_thresholds(agreement.statistics(), _thresholds(guidelines, versions)))
    return report, agreement


def adjudicator_decisions(decisions: pd.DataFrame, labelled_set: str) -> dict[str, Decision]:
    chosen = decisions[(decisions["labelled_set"] == labelled_set) & (decisions["role"] == ADJUDICATOR)] if len(decisions) else decisions
    return latest_decisions(chosen) if len(chosen) else {}


def triage_set(annotations: pd.DataFrame, decisions: pd.DataFrame) -> SetOutcome:
    return classify_items(annotations, adjudicator_decisions(decisions, TRIAGE_SET), TRIAGE_SET)


# --- entities ----------------------------------------------------------------------------------
def _entity_documents(annotations: pd.DataFrame) -> tuple[dict[str, tuple[int, dict[str, set]]], dict[str, dict[str, Any]]]:
    documents: dict[str, tuple[int, dict[str, set]]] = {}
    items: dict[str, dict[str, Any]] = {}
    for (item_key, annotator), group in annotations.groupby(["item_key", "annotator_id"], sort=True):
        first = group.iloc[0]
        entities = group[group["kind"] == "entity"]
        spans = {(int(s), int(e), str(t)) for s, e, t in entities[["start", "end", "type"]].itertuples(index=False)}
        _, by = documents.setdefault(item_key, (int(first["text_length"]), {}))
        by[annotator] = spans
        items.setdefault(item_key, {"item_key": item_key, "patient_pseudonym": first["patient_pseudonym"],
                                    "institution": first["institution"]})
    return documents, items


def entity_agreement_report(annotations: pd.DataFrame, guidelines: dict[str, Guideline]) -> tuple[AgreementReport, EntityAgreement]:
    versions = _versions(annotations)
    types = sorted({t for v in versions for t in guidelines[v].entity_types})
    documents, _ = _entity_documents(annotations[annotations["kind"].isin(["entity", DOCUMENT])])
    agreement = entity_agreement(documents, types)
    report = AgreementReport(ENTITY_SET, versions, agreement.as_dict(),
                             compare_with_thresholds(agreement.statistics(), _thresholds(guidelines, versions)))
    return report, agreement


def entity_set(annotations: pd.DataFrame, decisions: pd.DataFrame, guidelines: dict[str, Guideline],
               agreement: EntityAgreement) -> tuple[SetOutcome, pd.DataFrame]:
    """Accepted entities (one row each; text only where the import kept it) and the document-level outcome."""
    versions = _versions(annotations)
    review = min((float(guidelines[v].review.get("review_threshold", 0.8)) for v in versions), default=0.8)
    documents, items = _entity_documents(annotations[annotations["kind"].isin(["entity", DOCUMENT])])
    spans = {doc: by for doc, (_, by) in documents.items()}
    outcome, chosen = entity_items(items, spans, agreement.per_document, adjudicator_decisions(decisions, ENTITY_SET),
                                   ENTITY_SET, review)
    texts = {}
    entities = annotations[annotations["kind"] == "entity"]
    for row in entities[["item_key", "start", "end", "type", "text"]].itertuples(index=False):
        if isinstance(row.text, str):
            texts[(row.item_key, int(row.start), int(row.end), row.type)] = row.text
    basis = outcome.accepted.set_index("item_key")["basis"].to_dict() if len(outcome.accepted) else {}
    rows = []
    for doc, kept in sorted(chosen.items()):
        item = items[doc]
        for start, end, entity_type in sorted(kept):
            rows.append({**item, "entity_type": entity_type, "start": start, "end": end,
                         "text": texts.get((doc, start, end, entity_type)), "basis": basis[doc]})
    frame = pd.DataFrame(rows, columns=ENTITY_SET_COLUMNS)
    frame["start"] = frame["start"].astype("Int64")
    frame["end"] = frame["end"].astype("Int64")
    return outcome, frame


# --- images ----------------------------------------------------------------------------------------
def _regions(annotations: pd.DataFrame, shape_kind: str) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, dict[str, Any]]]:
    chosen = annotations[annotations["shape_kind"] == shape_kind]
    regions: dict[str, dict[str, np.ndarray]] = {}
    items: dict[str, dict[str, Any]] = {}
    for row in chosen.itertuples(index=False):
        shape = (int(row.rows), int(row.columns))
        regions.setdefault(row.image_id, {})[row.annotator_id] = rle_to_mask(row.mask_rle, shape)
        items.setdefault(row.image_id, {"image_id": row.image_id, "item_key": row.image_id, "study_key": row.study_key,
                                        "patient_pseudonym": row.patient_pseudonym, "institution": row.institution,
                                        "rows": shape[0], "columns": shape[1]})
    return regions, items


def image_agreement_reports(annotations: pd.DataFrame, guidelines: dict[str, Guideline]) -> dict[str, tuple[AgreementReport, OverlapAgreement]]:
    """Masks: Dice/IoU of the outlines; boxes: Dice/IoU of the filled boxes (per image, per annotator pair)."""
    reports = {}
    for labelled_set, kind, wanted in ((MASK_SET, MASK, "mask_"), (BOX_SET, BOX, "box_")):
        chosen = annotations[annotations["shape_kind"] == kind]
        regions, _ = _regions(chosen, kind)
        agreement = mask_agreement(regions, kind=kind)
        versions = _versions(chosen)
        thresholds = {k: v for k, v in _thresholds(guidelines, versions).items() if k.startswith(wanted)}
        reports[labelled_set] = (
            AgreementReport(labelled_set, versions, agreement.as_dict(), compare_with_thresholds(agreement.statistics(), thresholds)),
            agreement,
        )
    return reports


def image_sets(annotations: pd.DataFrame, decisions: pd.DataFrame, guidelines: dict[str, Guideline],
               agreements: dict[str, tuple[AgreementReport, OverlapAgreement]]) -> dict[str, tuple[SetOutcome, pd.DataFrame]]:
    """Accepted masks (majority or adjudicated, RLE) and boxes (the box around the accepted region)."""
    versions = _versions(annotations)
    review = {
        MASK_SET: ("dice", min((float(guidelines[v].review.get("review_threshold_dice", 0.7)) for v in versions), default=0.7)),
        BOX_SET: ("iou", min((float(guidelines[v].review.get("review_threshold_iou", 0.5)) for v in versions), default=0.5)),
    }
    # One expert decision per image covers its mask and its box.
    decided = adjudicator_decisions(decisions, MASK_SET)
    results = {}
    for labelled_set, kind in ((MASK_SET, MASK), (BOX_SET, BOX)):
        regions, items = _regions(annotations, kind)
        metric, threshold = review[labelled_set]
        per_item = agreements[labelled_set][1].per_item()
        outcome, chosen = overlap_items(items, regions, per_item, decided, labelled_set, metric, threshold)
        basis = outcome.accepted.set_index("item_key")[["basis", "annotators"]].to_dict("index") if len(outcome.accepted) else {}
        rows = []
        for image_id, region in sorted(chosen.items()):
            item = items[image_id]
            common = {k: item[k] for k in ("image_id", "study_key", "patient_pseudonym", "institution", "rows", "columns")}
            if kind == MASK:
                rows.append({**common, "mask_rle": mask_to_rle(region), "lesion": bool(region.any()),
                             "lesion_pixels": int(region.sum()), **basis[image_id]})
            else:
                box = mask_bbox(region)
                rows.append({**common, "bbox_x": box[0] if box else None, "bbox_y": box[1] if box else None,
                             "bbox_width": box[2] if box else None, "bbox_height": box[3] if box else None,
                             "lesion": box is not None, **basis[image_id]})
        columns = MASK_SET_COLUMNS if kind == MASK else BOX_SET_COLUMNS
        results[labelled_set] = (outcome, pd.DataFrame(rows, columns=columns))
    return results


def combine_queues(outcomes: list[SetOutcome]) -> pd.DataFrame:
    frames = [o.queue for o in outcomes if len(o.queue)]
    if not frames:
        return pd.DataFrame(columns=QUEUE_COLUMNS)
    return pd.concat(frames, ignore_index=True).sort_values(["labelled_set", "status", "item_key"]).reset_index(drop=True)
