"""Disclosure control of released person-level tables: k-anonymity recoding and the gate's assessment.

Clause 5.4.1.3 (row S3). The policy's ``disclosure_control`` says which
columns of a released table are quasi-identifiers and how rare rows are
coarsened; ``risk`` holds the measures and the recoding, this module what a
release and its blocking gate make of them. Metadata carries counts and class
sizes only, never a class's values: the rare combinations are what must not
be shown.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from medllm_pipelines.lib.deidentify.policy import DisclosureRule
from medllm_pipelines.lib.deidentify.recoding import recode_to_k
from medllm_pipelines.lib.deidentify.risk import (
    KAnonymityReport,
    LDiversityReport,
    k_anonymity,
    l_diversity,
)

NO_RULE = "no quasi-identifiers declared"


def class_size_distribution(frame: pd.DataFrame, quasi_identifiers: tuple[str, ...]) -> dict[str, int]:
    """{class size: number of classes}: how the rows are spread, without naming any class."""
    if frame.empty:
        return {}
    sizes = frame.groupby(list(quasi_identifiers), dropna=False, observed=True).size().value_counts().sort_index()
    return {str(size): int(n) for size, n in sizes.items()}


@dataclass(frozen=True)
class ProtectedTable:
    """A table recoded to k-anonymity before release (or left as is when no rule applies)."""

    frame: pd.DataFrame
    rows_suppressed: int = 0
    metadata: dict[str, Any] = field(default_factory=lambda: {"k_anonymity": NO_RULE})

    def as_metadata(self) -> dict[str, Any]:
        """``k_anonymity/*`` and ``l_diversity/*`` counts, and the class-size distribution."""
        return dict(self.metadata)


def protect_released_table(rule: DisclosureRule | None, frame: pd.DataFrame, *, k: int, l: int) -> ProtectedTable:
    """Recode ``frame`` to k-anonymity on ``rule``'s quasi-identifiers; l-diversity reported when declared.

    Rows that cannot reach k even fully coarsened are dropped (the last
    resort) and counted in ``rows_suppressed``.
    """
    if rule is None:
        return ProtectedTable(frame)
    result = recode_to_k(frame, rule.quasi_identifiers, k, rule.steps)
    meta: dict[str, Any] = {f"k_anonymity/{name}": value for name, value in result.as_metadata().items()}
    meta["k_anonymity/class_sizes"] = class_size_distribution(result.frame, rule.quasi_identifiers)
    if rule.sensitive:
        diversity = l_diversity(result.frame, rule.quasi_identifiers, rule.sensitive, l=l)
        meta.update({f"l_diversity/{name}": value for name, value in diversity.as_metadata().items()})
    return ProtectedTable(result.frame, result.rows_suppressed, meta)


@dataclass(frozen=True)
class DisclosureAssessment:
    """What the blocking gate found in a table as stored: k-anonymity (and l-diversity when declared)."""

    report: KAnonymityReport
    class_sizes: dict[str, int]
    policy_version: str
    diversity: LDiversityReport | None = None

    @property
    def passed(self) -> bool:
        return self.report.satisfied

    @property
    def description(self) -> str:
        report = self.report
        if report.satisfied:
            return f"k={report.smallest_class} >= {report.k_required} over {report.classes} classes"
        return f"{len(report.classes_below_k)} classes ({report.rows_below_k} rows) below k={report.k_required}"

    def as_metadata(self) -> dict[str, Any]:
        return {
            **self.report.as_metadata(),
            "class_sizes": self.class_sizes,
            "deidentification_policy_version": self.policy_version,
            **(self.diversity.as_metadata() if self.diversity is not None else {}),
        }


def assess_released_table(frame: pd.DataFrame, rule: DisclosureRule, *, k: int, l: int,
                          policy_version: str) -> DisclosureAssessment:
    """The gate's measure of a released table: equivalence classes against k, counts only."""
    return DisclosureAssessment(
        report=k_anonymity(frame, rule.quasi_identifiers, k=k),
        class_sizes=class_size_distribution(frame, rule.quasi_identifiers),
        policy_version=policy_version,
        diversity=l_diversity(frame, rule.quasi_identifiers, rule.sensitive, l=l) if rule.sensitive else None,
    )
