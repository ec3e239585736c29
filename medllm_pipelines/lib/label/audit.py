"""Random-sample audit of accepted labels (clause 5.1.4.2: review and correction).

An item is in the audit sample when a hash of (seed, labelled set,
institution, item id) falls below the sampling rate. The sample is therefore
random with respect to the items' content, reproducible by anyone who holds
the guideline file, stable as items are added, and known to the auditor's
tool before the pipeline runs. The error rate is the share of audited,
accepted labels the auditor disagrees with, with a Wilson 95 % interval.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pandas as pd

from medllm_pipelines.lib.label.registry import AUDITOR

if TYPE_CHECKING:
    from medllm_pipelines.lib.label.registry import Guideline

_SPACE = float(2**64)


def in_audit_sample(seed: str, labelled_set: str, institution: str | None, item_id: str, rate: float) -> bool:
    digest = hashlib.sha256(f"{seed}:{labelled_set}:{institution or ''}:{item_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / _SPACE < rate


def wilson_interval(errors: int, n: int, z: float = 1.959964) -> tuple[float | None, float | None]:
    if n == 0:
        return None, None
    p = errors / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return round(max(0.0, centre - half), 6), round(min(1.0, centre + half), 6)


@dataclass
class AuditResult:
    sampled: int  # accepted items in the sample
    audited: int  # of those, with an auditor's verdict
    errors: int
    frame: pd.DataFrame  # item_key, accepted_label, audit_label, agrees

    @property
    def error_rate(self) -> float | None:
        return round(self.errors / self.audited, 6) if self.audited else None

    def as_dict(self) -> dict[str, Any]:
        low, high = wilson_interval(self.errors, self.audited)
        return {
            "sampled": self.sampled,
            "audited": self.audited,
            "pending_audit": self.sampled - self.audited,
            "errors": self.errors,
            "error_rate": self.error_rate,
            "error_rate_ci95": [low, high],
        }

    def as_metadata(self) -> dict[str, Any]:
        """Each count as its own entry (plotted across runs), the whole summary, and the error rate."""
        summary = self.as_dict()
        return {
            **{f"audit.{k}": v for k, v in summary.items() if not isinstance(v, list)},
            "audit": summary,
            "error_rate": self.error_rate,
        }


def audit_accepted_labels(accepted: pd.DataFrame, sampled_keys: set[str], verdicts: pd.DataFrame) -> AuditResult:
    """Compare accepted labels in the sample with the auditor's labels.

    ``accepted``: item_key, label. ``verdicts``: item_key, label (the auditor's).
    """
    in_sample = accepted[accepted["item_key"].isin(sampled_keys)][["item_key", "label"]]
    latest = verdicts.drop_duplicates("item_key", keep="last")[["item_key", "label"]].rename(columns={"label": "audit_label"})
    frame = in_sample.rename(columns={"label": "accepted_label"}).merge(latest, on="item_key", how="left")
    frame["audited"] = frame["audit_label"].notna()
    frame["agrees"] = frame["audited"] & (frame["accepted_label"] == frame["audit_label"])
    audited = int(frame["audited"].sum())
    errors = int((frame["audited"] & ~frame["agrees"]).sum())
    return AuditResult(sampled=len(frame), audited=audited, errors=errors, frame=frame.reset_index(drop=True))


def audit_labelled_set(accepted: pd.DataFrame, annotations: pd.DataFrame, decisions: pd.DataFrame,
                       labelled_set: str) -> AuditResult:
    """The accepted labels of the items the import marked ``audit_sample``, against the registered
    auditors' latest verdicts for ``labelled_set`` (``decisions`` as label/expert_decisions stores them)."""
    sampled = set(annotations.loc[annotations["audit_sample"].astype(bool), "item_key"])
    verdicts = decisions[(decisions["role"] == AUDITOR) & (decisions["labelled_set"] == labelled_set)]
    verdicts = verdicts.sort_values("decided_at").rename(columns={"value": "label"})
    result = audit_accepted_labels(accepted, sampled, verdicts)
    result.frame = result.frame.assign(labelled_set=labelled_set)
    return result


def sampling_rules(guidelines: dict[str, Guideline]) -> dict[str, dict[str, Any]]:
    """Each guideline version's audit rule (seed, sampling rate), as the sample was drawn."""
    return {version: guideline.audit for version, guideline in guidelines.items() if guideline.audit}
