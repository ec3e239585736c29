"""Withholding a person everywhere: a registration withheld from one released table leaves them all.

A registration withheld from the released patients table (record suppression,
erasure) must leave every other released table too: observations or diagnoses
of a withheld (pseudonym, institution) would still say that this person was
seen there, the very fact the suppression hid, and they would point at a person
the patients table lacks. The rule that withheld each registration (e.g.
``risk.K_ANONYMITY_SUPPRESSED``) is counted in every table's metadata.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

__all__ = [
    "INSTITUTION",
    "PSEUDONYM",
    "WITHHELD_COLUMNS",
    "WithholdingResult",
    "withheld_persons",
    "withheld_registrations",
    "withhold",
]

PSEUDONYM = "patient_pseudonym"
INSTITUTION = "institution"
# A person's registration (pseudonym at an institution) withheld from release, and the rule that withheld it.
WITHHELD_COLUMNS = [PSEUDONYM, INSTITUTION, "rule"]


def withheld_registrations(before: pd.DataFrame, after: pd.DataFrame, rule: str) -> pd.DataFrame:
    """The (pseudonym, institution) pairs of ``before`` that ``after`` no longer holds, tagged ``rule``."""
    columns = [PSEUDONYM, INSTITUTION]
    kept = set(map(tuple, after[columns].itertuples(index=False))) if len(after) else set()
    pairs = {pair for pair in map(tuple, before[columns].itertuples(index=False)) if pair not in kept} if len(before) else set()
    rows = [(pseudonym, institution, rule) for pseudonym, institution in sorted(pairs, key=str)]
    return pd.DataFrame(rows, columns=WITHHELD_COLUMNS).astype(object)


def withheld_persons(withheld: pd.DataFrame, released: pd.DataFrame) -> pd.DataFrame:
    """Rows of ``withheld`` whose person has no released registration left (pseudonym-level tables)."""
    still_released = set(released[PSEUDONYM]) if len(released) else set()
    persons = withheld[~withheld[PSEUDONYM].isin(still_released)]
    return persons.drop_duplicates(PSEUDONYM).reset_index(drop=True)


@dataclass
class WithholdingResult:
    frame: pd.DataFrame
    rows_in: int
    removed_by_rule: dict[str, int]  # rows removed under each rule (every rule of the withheld list, 0 if none)
    persons_by_rule: dict[str, int]  # distinct persons those rows belonged to

    def as_metadata(self) -> dict[str, Any]:
        return {**{f"removed[{rule}]": n for rule, n in sorted(self.removed_by_rule.items())},
                **{f"persons_withheld[{rule}]": n for rule, n in sorted(self.persons_by_rule.items())}}


def withhold(frame: pd.DataFrame, withheld: pd.DataFrame, *, rules: Sequence[str] = ()) -> WithholdingResult:
    """``frame`` without the rows of withheld registrations, counted under the rule that withheld each.

    Rows match on pseudonym and institution when ``frame`` has an institution
    column (a registration withheld at one institution leaves the person's
    records from the others); on the pseudonym alone otherwise (one row per
    person: pass :func:`withheld_persons`). ``rules`` are reported even when
    they removed nothing, so that every table states the same rules.
    """
    missing = sorted(set(WITHHELD_COLUMNS) - set(withheld.columns))
    if missing:
        raise ValueError(f"the withheld list lacks columns {missing}")
    if PSEUDONYM not in frame.columns:
        raise ValueError(f"the frame has no {PSEUDONYM!r} column to withhold persons from")
    on = [PSEUDONYM, INSTITUTION] if INSTITUTION in frame.columns else [PSEUDONYM]
    removed = dict.fromkeys([*rules, *withheld["rule"].astype(str)], 0)
    persons = dict(removed)
    if not len(frame) or not len(withheld):
        return WithholdingResult(frame.reset_index(drop=True), len(frame), removed, persons)
    rule_of = {tuple(key): rule for *key, rule in withheld.drop_duplicates(on)[[*on, "rule"]].itertuples(index=False)}
    hits = pd.Series([rule_of.get(tuple(key)) for key in frame[on].itertuples(index=False)], index=frame.index,
                     dtype=object)
    matched = hits.notna()
    for rule, group in frame.loc[matched, PSEUDONYM].groupby(hits[matched]):
        removed[str(rule)] = removed.get(str(rule), 0) + len(group)
        persons[str(rule)] = persons.get(str(rule), 0) + int(group.nunique())
    return WithholdingResult(frame.loc[~matched].reset_index(drop=True), len(frame), removed, persons)
