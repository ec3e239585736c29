"""Leak-proof splits (clause 5.2.1.2(3), row M2) and the check that proves them.

Rows that share a patient, a study or a near-duplicate key form one group
(connected components over those keys), and a group goes to one split as a
whole. Groups are ordered by a seeded, stratified systematic shuffle - within
each stratum a random permutation, strata interleaved by relative rank - so
that every prefix of the order has the stratum mix of the whole, then cut at
70/15/15 (configurable). Options: a time-based split (earliest groups train,
latest test), institutions held out entirely as an external test set, and
k-fold assignments over the non-test groups for cross-validation.

Everything is vectorised: a million rows split and check in a few seconds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

TRAIN, VALIDATION, TEST, EXTERNAL = "train", "validation", "test", "external_test"
SPLITS = (TRAIN, VALIDATION, TEST)
GROUPED_STRATIFIED = "grouped_stratified"
TIME_BASED = "time"
STRATEGIES = (GROUPED_STRATIFIED, TIME_BASED)
NO_FOLD = -1


NEAR_DUPLICATE_KEY = "near_duplicate_key"  # column of rows (persons, images) that must share a split

@dataclass(frozen=True)
class SplitConfig:
    ratios: tuple[float, float, float] = (0.70, 0.15, 0.15)
    seed: int = 0
    strategy: str = GROUPED_STRATIFIED
    group_by: str = "patient_pseudonym"
    stratify_by: str | None = "label"
    together: tuple[str, ...] = ()  # more keys whose rows must share a split (study, near-duplicate)
    time_column: str | None = None
    external_institutions: tuple[str, ...] = ()
    institution_column: str = "institution"
    k_folds: int = 0

    def __post_init__(self) -> None:
        if len(self.ratios) != 3 or any(r < 0 for r in self.ratios) or abs(sum(self.ratios) - 1.0) > 1e-9:
            raise ValueError("split ratios must be three non-negative numbers that sum to 1")
        if self.strategy not in STRATEGIES:
            raise ValueError(f"split strategy must be one of {STRATEGIES}")
        if self.strategy == TIME_BASED and not self.time_column:
            raise ValueError("a time-based split needs time_column")
        if self.k_folds == 1 or self.k_folds < 0:
            raise ValueError("k_folds must be 0 (none) or at least 2")

    def as_dict(self) -> dict[str, Any]:
        return {
            "ratios": dict(zip(SPLITS, self.ratios, strict=True)),
            "seed": self.seed,
            "strategy": self.strategy,
            "group_by": self.group_by,
            "stratify_by": self.stratify_by,
            "kept_together_by": list(self.together),
            "time_column": self.time_column,
            "external_institutions": list(self.external_institutions),
            "k_folds": self.k_folds,
        }


def connected_groups(frame: pd.DataFrame, keys: Sequence[str]) -> np.ndarray:
    """A group id per row: rows sharing a value in any of ``keys`` are in one group.

    Missing values in the extra keys join nothing. Ids are deterministic for a
    given set of key values (whatever the row order).
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n = len(frame)
    codes, offset = [], 0
    for key in keys:
        values, uniques = pd.factorize(frame[key], sort=True)
        codes.append(np.where(values >= 0, values + offset, -1))
        offset += len(uniques)
    first = codes[0]
    if (first < 0).any():
        raise ValueError(f"every row needs a value in {keys[0]}")
    if len(keys) == 1:
        return first
    sources, targets = [], []
    for other in codes[1:]:
        ok = other >= 0
        sources.append(first[ok])
        targets.append(other[ok])
    src, dst = np.concatenate(sources), np.concatenate(targets)
    graph = coo_matrix((np.ones(src.size, dtype=np.int8), (src, dst)), shape=(offset, offset))
    _, component = connected_components(graph, directed=False)
    if not n:
        return first
    # number components by their smallest group_by value: ids do not depend on the row order
    per_row = component[first]
    smallest = pd.Series(first).groupby(per_row).min()
    return pd.factorize(smallest.reindex(per_row).to_numpy(), sort=True)[0]


def _cut(count: int, ratios: tuple[float, float, float]) -> tuple[int, int]:
    """Group counts of train and validation (the rest is test); non-empty splits where possible."""
    n_train = round(ratios[0] * count)
    n_val = round(ratios[1] * count)
    if count >= 3:
        wanted = [r > 0 for r in ratios]
        if wanted[1] and n_val == 0:
            n_val = 1
        if wanted[2] and count - n_train - n_val <= 0:
            n_train = max(1, count - n_val - 1)
    n_val = min(n_val, count - n_train)
    return n_train, n_val


def stratified_order(strata: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A permutation of groups in which every prefix has (nearly) the strata mix of the whole."""
    n = strata.size
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    shuffled = rng.permutation(n)
    codes = pd.factorize(strata[shuffled], sort=True)[0]
    sizes = np.bincount(codes)
    rank = pd.Series(codes).groupby(codes).cumcount().to_numpy()
    offsets = rng.random(sizes.size)
    key = (rank + offsets[codes]) / sizes[codes]
    return shuffled[np.argsort(key, kind="stable")]


def group_strata(values: pd.Series, groups: np.ndarray, n_groups: int, bins: int = 4) -> np.ndarray:
    """One stratum per group: the binned share of positives for a binary label, else the most common value.

    A group of several rows (a patient's images) is stratified by its mix, so
    that row-level label balance follows group-level balance.
    """
    unique = pd.unique(values.dropna())
    binary = len(unique) <= 2 and (pd.api.types.is_bool_dtype(values) or pd.api.types.is_numeric_dtype(values))
    if binary:
        share = pd.Series(values.astype(float).to_numpy()).groupby(groups).mean().reindex(range(n_groups)).fillna(0.0)
        return np.rint(share.to_numpy() * bins).astype(np.int64)
    codes = pd.factorize(values.astype(str), sort=True)[0]
    counts = pd.DataFrame({"group": groups, "code": codes}).value_counts().reset_index(name="n")
    mode = counts.sort_values(["group", "n", "code"], ascending=[True, False, True]).drop_duplicates("group")
    return mode.set_index("group")["code"].reindex(range(n_groups)).to_numpy()


def assign_split_rows(frame: pd.DataFrame, config: SplitConfig) -> pd.DataFrame:
    """``frame`` with ``split``, ``fold`` (k-fold index, -1 outside) and ``split_group`` columns."""
    keys = [config.group_by, *[k for k in config.together if k in frame.columns]]
    groups = connected_groups(frame, keys)
    n_groups = int(groups.max()) + 1 if len(groups) else 0
    rng = np.random.default_rng(config.seed)
    if config.stratify_by and config.stratify_by in frame.columns:
        strata = group_strata(frame[config.stratify_by], groups, n_groups)
    else:
        strata = np.zeros(n_groups, dtype=np.int64)
    split_of_group = np.full(n_groups, "", dtype=object)
    external = np.zeros(n_groups, dtype=bool)
    if config.external_institutions:
        held = frame[config.institution_column].isin(config.external_institutions).to_numpy()
        external = pd.Series(held).groupby(groups).any().reindex(range(n_groups), fill_value=False).to_numpy()
        split_of_group[external] = EXTERNAL
    internal = np.flatnonzero(~external)
    if config.strategy == TIME_BASED:
        times = pd.Series(frame[config.time_column].to_numpy()).groupby(groups).min().reindex(range(n_groups))
        tiebreak = rng.random(n_groups)
        order = internal[np.lexsort((tiebreak[internal], times.to_numpy()[internal]))]
    else:
        order = internal[stratified_order(strata[internal], rng)]
    n_train, n_val = _cut(order.size, config.ratios)
    split_of_group[order[:n_train]] = TRAIN
    split_of_group[order[n_train : n_train + n_val]] = VALIDATION
    split_of_group[order[n_train + n_val :]] = TEST
    fold_of_group = np.full(n_groups, NO_FOLD, dtype=np.int64)
    if config.k_folds:
        development = order[:n_train + n_val]
        development = development[stratified_order(strata[development], rng)]
        fold_of_group[development] = np.arange(development.size) % config.k_folds
    out = frame.copy()
    out["split"] = split_of_group[groups]
    out["fold"] = fold_of_group[groups]
    out["split_group"] = groups
    return out


def assign_splits(
    frame: pd.DataFrame, ratios: tuple[float, float, float], seed: int, group: str = "patient_pseudonym", label: str = "label"
) -> pd.DataFrame:
    """One row per person (``group``): its split and label (the max over its rows). Stratified by label."""
    persons = frame.groupby(group, sort=True)[label].max().reset_index()
    assigned = assign_split_rows(persons, SplitConfig(ratios=ratios, seed=seed, group_by=group, stratify_by=label))
    return assigned[[group, "split", label]].sort_values(group).reset_index(drop=True)


# --- near duplicates -----------------------------------------------------------------
def tabular_near_duplicate_key(frame: pd.DataFrame, columns: Sequence[str], decimals: int = 1) -> pd.Series:
    """A hash of the rounded feature vector; rows with more than half the values missing get none."""
    values = frame[list(columns)].copy()
    numeric = values.select_dtypes("number").columns
    values[numeric] = values[numeric].round(decimals)
    hashed = pd.util.hash_pandas_object(values.astype("string").fillna("<na>"), index=False)
    enough = values.notna().sum(axis=1) * 2 > len(columns)
    return pd.Series(np.where(enough, hashed.map(lambda h: f"t{h:016x}"), None), index=frame.index, dtype=object)


def image_near_duplicate_key(pixels: np.ndarray, size: int = 16, levels: int = 16) -> str:
    """Hash of a block-averaged, intensity-quantised thumbnail: re-sent or re-exported copies collide."""
    import hashlib

    image = np.asarray(pixels, dtype=float)
    h, w = image.shape[:2]
    bh, bw = max(1, h // size), max(1, w // size)
    blocks = image[: bh * size, : bw * size].reshape(size, bh, size, bw).mean(axis=(1, 3))
    low, high = float(blocks.min()), float(blocks.max())
    quantised = np.zeros_like(blocks, dtype=np.uint8) if high <= low else np.floor((blocks - low) / (high - low) * (levels - 1) + 0.5).astype(np.uint8)
    return "i" + hashlib.sha256(quantised.tobytes()).hexdigest()[:16]


# --- the check -------------------------------------------------------------------------------
@dataclass
class LeakageReport:
    persons: int
    persons_in_several_splits: int
    rows_per_split: dict[str, int]
    positives_per_split: dict[str, int]
    crossing_by_key: dict[str, int] = field(default_factory=dict)  # key -> values found in several splits
    label_counts_per_split: dict[str, dict[str, int]] = field(default_factory=dict)
    folds_crossing: int = 0

    @property
    def passed(self) -> bool:
        return self.persons_in_several_splits == 0 and not any(self.crossing_by_key.values()) and self.folds_crossing == 0

    @property
    def label_share_per_split(self) -> dict[str, dict[str, float]]:
        shares = {}
        for split, counts in self.label_counts_per_split.items():
            total = sum(counts.values())
            shares[split] = {k: round(v / total, 4) for k, v in counts.items()} if total else {}
        return shares

    @property
    def verdict(self) -> str:
        crossing = {k: v for k, v in self.crossing_by_key.items() if v}
        return (
            f"{self.persons_in_several_splits} of {self.persons} persons appear in more than one split"
            + (f"; crossing: {crossing}" if crossing else "")
            + (f"; {self.folds_crossing} persons in several folds" if self.folds_crossing else "")
        )

    def check_metadata(self) -> dict[str, Any]:
        """What the blocking leakage gate reports."""
        return {
            "persons": self.persons,
            "persons_in_several_splits": self.persons_in_several_splits,
            "crossing_by_key": self.crossing_by_key,
            "folds_crossing": self.folds_crossing,
            "rows_per_split": self.rows_per_split,
            "positives_per_split": self.positives_per_split,
            "label_balance_per_split": self.label_share_per_split,
        }

    def as_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "persons": self.persons,
            "persons_in_several_splits": self.persons_in_several_splits,
            "crossing_by_key": self.crossing_by_key,
            "folds_crossing": self.folds_crossing,
            "rows_per_split": self.rows_per_split,
            "label_counts_per_split": self.label_counts_per_split,
            "label_share_per_split": self.label_share_per_split,
        }


def check_leakage(
    splits: pd.DataFrame,
    keys: Sequence[str] = ("patient_pseudonym",),
    label: str | None = "label",
    fold_column: str = "fold",
) -> LeakageReport:
    """No value of any key (patient, study, near-duplicate) in two splits; label balance per split."""
    split_codes, split_names = pd.factorize(splits["split"], sort=True)
    crossing = {}
    present = [k for k in keys if k in splits.columns]
    for key in present:
        frame = pd.DataFrame({"key": splits[key].to_numpy(), "split": split_codes}).dropna(subset=["key"])
        per_value = frame.drop_duplicates().groupby("key", sort=False).size()
        crossing[key] = int((per_value > 1).sum())
    person_key = present[0] if present else keys[0]
    persons = int(splits[person_key].nunique()) if person_key in splits.columns else 0
    folds_crossing = 0
    if fold_column in splits.columns and person_key in splits.columns:
        assigned = splits[splits[fold_column] >= 0]
        folds_crossing = int((assigned.drop_duplicates([person_key, fold_column]).groupby(person_key).size() > 1).sum())
    names = list(SPLITS) + sorted(set(split_names) - set(SPLITS))
    counts = np.bincount(split_codes, minlength=len(split_names)) if len(splits) else np.zeros(0, dtype=int)
    rows = {s: 0 for s in SPLITS}
    rows.update({str(name): int(c) for name, c in zip(split_names, counts, strict=False)})
    label_counts: dict[str, dict[str, int]] = {s: {} for s in names}
    positives = {s: 0 for s in names}
    if label and label in splits.columns:
        table = splits.groupby(["split", label]).size()
        for (split, value), n in table.items():
            label_counts.setdefault(str(split), {})[str(value)] = int(n)
        if pd.api.types.is_numeric_dtype(splits[label]):
            sums = splits.groupby("split")[label].sum()
            positives.update({str(s): int(v) for s, v in sums.items()})
    return LeakageReport(
        persons=persons,
        persons_in_several_splits=crossing.get(person_key, 0),
        rows_per_split=rows,
        positives_per_split=positives,
        crossing_by_key=crossing,
        label_counts_per_split=label_counts,
        folds_crossing=folds_crossing,
    )


def check_no_patient_leakage(splits: pd.DataFrame, group: str = "patient_pseudonym", label: str = "label") -> LeakageReport:
    return check_leakage(splits, (group,), label)


@dataclass(frozen=True)
class SplitOutcome:
    """A split table, its leakage report and how it was declared: what the split assets report."""

    splits: pd.DataFrame
    report: LeakageReport
    config: SplitConfig
    records_in: int

    def as_metadata(self) -> dict[str, Any]:
        folds = self.splits.loc[self.splits["fold"] >= 0, "fold"] if "fold" in self.splits.columns else pd.Series(dtype=int)
        shared = (self.splits.dropna(subset=[NEAR_DUPLICATE_KEY]).groupby(NEAR_DUPLICATE_KEY)["patient_pseudonym"].nunique()
                  if NEAR_DUPLICATE_KEY in self.splits.columns else pd.Series(dtype=int))
        return {
            "records_in": self.records_in,
            "records_out": len(self.splits),
            "reconciled": self.records_in == len(self.splits),
            "split_config": self.config.as_dict(),
            "split_ratios": dict(zip(("train", "validation", "test"), self.config.ratios, strict=True)),
            "split_seed": self.config.seed,
            "rows_per_split": self.report.rows_per_split,
            "positives_per_split": self.report.positives_per_split,
            "label_balance_per_split": self.report.label_share_per_split,
            "rows_per_fold": {str(k): int(v) for k, v in folds.value_counts().sort_index().items()},
            "near_duplicate_groups": int((shared > 1).sum()),
            "leakage_check": self.report.as_dict(),
        }


def split_persons(features: pd.DataFrame, config: SplitConfig, feature_columns: Sequence[str],
                  leakage_keys: Sequence[str]) -> SplitOutcome:
    """One row per person: near-duplicate feature rows share a key and a split; k folds; leakage checked."""
    persons = features[["patient_pseudonym", "label"]].copy()
    persons[NEAR_DUPLICATE_KEY] = tabular_near_duplicate_key(features, feature_columns)
    assigned = assign_split_rows(persons, config)
    splits = assigned[["patient_pseudonym", "split", "label", "fold", NEAR_DUPLICATE_KEY]]
    splits = splits.sort_values("patient_pseudonym").reset_index(drop=True)
    return SplitOutcome(splits, check_leakage(splits, leakage_keys), config, len(features))


def split_images(dataset: pd.DataFrame, config: SplitConfig, leakage_keys: Sequence[str]) -> SplitOutcome:
    """Patient-grouped, lesion-stratified image splits; slices of a study and near-identical images together."""
    assigned = assign_split_rows(dataset, config)
    columns = ["image_id", "patient_pseudonym", "study_key", NEAR_DUPLICATE_KEY, "institution", "lesion", "split", "fold"]
    splits = assigned[columns].sort_values("image_id").reset_index(drop=True)
    return SplitOutcome(splits, check_leakage(splits, leakage_keys, label="lesion"), config, len(dataset))
