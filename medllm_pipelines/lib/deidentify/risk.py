"""Disclosure risk of de-identified tables: k-anonymity, l-diversity, suppression (clause 5.4.1.3, row S3).

Removing direct identifiers is not enough when a combination of ordinary
attributes (age band, sex, region: the *quasi-identifiers*) is rare: a person
alone in their combination can be singled out by anyone who knows those facts.

* k-anonymity: every combination of quasi-identifier values (an *equivalence
  class*) holds at least k rows (Sweeney 2002).
* l-diversity: every class holds at least l distinct values of the sensitive
  attribute, so membership of a class does not reveal it (Machanavajjhala 2007).

:func:`suppress_to_k` reaches k by first replacing globally rare values of a
quasi-identifier with ``*`` (value suppression), then dropping the rows still in
classes smaller than k (record suppression), and reports both. Generalising
first (``recoding``: wider age bands, addresses to regions, local recoding to k)
keeps more data; the rows suppressed here leave every other released table
under :data:`K_ANONYMITY_SUPPRESSED` (``withholding``).

Missing values form their own class value: a missing age is as telling as
a rare one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

__all__ = [
    "K_ANONYMITY_SUPPRESSED",
    "SUPPRESSED",
    "KAnonymityReport",
    "LDiversityReport",
    "SuppressionResult",
    "check_quasi_identifiers",
    "k_anonymity",
    "l_diversity",
    "suppress_to_k",
]

SUPPRESSED = "*"
_SIZE = "class_size"
K_ANONYMITY_SUPPRESSED = "k_anonymity_suppressed"  # the removed_by_rule name of record suppression


def check_quasi_identifiers(frame: pd.DataFrame, columns: Sequence[str]) -> None:
    """Refuse an empty quasi-identifier list or columns the frame lacks (a typo would pass k trivially)."""
    if not columns:
        raise ValueError("at least one quasi-identifier is needed")
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"frame lacks quasi-identifier columns {missing}")


def _classes(frame: pd.DataFrame, quasi_identifiers: Sequence[str]) -> pd.DataFrame:
    """One row per equivalence class with its size (missing values grouped, not dropped)."""
    return (frame.groupby(list(quasi_identifiers), dropna=False, observed=True, sort=True)
            .size().rename(_SIZE).reset_index())


@dataclass
class KAnonymityReport:
    quasi_identifiers: tuple[str, ...]
    k_required: int
    rows: int
    classes: int
    smallest_class: int  # the k the table achieves (0 for an empty table)
    classes_below_k: pd.DataFrame  # quasi-identifier values + class_size, smallest first
    rows_below_k: int

    @property
    def satisfied(self) -> bool:
        return self.rows == 0 or self.smallest_class >= self.k_required

    def as_metadata(self) -> dict[str, Any]:
        """Counts only: the rare combinations themselves stay out of metadata."""
        return {"k_required": self.k_required, "k_achieved": self.smallest_class, "k_satisfied": self.satisfied,
                "equivalence_classes": self.classes, "classes_below_k": len(self.classes_below_k),
                "rows_below_k": self.rows_below_k, "quasi_identifiers": ", ".join(self.quasi_identifiers)}


def k_anonymity(frame: pd.DataFrame, quasi_identifiers: Sequence[str], *, k: int = 5) -> KAnonymityReport:
    """Equivalence-class sizes over ``quasi_identifiers`` and the classes smaller than ``k``."""
    if k < 1:
        raise ValueError("k must be at least 1")
    check_quasi_identifiers(frame, quasi_identifiers)
    classes = _classes(frame, quasi_identifiers)
    below = classes[classes[_SIZE] < k].sort_values(_SIZE, kind="stable").reset_index(drop=True)
    return KAnonymityReport(
        quasi_identifiers=tuple(quasi_identifiers),
        k_required=k,
        rows=len(frame),
        classes=len(classes),
        smallest_class=int(classes[_SIZE].min()) if len(classes) else 0,
        classes_below_k=below,
        rows_below_k=int(below[_SIZE].sum()),
    )


@dataclass
class LDiversityReport:
    quasi_identifiers: tuple[str, ...]
    sensitive: str
    l_required: int
    classes: int
    lowest_diversity: int  # the l the table achieves
    classes_below_l: pd.DataFrame  # quasi-identifier values + distinct_sensitive + class_size
    rows_below_l: int

    @property
    def satisfied(self) -> bool:
        return self.classes == 0 or self.lowest_diversity >= self.l_required

    def as_metadata(self) -> dict[str, Any]:
        return {"l_required": self.l_required, "l_achieved": self.lowest_diversity, "l_satisfied": self.satisfied,
                "classes_below_l": len(self.classes_below_l), "rows_below_l": self.rows_below_l,
                "sensitive_attribute": self.sensitive}


def l_diversity(frame: pd.DataFrame, quasi_identifiers: Sequence[str], sensitive: str, *, l: int = 2) -> LDiversityReport:
    """Distinct-value l-diversity of ``sensitive`` within each equivalence class."""
    if l < 1:
        raise ValueError("l must be at least 1")
    check_quasi_identifiers(frame, [*quasi_identifiers, sensitive])
    grouped = frame.groupby(list(quasi_identifiers), dropna=False, observed=True, sort=True)
    classes = pd.concat(
        [grouped[sensitive].nunique(dropna=False).rename("distinct_sensitive"), grouped.size().rename(_SIZE)],
        axis=1,
    ).reset_index()
    below = classes[classes["distinct_sensitive"] < l].sort_values("distinct_sensitive", kind="stable")
    return LDiversityReport(
        quasi_identifiers=tuple(quasi_identifiers),
        sensitive=sensitive,
        l_required=l,
        classes=len(classes),
        lowest_diversity=int(classes["distinct_sensitive"].min()) if len(classes) else 0,
        classes_below_l=below.reset_index(drop=True),
        rows_below_l=int(below[_SIZE].sum()),
    )


@dataclass
class SuppressionResult:
    frame: pd.DataFrame
    k: int
    suppressed_values: dict[str, dict[Any, int]]  # column -> {original value: cells replaced by "*"}
    rows_suppressed: int
    rows_in: int
    report: KAnonymityReport  # of the returned frame
    notes: list[str] = field(default_factory=list)

    @property
    def cells_suppressed(self) -> int:
        return sum(sum(values.values()) for values in self.suppressed_values.values())

    def as_metadata(self) -> dict[str, Any]:
        return {"suppression_k": self.k, "rows_in": self.rows_in, "rows_suppressed": self.rows_suppressed,
                "cells_suppressed": self.cells_suppressed,
                **{f"cells_suppressed[{c}]": sum(v.values()) for c, v in sorted(self.suppressed_values.items())},
                **self.report.as_metadata()}


def suppress_to_k(
    frame: pd.DataFrame,
    quasi_identifiers: Sequence[str],
    k: int,
    *,
    value_suppression: bool = True,
    max_row_fraction: float | None = None,
) -> SuppressionResult:
    """Return a k-anonymous copy of ``frame`` and what was suppressed to get it.

    1. (``value_suppression``) a quasi-identifier value held by fewer than k
       rows in its column can never be in a class of k, so it becomes ``*``.
    2. Rows still in a class smaller than k are dropped.

    With ``max_row_fraction`` a result that drops more rows than that raises
    instead: generalise the quasi-identifiers further first.
    """
    report_in = k_anonymity(frame, quasi_identifiers, k=k)
    out = frame.copy()
    suppressed: dict[str, dict[Any, int]] = {}
    if value_suppression and not report_in.satisfied:
        for column in quasi_identifiers:
            counts = out[column].value_counts(dropna=False)
            rare = counts[counts < k]
            if rare.empty:
                continue
            mask = out[column].isin([v for v in rare.index if pd.notna(v)])
            if rare.index.isna().any():
                mask |= out[column].isna()
            out[column] = out[column].astype(object).where(~mask, SUPPRESSED)
            suppressed[column] = {v: int(n) for v, n in rare.items()}
    classes = _classes(out, quasi_identifiers)
    small = classes[classes[_SIZE] < k].drop(columns=_SIZE)
    drop = pd.Series(False, index=out.index)
    if not small.empty:
        marker = out[list(quasi_identifiers)].merge(small.assign(_drop=True), how="left",
                                                    on=list(quasi_identifiers))["_drop"]
        drop = pd.Series(marker.notna().to_numpy(), index=out.index)
    result = out.loc[~drop].reset_index(drop=True)
    rows_suppressed = int(drop.sum())
    if max_row_fraction is not None and len(frame) and rows_suppressed / len(frame) > max_row_fraction:
        raise ValueError(
            f"reaching k={k} would drop {rows_suppressed} of {len(frame)} rows "
            f"(more than {max_row_fraction:.0%}); generalise the quasi-identifiers first"
        )
    notes = []
    if len(result) == 0 and len(frame):
        notes.append("every row was suppressed: the quasi-identifiers are too fine for this k")
    return SuppressionResult(
        frame=result,
        k=k,
        suppressed_values=suppressed,
        rows_suppressed=rows_suppressed,
        rows_in=len(frame),
        report=k_anonymity(result, quasi_identifiers, k=k),
        notes=notes,
    )
