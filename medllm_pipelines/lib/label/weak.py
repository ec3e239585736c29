"""Weak labels derived from codes, and how far they agree with the human labels.

Codes are a cheap, noisy label source (clause 5.1.4): a diagnosis code says
what a person has, not why they came in today. The labelling functions are a
versioned data file (``weak_label_rules.yaml``); the comparison with the
accepted human labels (coverage, accuracy where not abstaining, Cohen's
kappa, confusion) says how far they can be trusted.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from medllm_pipelines.lib.common import codes as code_systems
from medllm_pipelines.lib.label.agreement import cohen_kappa

RULES_FILE = Path(__file__).with_name("weak_label_rules.yaml")
ABSTAIN = "abstain"
ICD10, ATC, RXNORM = "icd10", "atc", "rxnorm"


@dataclass(frozen=True)
class WeakRule:
    system: str
    prefix: str
    label: str
    weight: float


@dataclass(frozen=True)
class WeakRules:
    version: str
    labelled_set: str
    rules: tuple[WeakRule, ...]


@lru_cache(maxsize=2)
def load_weak_rules(path: Path = RULES_FILE) -> WeakRules:
    raw = yaml.safe_load(Path(path).read_text("utf-8"))
    rules = tuple(WeakRule(str(r["system"]), str(r["prefix"]), str(r["label"]), float(r.get("weight", 1))) for r in raw["rules"])
    return WeakRules(str(raw["version"]), str(raw["labelled_set"]), rules)


def weak_labels(codes: pd.DataFrame, rules: WeakRules) -> pd.DataFrame:
    """Per person: the weak label (or ``abstain``) and the votes behind it.

    ``codes``: patient_pseudonym, system (icd10 | atc | rxnorm), code.
    """
    votes: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for person, system, code in codes[["patient_pseudonym", "system", "code"]].drop_duplicates().itertuples(index=False):
        for rule in rules.rules:
            if rule.system == system and isinstance(code, str) and code.upper().startswith(rule.prefix.upper()):
                votes[person][rule.label] += rule.weight
    rows = []
    for person in sorted(set(codes["patient_pseudonym"])):
        tally = votes.get(person, {})
        if not tally:
            rows.append((person, ABSTAIN, "{}"))
            continue
        ranked = sorted(tally.items(), key=lambda kv: (-kv[1], kv[0]))
        best = ranked[0][0] if len(ranked) == 1 or ranked[0][1] > ranked[1][1] else ABSTAIN
        rows.append((person, best, ";".join(f"{k}={v:g}" for k, v in ranked)))
    return pd.DataFrame(rows, columns=["patient_pseudonym", "weak_label", "votes"])


def compare_with_human(pairs: pd.DataFrame) -> dict[str, Any]:
    """``pairs``: weak_label, human_label per item. Coverage, accuracy and kappa where not abstaining."""
    covered = pairs[pairs["weak_label"] != ABSTAIN]
    agree = covered["weak_label"] == covered["human_label"]
    confusion = (
        covered.groupby(["human_label", "weak_label"]).size().rename("n").reset_index()
        if len(covered) else pd.DataFrame(columns=["human_label", "weak_label", "n"])
    )
    nested: dict[str, dict[str, int]] = {}
    for human, weak, n in confusion.itertuples(index=False):
        nested.setdefault(str(human), {})[str(weak)] = int(n)
    kappa = cohen_kappa(covered["weak_label"].tolist(), covered["human_label"].tolist()) if len(covered) else float("nan")
    return {
        "items": len(pairs),
        "covered": len(covered),
        "coverage": round(len(covered) / len(pairs), 4) if len(pairs) else None,
        "accuracy_where_covered": round(float(agree.mean()), 4) if len(covered) else None,
        "cohen_kappa_where_covered": None if math.isnan(kappa) else round(kappa, 4),
        "confusion_human_to_weak": nested,
    }


MEDICATION_SYSTEMS = {code_systems.ATC: ATC, code_systems.RXNORM: RXNORM}


def medication_codes(medications: pd.DataFrame, pseudonym_map: pd.DataFrame) -> pd.DataFrame:
    """Raw MedicationRequest codes -> (patient_pseudonym, system, code); unlinked rows and other systems dropped."""
    if medications.empty:
        return pd.DataFrame(columns=["patient_pseudonym", "system", "code"])
    mapping = pseudonym_map[["institution", "patient_key", "patient_pseudonym"]].drop_duplicates(["institution", "patient_key"])
    joined = medications[["institution", "patient_key", "code_system", "code"]].merge(mapping, on=["institution", "patient_key"], how="inner")
    joined["system"] = joined["code_system"].map(MEDICATION_SYSTEMS)
    joined = joined.dropna(subset=["system", "code", "patient_pseudonym"])
    return joined[["patient_pseudonym", "system", "code"]].astype(str).reset_index(drop=True)


@dataclass
class WeakLabelComparison:
    """Per accepted item: the human label, the weak label from the person's codes, the votes, agreement."""

    frame: pd.DataFrame  # item_key, patient_pseudonym, institution, human_label, weak_label, votes, agrees
    rules_version: str

    @property
    def summary(self) -> dict[str, Any]:
        return compare_with_human(self.frame)

    def as_metadata(self) -> dict[str, Any]:
        summary = self.summary
        return {
            "comparison": summary,
            "coverage": summary["coverage"],
            "accuracy_where_covered": summary["accuracy_where_covered"],
            "cohen_kappa_where_covered": summary["cohen_kappa_where_covered"],
            "weak_label_rules_version": self.rules_version,
        }


def compare_weak_labels(human: pd.DataFrame, conditions: pd.DataFrame, medications: pd.DataFrame,
                        pseudonym_map: pd.DataFrame, rules: WeakRules) -> WeakLabelComparison:
    """Weak labels from the labelled persons' ICD-10 conditions and medication codes, beside the human labels.

    ``human``: accepted labels (item_key, patient_pseudonym, institution, label); ``conditions``: de-identified
    (patient_pseudonym, icd10_category); ``medications``: raw MedicationRequests, linked through the
    pseudonym map in memory only.
    """
    codes = pd.concat(
        [
            pd.DataFrame({"patient_pseudonym": conditions["patient_pseudonym"], "system": ICD10,
                          "code": conditions["icd10_category"]}),
            medication_codes(medications, pseudonym_map),
        ],
        ignore_index=True,
    )
    codes = codes[codes["patient_pseudonym"].isin(set(human["patient_pseudonym"]))]
    weak = weak_labels(codes, rules) if len(codes) else pd.DataFrame(columns=["patient_pseudonym", "weak_label", "votes"])
    frame = human[["item_key", "patient_pseudonym", "institution", "label"]].rename(columns={"label": "human_label"})
    frame = frame.merge(weak, on="patient_pseudonym", how="left")
    frame["weak_label"] = frame["weak_label"].fillna(ABSTAIN)
    frame["votes"] = frame["votes"].fillna("{}")
    frame["agrees"] = frame["weak_label"] == frame["human_label"]
    return WeakLabelComparison(frame, rules.version)
