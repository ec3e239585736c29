"""The dataset catalog behind ``medllm datasets``: every labelled set and split, with its card.

``curate/dataset_catalog`` writes one row per dataset (name, kind, version,
rows, card JSON) to ``curate.dataset_catalog``; ``list_datasets`` reads it
back for the CLI. It is a pure function of the warehouse (no Dagster, no
Vault): an empty warehouse lists nothing.
"""

from __future__ import annotations

import json
from typing import Any

import pandas as pd

from medllm_pipelines.lib.common.warehouse import Warehouse

CATALOG_SCHEMA = "curate"
CATALOG_TABLE = "dataset_catalog"
CATALOG_COLUMNS = ["name", "kind", "version", "rows", "card_json"]


def catalog_frame(cards: list[dict[str, Any]]) -> pd.DataFrame:
    rows = [
        {
            "name": card["name"],
            "kind": card["kind"],
            "version": card["version"],
            "rows": int(card["counts"]["rows"]),
            "card_json": json.dumps(card, sort_keys=True, ensure_ascii=False),
        }
        for card in sorted(cards, key=lambda c: (c["kind"], c["name"]))
    ]
    return pd.DataFrame(rows, columns=CATALOG_COLUMNS)


def summarise_card(card: dict[str, Any]) -> dict[str, Any]:
    """What ``medllm datasets`` shows per dataset."""
    counts = card.get("counts") or {}
    leakage = card.get("leakage_check")
    agreement = card.get("agreement")
    return {
        "name": card["name"],
        "kind": card["kind"],
        "version": card["version"],
        "rows": counts.get("rows"),
        "persons": counts.get("persons"),
        "counts_per_split": counts.get("per_split", {}),
        "counts_per_class": counts.get("per_class", {}),
        "counts_per_split_class": counts.get("per_split_class", {}),
        "agreement": agreement,
        "agreement_passed": None if not agreement else agreement.get("passed"),
        "leakage_check": leakage,
        "leakage_passed": None if not leakage else leakage.get("passed"),
        "card": card,
    }


def list_datasets(warehouse: Warehouse) -> list[dict[str, Any]]:
    """Every labelled set and split: version, counts per split and class, agreement, leakage result.

    Labelled sets first, then splits, each by name. The full card is under ``card``.
    """
    if not warehouse.table_exists(CATALOG_SCHEMA, CATALOG_TABLE):
        return []
    frame = warehouse.read_table(CATALOG_SCHEMA, CATALOG_TABLE)
    order = {"labelled_set": 0, "split": 1}
    cards = [json.loads(text) for text in frame["card_json"]]
    cards.sort(key=lambda c: (order.get(c["kind"], 2), c["name"]))
    return [summarise_card(card) for card in cards]


def format_datasets(datasets: list[dict[str, Any]]) -> str:
    """A plain-text table for ``medllm datasets`` without ``--json``."""
    if not datasets:
        return "no datasets yet: materialise the label and curate stages (medllm run)"
    lines = [f"{'dataset':38} {'kind':12} {'version':17} {'rows':>7}  splits / classes / agreement / leakage"]
    for d in datasets:
        splits = " ".join(f"{k}={v}" for k, v in d["counts_per_split"].items())
        classes = " ".join(f"{k}={v}" for k, v in list(d["counts_per_class"].items())[:8])
        agreement = "-" if d["agreement_passed"] is None else ("pass" if d["agreement_passed"] else "FAIL")
        leakage = "-" if d["leakage_passed"] is None else ("pass" if d["leakage_passed"] else "FAIL")
        lines.append(f"{d['name']:38} {d['kind']:12} {d['version'][:16]:17} {d['rows']:>7}  "
                     f"[{splits}] [{classes}] agreement={agreement} leakage={leakage}")
    return "\n".join(lines)


def catalog_metadata(cards: list[dict[str, Any]]) -> dict[str, Any]:
    """Per dataset its kind, version, rows and gate results; and whether every gate passed."""
    datasets = {
        c["name"]: {
            "kind": c["kind"], "version": c["version_short"], "rows": c["counts"]["rows"],
            "per_split": c["counts"].get("per_split"), "agreement_passed": (c.get("agreement") or {}).get("passed"),
            "leakage_passed": (c.get("leakage_check") or {}).get("passed"),
        }
        for c in cards
    }
    return {
        "datasets": datasets,
        "all_leakage_checks_passed": all(c["leakage_check"]["passed"] for c in cards if c.get("leakage_check")),
        "all_agreement_passed": all(
            c["agreement"]["passed"] for c in cards if c.get("agreement") and "passed" in c["agreement"]
        ),
    }
