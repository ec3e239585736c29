"""The declared missing-value policy (``missing_values.yaml``) applied to a frame.

Each column has one strategy - drop, mean, median, interpolation over time
within a patient, or model-based imputation (scikit-learn ``IterativeImputer``
/ ``KNNImputer``) - and an optional fallback for what the strategy could not
fill. :func:`apply_missing_value_policy` returns the frame and a report of how
many values were imputed per column and how (the D5 "imputation report").

Order of application: drop (rows), then interpolation, then model-based
imputers (fitted on the model columns as they stand, interpolated values
included), then mean/median, then fallbacks. Statistics (mean, median, model
fits) come from the frame itself; to avoid leaking test data into training,
apply the policy after the split, per split, or pass the training rows'
statistics with ``reference``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

POLICY_PATH = Path(__file__).with_name("missing_values.yaml")
STRATEGIES = ("drop", "mean", "median", "interpolate", "iterative", "knn", "keep")
FALLBACKS = ("mean", "median", "keep")


@dataclass(frozen=True)
class MissingValuePolicy:
    version: str
    columns: dict[str, dict[str, Any]]
    time_column: str | None
    group_column: str | None
    model_columns: tuple[str, ...]
    random_state: int

    def __post_init__(self) -> None:
        for column, spec in self.columns.items():
            if spec.get("strategy") not in STRATEGIES:
                raise ValueError(f"{column}: strategy must be one of {STRATEGIES}")
            if spec.get("fallback", "keep") not in FALLBACKS:
                raise ValueError(f"{column}: fallback must be one of {FALLBACKS}")


@lru_cache(maxsize=4)
def load_missing_value_policy(path: Path = POLICY_PATH) -> MissingValuePolicy:
    raw = yaml.safe_load(Path(path).read_text())
    return MissingValuePolicy(
        version=str(raw["version"]),
        columns={str(k): dict(v) for k, v in raw["columns"].items()},
        time_column=raw.get("time_column"),
        group_column=raw.get("group_column"),
        model_columns=tuple(raw.get("model_columns") or ()),
        random_state=int(raw.get("random_state", 0)),
    )


@dataclass
class ImputationResult:
    frame: pd.DataFrame
    imputed_per_column: dict[str, int]
    method_per_column: dict[str, dict[str, int]]  # column -> {method: count}
    rows_dropped: int
    dropped_by_column: dict[str, int]
    still_missing: dict[str, int]
    policy_version: str
    details: dict[str, Any] = field(default_factory=dict)

    def report(self) -> dict[str, Any]:
        """JSON-ready summary for asset metadata (counts only)."""
        return {
            "policy_version": self.policy_version,
            "imputed_per_column": self.imputed_per_column,
            "method_per_column": self.method_per_column,
            "rows_dropped": self.rows_dropped,
            "dropped_by_column": self.dropped_by_column,
            "still_missing": self.still_missing,
        }


def apply_missing_value_policy(
    frame: pd.DataFrame,
    policy: MissingValuePolicy | None = None,
    *,
    reference: pd.DataFrame | None = None,
) -> ImputationResult:
    """Apply ``policy`` (default: the declared file) to ``frame``; columns the policy does not name are untouched.

    ``reference``: rows whose statistics (mean/median) and model fits are used
    instead of ``frame``'s own (e.g. the training split).
    """
    policy = policy or load_missing_value_policy()
    out = frame.copy()
    specs = {c: s for c, s in policy.columns.items() if c in out.columns}
    methods: dict[str, dict[str, int]] = {c: {} for c in specs}

    def count(column: str, method: str, n: int) -> None:
        if n:
            methods[column][method] = methods[column].get(method, 0) + int(n)

    # 1. drop
    before = len(out)
    dropped_by: dict[str, int] = {}
    for column, spec in specs.items():
        if spec["strategy"] == "drop":
            missing = out[column].isna()
            dropped_by[column] = int(missing.sum())
            out = out[~missing]
    rows_dropped = before - len(out)
    out = out.reset_index(drop=True)
    base = (reference if reference is not None else out).reset_index(drop=True)

    # 2. interpolation in time within a patient
    for column, spec in specs.items():
        if spec["strategy"] != "interpolate":
            continue
        missing = out[column].isna()
        if not missing.any():
            continue
        out[column] = _interpolate(out, column, policy.time_column, policy.group_column)
        count(column, "interpolate", int((missing & out[column].notna()).sum()))

    # 3. model-based
    for strategy in ("iterative", "knn"):
        targets = [c for c, s in specs.items() if s["strategy"] == strategy and out[c].isna().any()]
        if not targets:
            continue
        features = [c for c in policy.model_columns if c in out.columns]
        features = list(dict.fromkeys([*features, *targets]))
        missing = {c: out[c].isna() for c in targets}
        filled = _model_impute(out[features], base[features] if reference is not None else None, strategy,
                               specs, policy.random_state, targets)
        for column in targets:
            out.loc[missing[column], column] = filled.loc[missing[column], column]
            count(column, strategy, int(missing[column].sum()))

    # 4. statistics, then 5. fallbacks
    for column, spec in specs.items():
        for key in ("strategy", "fallback"):
            how = spec.get(key)
            if how not in ("mean", "median"):
                continue
            missing = out[column].isna()
            if not missing.any():
                continue
            statistic = getattr(pd.to_numeric(base[column], errors="coerce"), how)()
            if pd.isna(statistic):
                continue
            out.loc[missing, column] = statistic
            count(column, how if key == "strategy" else f"fallback_{how}", int(missing.sum()))

    imputed = {column: sum(found.values()) for column, found in methods.items()}
    still_missing = {column: int(out[column].isna().sum()) for column in specs}
    return ImputationResult(
        frame=out,
        imputed_per_column=imputed,
        method_per_column={c: m for c, m in methods.items() if m},
        rows_dropped=rows_dropped,
        dropped_by_column={c: n for c, n in dropped_by.items() if n},
        still_missing=still_missing,
        policy_version=policy.version,
    )


def _interpolate(frame: pd.DataFrame, column: str, time_column: str | None, group_column: str | None) -> pd.Series:
    """Linear in time within each group; only inside the group's observed span."""
    values = pd.to_numeric(frame[column], errors="coerce").astype(float)
    if time_column is None or time_column not in frame.columns:
        return values.interpolate(limit_area="inside")
    times = pd.to_datetime(frame[time_column], errors="coerce")
    groups = frame[group_column] if group_column and group_column in frame.columns else pd.Series(0, index=frame.index)
    result = values.copy()
    for index in groups.groupby(groups, sort=False).groups.values():
        part = pd.Series(values.loc[index].to_numpy(), index=pd.DatetimeIndex(times.loc[index]))
        order = np.argsort(part.index.to_numpy(), kind="stable")
        ordered = part.iloc[order]
        if ordered.index.hasnans or ordered.notna().sum() < 2:
            continue
        filled = ordered.interpolate(method="time", limit_area="inside")
        result.loc[np.asarray(index)[order]] = filled.to_numpy()
    return result


def _model_impute(features: pd.DataFrame, reference: pd.DataFrame | None, strategy: str,
                  specs: dict[str, dict[str, Any]], random_state: int, targets: list[str]) -> pd.DataFrame:
    from sklearn.experimental import enable_iterative_imputer  # noqa: F401 - registers IterativeImputer
    from sklearn.impute import IterativeImputer, KNNImputer

    numeric = features.apply(pd.to_numeric, errors="coerce").astype(float)
    usable = [c for c in numeric.columns if numeric[c].notna().any()]
    if strategy == "iterative":
        imputer: Any = IterativeImputer(random_state=random_state, max_iter=10, sample_posterior=False)
    else:
        neighbours = max(int(specs[t].get("n_neighbors", 5)) for t in targets)
        imputer = KNNImputer(n_neighbors=neighbours)
    fit_on = numeric[usable] if reference is None else reference[usable].apply(pd.to_numeric, errors="coerce")
    imputer.fit(fit_on.to_numpy())
    filled = pd.DataFrame(imputer.transform(numeric[usable].to_numpy()), columns=usable, index=numeric.index)
    return filled.reindex(columns=numeric.columns)
