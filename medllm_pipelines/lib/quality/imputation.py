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


class DeclaredMissingValues:
    """The declared policy as a fitted step of a model's preprocessing (scikit-learn transformer API).

    ``fit`` learns every statistic and imputation model from the rows it is
    given - the training split - and ``transform`` applies them unchanged to
    any later rows (validation, test, one serving request), which
    ``apply_missing_value_policy`` cannot: it re-derives statistics from the
    frame or reference it is handed. Interpolation needs a patient's time
    series; a one-row-per-person frame has none, so only its fallback applies.
    ``drop`` cannot remove rows inside a pipeline and is refused.
    """

    def __init__(self, policy_path: str | None = None) -> None:
        self.policy_path = policy_path

    # scikit-learn's estimator protocol (clone, repr, set_output) without inheriting from BaseEstimator at import
    def get_params(self, deep: bool = True) -> dict[str, Any]:
        return {"policy_path": self.policy_path}

    def set_params(self, **params: Any) -> DeclaredMissingValues:
        for name, value in params.items():
            setattr(self, name, value)
        return self

    def set_output(self, *, transform: str | None = None) -> DeclaredMissingValues:
        return self  # always returns a DataFrame

    def _policy(self) -> MissingValuePolicy:
        return load_missing_value_policy(Path(self.policy_path) if self.policy_path else POLICY_PATH)

    def fit(self, X: pd.DataFrame, y: Any = None) -> DeclaredMissingValues:
        policy = self._policy()
        frame = _numeric_frame(X)
        specs = {c: s for c, s in policy.columns.items() if c in frame.columns}
        refused = sorted(c for c, s in specs.items() if s["strategy"] == "drop")
        if refused:
            raise ValueError(f"columns {refused} are declared 'drop': a fitted preprocessing cannot drop rows")
        self.feature_names_in_ = np.asarray([str(c) for c in frame.columns], dtype=object)
        self.n_features_in_ = len(self.feature_names_in_)
        self.policy_version_ = policy.version
        self.strategies_ = {c: str(s["strategy"]) for c, s in specs.items()}
        self.models_: dict[str, tuple[list[str], list[str], Any]] = {}
        for strategy in ("iterative", "knn"):
            targets = [c for c, s in specs.items() if s["strategy"] == strategy]
            if not targets:
                continue
            features = list(dict.fromkeys([*(c for c in policy.model_columns if c in frame.columns), *targets]))
            usable = [c for c in features if frame[c].notna().any()]
            if not any(t in usable for t in targets):
                continue
            self.models_[strategy] = (usable, [t for t in targets if t in usable],
                                      _fit_imputer(frame[usable], strategy, specs, policy.random_state, targets))
        self.statistics_: dict[str, float] = {}
        self.fallbacks_: dict[str, tuple[str, float]] = {}
        for column, spec in specs.items():
            strategy, fallback = spec.get("strategy"), spec.get("fallback")
            if strategy in ("mean", "median") and not pd.isna(value := getattr(frame[column], strategy)()):
                self.statistics_[column] = float(value)
            if fallback in ("mean", "median") and not pd.isna(value := getattr(frame[column], fallback)()):
                self.fallbacks_[column] = (str(fallback), float(value))
        return self

    def transform_counted(self, X: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, dict[str, int]]]:
        """The imputed frame and, per column, how many values each method filled."""
        frame = _numeric_frame(X).copy()
        methods: dict[str, dict[str, int]] = {}

        def count(column: str, method: str, filled: pd.Series) -> None:
            n = int(filled.sum())
            if n:
                methods.setdefault(column, {})[method] = methods.get(column, {}).get(method, 0) + n

        for strategy, (usable, targets, imputer) in self.models_.items():
            missing = {t: frame[t].isna() for t in targets}
            if not any(m.any() for m in missing.values()):
                continue
            filled = pd.DataFrame(imputer.transform(frame[usable].to_numpy()), columns=usable, index=frame.index)
            for target, rows in missing.items():
                frame.loc[rows, target] = filled.loc[rows, target]
                count(target, strategy, rows & frame[target].notna())
        for column, value in self.statistics_.items():
            rows = frame[column].isna()
            frame.loc[rows, column] = value
            count(column, self.strategies_[column], rows)
        for column, (how, value) in self.fallbacks_.items():
            rows = frame[column].isna()
            frame.loc[rows, column] = value
            count(column, f"fallback_{how}", rows)
        return frame, methods

    def transform(self, X: pd.DataFrame) -> pd.DataFrame:
        return self.transform_counted(X)[0]

    def fit_transform(self, X: pd.DataFrame, y: Any = None) -> pd.DataFrame:
        return self.fit(X, y).transform(X)

    def get_feature_names_out(self, input_features: Any = None) -> np.ndarray:
        return self.feature_names_in_

    def describe(self) -> dict[str, Any]:
        """The fitted statistics in plain JSON (no model internals): what an auditor reads."""
        return {
            "policy_version": self.policy_version_,
            "strategy_per_column": dict(self.strategies_),
            "statistics": {c: round(v, 10) for c, v in self.statistics_.items()},
            "fallbacks": {c: {"method": how, "value": round(v, 10)} for c, (how, v) in self.fallbacks_.items()},
            "model_based": {strategy: {"fitted_on": usable, "imputes": targets}
                            for strategy, (usable, targets, _) in self.models_.items()},
        }


def _numeric_frame(X: Any) -> pd.DataFrame:
    frame = X if isinstance(X, pd.DataFrame) else pd.DataFrame(X)
    return frame.apply(pd.to_numeric, errors="coerce").astype(float)


def _fit_imputer(fit_on: pd.DataFrame, strategy: str, specs: dict[str, dict[str, Any]], random_state: int,
                 targets: list[str]) -> Any:
    from sklearn.experimental import enable_iterative_imputer  # noqa: F401 - registers IterativeImputer
    from sklearn.impute import IterativeImputer, KNNImputer

    if strategy == "iterative":
        imputer: Any = IterativeImputer(random_state=random_state, max_iter=10, sample_posterior=False)
    else:
        imputer = KNNImputer(n_neighbors=max(int(specs[t].get("n_neighbors", 5)) for t in targets))
    return imputer.fit(fit_on.to_numpy())
