"""Dataset versions and cards: what a labelled set or split is, where it came from, how good it is.

The version of a dataset is the content hash of its table (order-independent,
``frame_content_hash``); for a model's training data it is the hash of the
features joined with their split, exactly the ``dataset_version`` the train
stage logs to MLflow, so a run names the card it was trained on. A card
records sources, consent basis, counts per class / split / site / sex / age
band, agreement, the leakage check and known defects; it is shown as asset
metadata, written as JSON and Markdown next to the data, and collected in
``curate.dataset_catalog`` for ``medllm datasets``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from medllm_pipelines.lib.common.records import frame_content_hash
from medllm_pipelines.lib.curate.dataset import join_features_with_splits

LABELLED_SET = "labelled_set"
SPLIT = "split"
CONSENT_BASIS = (
    "research consent granted and not withdrawn at build time (deidentify/consent_registry); "
    "persons without it are excluded and counted"
)


def dataset_version(frame: pd.DataFrame) -> str:
    return frame_content_hash(frame)


def training_dataset_version(features: pd.DataFrame, splits: pd.DataFrame) -> str:
    """The version of a model's training data: features joined with their split (what MLflow runs carry)."""
    return join_features_with_splits(features, splits).version


def _counts(series: pd.Series) -> dict[str, int]:
    return {str(k): int(v) for k, v in series.fillna("<none>").astype(str).value_counts().sort_index().items()}


def demographic_counts(frame: pd.DataFrame, patients: pd.DataFrame | None) -> dict[str, dict[str, int]]:
    """Rows per site, sex and age band (demographics looked up by pseudonym)."""
    counts: dict[str, dict[str, int]] = {}
    if "institution" in frame.columns:
        counts["per_site"] = _counts(frame["institution"])
    if patients is not None and "patient_pseudonym" in frame.columns and len(patients):
        demo = patients.sort_values(["patient_pseudonym", "institution"]).drop_duplicates("patient_pseudonym")
        joined = frame[["patient_pseudonym"]].merge(demo[["patient_pseudonym", "sex", "age_band", "institution"]],
                                                    on="patient_pseudonym", how="left")
        counts["per_sex"] = _counts(joined["sex"])
        counts["per_age_band"] = _counts(joined["age_band"])
        if "per_site" not in counts:
            counts["per_site"] = _counts(joined["institution"])
    return counts


def build_card(
    *,
    name: str,
    kind: str,
    frame: pd.DataFrame,
    description: str,
    sources: list[str],
    label_column: str | None,
    patients: pd.DataFrame | None = None,
    version: str | None = None,
    split_column: str | None = None,
    agreement: Mapping[str, Any] | None = None,
    guidelines: Mapping[str, Any] | None = None,
    spec: Mapping[str, Any] | None = None,
    leakage: Mapping[str, Any] | None = None,
    known_defects: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A dataset card as plain JSON-able data."""
    version = version or dataset_version(frame)
    counts: dict[str, Any] = {"rows": len(frame)}
    if "patient_pseudonym" in frame.columns:
        counts["persons"] = int(frame["patient_pseudonym"].nunique())
    if label_column and label_column in frame.columns:
        counts["per_class"] = _counts(frame[label_column])
    if split_column and split_column in frame.columns:
        counts["per_split"] = _counts(frame[split_column])
        if label_column and label_column in frame.columns:
            per = frame.groupby([split_column, label_column]).size()
            nested: dict[str, dict[str, int]] = {}
            for (split, label), n in per.items():
                nested.setdefault(str(split), {})[str(label)] = int(n)
            counts["per_split_class"] = nested
    counts.update(demographic_counts(frame, patients))
    return {
        "name": name,
        "kind": kind,
        "version": version,
        "version_short": version[:16],
        "description": description,
        "sources": sources,
        "consent_basis": CONSENT_BASIS,
        "counts": counts,
        "agreement": dict(agreement) if agreement else None,
        "guidelines": dict(guidelines) if guidelines else None,
        "model_spec": dict(spec) if spec else None,
        "leakage_check": dict(leakage) if leakage else None,
        "known_defects": dict(known_defects) if known_defects else {},
        **(dict(extra) if extra else {}),
    }


def card_markdown(card: Mapping[str, Any]) -> str:
    """The card as Markdown, for the asset page and the file next to the data."""
    lines = [f"# {card['name']} ({card['kind']})", "", card.get("description", ""), "",
             f"- **version**: `{card['version']}`", f"- **consent basis**: {card['consent_basis']}",
             f"- **sources**: {', '.join(card.get('sources') or [])}"]
    counts = card.get("counts") or {}
    lines += ["", "## Counts", "", f"- rows: {counts.get('rows')}", f"- persons: {counts.get('persons', '-')}"]
    for section in ("per_split", "per_class", "per_site", "per_sex", "per_age_band"):
        if counts.get(section):
            lines.append(f"- {section.replace('_', ' ')}: " + ", ".join(f"{k} {v}" for k, v in counts[section].items()))
    if counts.get("per_split_class"):
        lines += ["", "| split | " + " | ".join(sorted({c for v in counts["per_split_class"].values() for c in v})) + " |"]
        classes = sorted({c for v in counts["per_split_class"].values() for c in v})
        lines.append("|---|" + "---|" * len(classes))
        for split, per in counts["per_split_class"].items():
            lines.append(f"| {split} | " + " | ".join(str(per.get(c, 0)) for c in classes) + " |")
    known = {"name", "kind", "version", "version_short", "description", "sources", "consent_basis", "counts", "agreement",
             "guidelines", "model_spec", "leakage_check", "known_defects"}
    sections = [("Agreement", "agreement"), ("Leakage check", "leakage_check"), ("Known defects", "known_defects")]
    sections += [(key.replace("_", " ").capitalize(), key) for key in sorted(set(card) - known)]
    sections += [("Guidelines", "guidelines"), ("Model spec", "model_spec")]
    for title, key in sections:
        if card.get(key):
            lines += ["", f"## {title}", "", "```json", json.dumps(card[key], indent=2, ensure_ascii=False, sort_keys=True), "```"]
    return "\n".join(lines) + "\n"


def write_card(card: Mapping[str, Any], folder: Path) -> dict[str, str]:
    """``card.json`` and ``card.md`` in ``folder/<dataset name>/<version prefix>/``."""
    target = folder / card["name"].replace("/", "__") / card["version_short"]
    target.mkdir(parents=True, exist_ok=True)
    (target / "card.json").write_text(json.dumps(card, indent=2, ensure_ascii=False, sort_keys=True))
    (target / "card.md").write_text(card_markdown(card))
    return {"json": str(target / "card.json"), "markdown": str(target / "card.md")}


SET_DESCRIPTIONS = {
    "label/diabetes_labels": ("type 2 diabetes (ICD-10 E11) per consented person: a weak label from coded diagnoses", "label"),
    "label/triage_labels": ("department of a pre-consultation dialogue, accepted after agreement and adjudication", "label"),
    "label/clinical_entities": ("clinical entities in pre-consultation dialogues (brat), accepted", "entity_type"),
    "label/lesion_masks": ("lesion outlines on CT/MR slices, accepted", "lesion"),
    "label/lesion_boxes": ("lesion bounding boxes on CT/MR slices, accepted", "lesion"),
}
SPLIT_DESCRIPTIONS = {
    "curate/diabetes_splits": ("train/validation/test (+ k folds) of the t2d_risk dataset", "label"),
    "curate/lesion_segmentation_splits": ("train/validation/test (+ k folds) of the lesion_segmentation dataset", "lesion"),
}
IMPORT_ASSETS = {
    "label/triage_labels": "label/triage_annotations",
    "label/clinical_entities": "label/entity_annotations",
    "label/lesion_masks": "label/image_annotations",
    "label/lesion_boxes": "label/image_annotations",
}


def build_card_set(
    tables: Mapping[str, pd.DataFrame],
    agreement: pd.DataFrame,
    quarantine: pd.DataFrame,
    specs: Mapping[str, Any],
    leakage_keys: Mapping[str, Sequence[str]],
) -> list[dict[str, Any]]:
    """Cards of every labelled set and split the catalog lists (from warehouse tables only)."""
    from medllm_pipelines.lib.curate.splits import check_leakage

    patients = tables.get("deidentify/patients")
    agreement_of = {}
    for row in agreement.itertuples(index=False) if len(agreement) else ():
        agreement_of[f"label/{row.labelled_set}"] = {
            "passed": bool(row.passed),
            "guideline_versions": [v for v in str(row.guideline_versions).split(",") if v],
            "thresholds": json.loads(row.thresholds_json),
            **json.loads(row.statistics_json),
        }
    queue = tables.get("label/adjudication_queue")
    audit = tables.get("label/label_audit")
    weak = tables.get("label/weak_label_comparison")
    cards = []
    for name, (description, label_column) in SET_DESCRIPTIONS.items():
        if name not in tables:
            continue
        frame = tables[name]
        defects: dict[str, Any] = {}
        source = IMPORT_ASSETS.get(name)
        if source and len(quarantine):
            rejected = quarantine[quarantine["asset"] == source]["reason_code"].value_counts().sort_index()
            defects["annotations_rejected_at_import"] = {str(k): int(v) for k, v in rejected.items()}
        if queue is not None and len(queue):
            mine = queue[queue["labelled_set"] == name.split("/", 1)[1]]
            defects["items_open_in_adjudication_queue"] = int((mine["status"] == "open").sum())
            defects["items_resolved_by_adjudication"] = int((mine["status"] == "resolved").sum())
        extra: dict[str, Any] = {}
        if name == "label/triage_labels" and audit is not None and len(audit):
            audited = audit[audit["audited"].astype(bool)]
            errors = int((~audited["agrees"].astype(bool)).sum())
            extra["audit"] = {"sampled": len(audit), "audited": len(audited), "errors": errors,
                              "error_rate": round(errors / len(audited), 6) if len(audited) else None}
        if name == "label/triage_labels" and weak is not None and len(weak):
            covered = weak[weak["weak_label"] != "abstain"]
            extra["weak_labels_from_codes"] = {
                "coverage": round(len(covered) / len(weak), 4),
                "accuracy_where_covered": round(float(covered["agrees"].astype(bool).mean()), 4) if len(covered) else None,
            }
        if name == "label/diabetes_labels":
            extra["label_source"] = "weak label from codes: ICD-10 E11 at any institution (no human labels)"
        cards.append(build_card(
            name=name, kind=LABELLED_SET, frame=frame, description=description,
            sources=[IMPORT_ASSETS.get(name, "deidentify/conditions"), "deidentify/consent_registry"],
            label_column=label_column, patients=patients, agreement=agreement_of.get(name),
            guidelines={"versions": agreement_of[name]["guideline_versions"]} if name in agreement_of else None,
            known_defects=defects, extra=extra,
        ))
    for name, (description, label_column) in SPLIT_DESCRIPTIONS.items():
        if name not in tables:
            continue
        frame = tables[name]
        version = None
        if name == "curate/diabetes_splits" and "curate/diabetes_features" in tables:
            version = training_dataset_version(tables["curate/diabetes_features"], frame)
        report = check_leakage(frame, leakage_keys.get(name, ("patient_pseudonym",)), label=label_column)
        spec = specs.get(name)
        folds = frame[frame["fold"] >= 0]["fold"].value_counts().sort_index() if "fold" in frame.columns else pd.Series(dtype=int)
        cards.append(build_card(
            name=name, kind=SPLIT, frame=frame, description=description, version=version,
            sources=[f"model spec {spec.id} v{spec.version}"] if spec else [], label_column=label_column,
            split_column="split", patients=patients, spec=spec.describe() if spec else None,
            leakage=report.as_dict(), extra={"rows_per_fold": {str(k): int(v) for k, v in folds.items()}},
        ))
    return cards
