"""Patient-level stratified splits and the proof that no person crosses them."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

SPLITS = ("train", "validation", "test")


def assign_splits(
    frame: pd.DataFrame, ratios: tuple[float, float, float], seed: int, group: str = "patient_pseudonym", label: str = "label"
) -> pd.DataFrame:
    """70/15/15 (by default) stratified by label, whole persons per split.

    Stratification is done on one label per person, so a person can never be
    split across partitions even when they have several rows.
    """
    from sklearn.model_selection import train_test_split

    persons = frame.groupby(group, sort=True)[label].max().reset_index()
    train_ratio, val_ratio, test_ratio = ratios
    stratify = persons[label] if persons[label].nunique() > 1 and persons[label].value_counts().min() >= 3 else None
    train, rest = train_test_split(persons, train_size=train_ratio, random_state=seed, stratify=stratify)
    rest_stratify = rest[label] if stratify is not None and rest[label].value_counts().min() >= 2 else None
    validation, test = train_test_split(
        rest, train_size=val_ratio / (val_ratio + test_ratio), random_state=seed, stratify=rest_stratify
    )
    assignment = pd.concat(
        [train.assign(split="train"), validation.assign(split="validation"), test.assign(split="test")]
    )
    return assignment[[group, "split", label]].sort_values(group).reset_index(drop=True)


@dataclass
class LeakageReport:
    persons: int
    persons_in_several_splits: int
    rows_per_split: dict[str, int]
    positives_per_split: dict[str, int]

    @property
    def passed(self) -> bool:
        return self.persons_in_several_splits == 0


def check_no_patient_leakage(splits: pd.DataFrame, group: str = "patient_pseudonym", label: str = "label") -> LeakageReport:
    per_person = splits.groupby(group)["split"].nunique()
    return LeakageReport(
        persons=int(per_person.size),
        persons_in_several_splits=int((per_person > 1).sum()),
        rows_per_split={s: int((splits["split"] == s).sum()) for s in SPLITS},
        positives_per_split={s: int(splits.loc[splits["split"] == s, label].sum()) for s in SPLITS},
    )
