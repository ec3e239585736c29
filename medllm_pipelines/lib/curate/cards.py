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
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from medllm_pipelines.lib.common.records import frame_content_hash

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
    frame = features.merge(splits[["patient_pseudonym", "split"]], on="patient_pseudonym", how="inner")
    return frame_content_hash(frame.sort_values("patient_pseudonym").reset_index(drop=True))


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
    counts: dict[str, Any] = {"rows": int(len(frame))}
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
    for title, key in (("Agreement", "agreement"), ("Leakage check", "leakage_check"), ("Known defects", "known_defects"),
                       ("Guidelines", "guidelines"), ("Model spec", "model_spec")):
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
