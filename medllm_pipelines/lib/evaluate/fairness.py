"""Metrics per subgroup (sex, age band, institution), the largest gap per metric, and the gate on it (issue 12, 6).

The values per group come from fairlearn's ``MetricFrame``; this module fixes
what fairlearn leaves to the caller, so that a report never shows a gap that
is not one:

- A metric may be a function returning a `task_metrics.MetricSet` (e.g.
  ``functools.partial(binary_metric_set, threshold=0.3)``: every value of the
  set becomes a metric) or a mapping name -> function returning a number or
  None. Undefined is None with a reason, never 0: a subgroup with one class
  only has no ROC-AUC or no sensitivity ("y_true holds only one class ..."),
  a declared subgroup with no rows (a category of a pandas ``Categorical``, or
  a value in ``expected_groups``, absent from the data; fairlearn drops those)
  is listed with size 0 and every metric undefined ("empty subgroup").
- Several sensitive columns in one call give their intersections (fairlearn's
  MultiIndex, observed combinations only); `fairness_report` runs one frame
  per column and, on request, one for the intersection of all columns.
- The gap of a metric is max - min (difference) and min / max (ratio) over
  the groups where it is defined and whose size is >= ``min_group_size``.
  With fewer than two such groups the gap is undefined (fairlearn's
  ``difference()`` returns 0.0 there, which would read as perfect parity).
  The ratio is undefined when a value is negative or the largest is 0.
  Where every group counts, both equal fairlearn's ``difference()`` and
  ``ratio()`` (a test checks it).
- `check_fairness` fails closed: no declared limit, a gap that is undefined,
  or a group at least ``min_group_size`` large whose value is undefined each
  fail the metric, with the reason in the result.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from fairlearn.metrics import MetricFrame

from medllm_pipelines.lib.evaluate.task_metrics import MetricSet

__all__ = [
    "EMPTY_GROUP_REASON",
    "FairnessCheck",
    "FairnessLimitResult",
    "FairnessReport",
    "GroupMetrics",
    "MetricGap",
    "SubgroupMetrics",
    "age_bands",
    "check_fairness",
    "fairness_report",
    "subgroup_metrics",
]

EMPTY_GROUP_REASON = "empty subgroup: no rows of this group in the evaluated data"
RETURNED_NONE_REASON = "the metric is undefined on this subgroup (it returned None or NaN)"
TOO_FEW_GROUPS_REASON = "fewer than two groups have a defined value and at least min_group_size rows; no gap to measure"

MetricValue = float | None
MetricSetFn = Callable[[np.ndarray, np.ndarray], MetricSet]
ScalarMetricFn = Callable[[np.ndarray, np.ndarray], MetricValue]
Metrics = MetricSetFn | Mapping[str, ScalarMetricFn]


@dataclass(frozen=True)
class GroupMetrics:
    """One subgroup: its key (column -> value), size and metric values (None with a reason where undefined)."""

    key: dict[str, Any]
    size: int
    values: dict[str, MetricValue]
    undefined: dict[str, str] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return ", ".join(f"{column}={value}" for column, value in self.key.items())

    def as_dict(self) -> dict[str, Any]:
        return {"group": self.label, "key": {k: _plain(v) for k, v in self.key.items()}, "size": self.size,
                "values": dict(self.values), "undefined": dict(self.undefined)}


@dataclass(frozen=True)
class MetricGap:
    """The largest gap of one metric between groups: difference (max - min) and ratio (min / max)."""

    metric: str
    difference: float | None
    ratio: float | None
    highest_group: str | None
    lowest_group: str | None
    n_groups_compared: int
    undefined_groups: list[str] = field(default_factory=list)  # large enough but undefined: the gate fails on them
    small_groups: list[str] = field(default_factory=list)  # below min_group_size (empty groups included)
    reason: str | None = None
    ratio_reason: str | None = None
    attribute: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "metric": self.metric, "attribute": self.attribute, "difference": self.difference, "ratio": self.ratio,
            "highest_group": self.highest_group, "lowest_group": self.lowest_group,
            "n_groups_compared": self.n_groups_compared, "undefined_groups": list(self.undefined_groups),
            "small_groups": list(self.small_groups), "reason": self.reason, "ratio_reason": self.ratio_reason,
        }


@dataclass(frozen=True)
class SubgroupMetrics:
    """Metrics of one model over the groups of one or more sensitive columns, with the largest gap per metric."""

    features: tuple[str, ...]
    metrics: tuple[str, ...]
    overall: dict[str, MetricValue]
    overall_undefined: dict[str, str]
    groups: list[GroupMetrics]
    gaps: dict[str, MetricGap]
    min_group_size: int
    n_rows: int

    @property
    def attribute(self) -> str:
        return " x ".join(self.features)

    def by_group_frame(self) -> pd.DataFrame:
        """One row per group (size and every metric; NaN where undefined), for plots and tables."""
        rows = [{**group.key, "size": group.size, **group.values} for group in self.groups]
        frame = pd.DataFrame(rows, columns=[*self.features, "size", *self.metrics])
        return frame.astype({name: "float64" for name in self.metrics})

    def as_dict(self) -> dict[str, Any]:
        return {
            "attribute": self.attribute, "features": list(self.features), "n_rows": self.n_rows,
            "min_group_size": self.min_group_size, "overall": dict(self.overall),
            "overall_undefined": dict(self.overall_undefined), "groups": [g.as_dict() for g in self.groups],
            "gaps": {name: gap.as_dict() for name, gap in self.gaps.items()},
        }

    def as_metadata(self) -> dict[str, Any]:
        return {"fairness_attribute": self.attribute, "fairness_groups": len(self.groups),
                "fairness_largest_gaps": {name: gap.difference for name, gap in self.gaps.items()}}


@dataclass(frozen=True)
class FairnessReport:
    """One `SubgroupMetrics` per sensitive attribute (and the intersection, when asked for)."""

    frames: dict[str, SubgroupMetrics]

    def largest_gaps(self) -> dict[str, MetricGap]:
        """Per metric, the largest difference over the attributes; an undefined gap anywhere wins (fails closed)."""
        largest: dict[str, MetricGap] = {}
        for frame in self.frames.values():
            for name, gap in frame.gaps.items():
                current = largest.get(name)
                if current is None or _worse(gap, current):
                    largest[name] = gap
        return largest

    def as_dict(self) -> dict[str, Any]:
        return {"attributes": {name: frame.as_dict() for name, frame in self.frames.items()},
                "largest_gaps": {name: gap.as_dict() for name, gap in self.largest_gaps().items()}}

    def as_metadata(self) -> dict[str, Any]:
        return {"fairness_attributes": list(self.frames),
                "fairness_largest_gaps": {n: g.difference for n, g in self.largest_gaps().items()}}


def _blocks_gate(gap: MetricGap) -> bool:
    return gap.difference is None or bool(gap.undefined_groups)


def _worse(candidate: MetricGap, current: MetricGap) -> bool:
    if _blocks_gate(current):
        return False
    if _blocks_gate(candidate):
        return True
    return candidate.difference > current.difference  # type: ignore[operator]


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def _finite_or_none(value: Any) -> MetricValue:
    if value is None:
        return None
    number = float(value)
    return None if math.isnan(number) else number


# --- the metric functions handed to MetricFrame ------------------------------------------------------------------


class _MetricSetColumns:
    """Splits a MetricSet function into one scalar function per metric, computing the set once per group.

    fairlearn calls each metric with the same group slices in turn; the last result is kept by the identity of
    those arrays, so a set of eight metrics costs one evaluation per group, not eight.
    """

    def __init__(self, metric_set_fn: MetricSetFn) -> None:
        self.metric_set_fn = metric_set_fn
        self._last: tuple[Any, Any, MetricSet | str] | None = None

    def evaluate(self, y_true: Any, y_pred: Any) -> MetricSet | str:
        """The set on these rows, or the ValueError message when the rows cannot be evaluated."""
        if self._last is not None and self._last[0] is y_true and self._last[1] is y_pred:
            return self._last[2]
        try:
            result: MetricSet | str = self.metric_set_fn(np.asarray(y_true), np.asarray(y_pred))
        except ValueError as error:
            result = str(error)
        self._last = (y_true, y_pred, result)
        return result

    def column(self, name: str) -> ScalarMetricFn:
        def value(y_true: Any, y_pred: Any) -> float:
            result = self.evaluate(y_true, y_pred)
            if isinstance(result, str):
                return math.nan
            number = result.values.get(name)
            return math.nan if number is None else float(number)

        return value

    def reason(self, name: str, y_true: np.ndarray, y_pred: np.ndarray) -> str:
        self._last = None
        result = self.evaluate(y_true, y_pred)
        if isinstance(result, str):
            return result
        return result.undefined.get(name, RETURNED_NONE_REASON)


def _scalar_column(fn: ScalarMetricFn) -> ScalarMetricFn:
    def value(y_true: Any, y_pred: Any) -> float:
        try:
            number = fn(np.asarray(y_true), np.asarray(y_pred))
        except ValueError:
            return math.nan
        return math.nan if number is None else float(number)

    return value


def _scalar_reason(fn: ScalarMetricFn, y_true: np.ndarray, y_pred: np.ndarray) -> str:
    try:
        fn(y_true, y_pred)
    except ValueError as error:
        return str(error)
    return RETURNED_NONE_REASON


# --- subgroup metrics ----------------------------------------------------------------------------------------------


def _sensitive_frame(sensitive_features: Any, n_rows: int) -> pd.DataFrame:
    if isinstance(sensitive_features, pd.Series):
        frame = sensitive_features.to_frame(name=sensitive_features.name or "group")
    elif isinstance(sensitive_features, pd.DataFrame):
        frame = sensitive_features
    elif isinstance(sensitive_features, Mapping):
        frame = pd.DataFrame(dict(sensitive_features))
    else:
        raise TypeError("sensitive_features must be a pandas DataFrame, a Series or a mapping column -> values")
    if frame.shape[1] == 0:
        raise ValueError("no sensitive feature columns given")
    if len(frame) != n_rows:
        raise ValueError(f"sensitive_features has {len(frame)} rows for {n_rows} predictions")
    missing = [str(column) for column in frame.columns if frame[column].isna().any()]
    if missing:
        raise ValueError(f"sensitive feature columns {missing} hold missing values; give them an explicit group "
                         "such as 'unknown' (rows with a missing group would silently leave every subgroup)")
    return frame.reset_index(drop=True)


def _declared_groups(frame: pd.DataFrame, expected_groups: Mapping[str, Sequence[Any]] | None) -> dict[str, list]:
    declared: dict[str, list] = {}
    for column in frame.columns:
        values = frame[column]
        if expected_groups and column in expected_groups:
            declared[column] = list(expected_groups[column])
        elif isinstance(values.dtype, pd.CategoricalDtype):
            declared[column] = list(values.cat.categories)
        else:
            declared[column] = sorted(pd.unique(values).tolist(), key=str)
        unexpected = set(pd.unique(values).tolist()) - set(declared[column])
        if unexpected:
            raise ValueError(f"column {column!r} holds groups {sorted(unexpected, key=str)} that are not declared")
    return declared


def _gap(name: str, groups: Sequence[GroupMetrics], min_group_size: int, attribute: str) -> MetricGap:
    compared = [(g.label, g.values[name]) for g in groups if g.size >= min_group_size and g.values[name] is not None]
    small = [g.label for g in groups if g.size < min_group_size]
    undefined = [g.label for g in groups if g.size >= min_group_size and g.values[name] is None]
    if len(compared) < 2:
        return MetricGap(name, None, None, None, None, len(compared), undefined, small, TOO_FEW_GROUPS_REASON,
                         TOO_FEW_GROUPS_REASON, attribute)
    highest = max(compared, key=lambda item: item[1])  # type: ignore[arg-type, return-value]
    lowest = min(compared, key=lambda item: item[1])  # type: ignore[arg-type, return-value]
    ratio: float | None = None
    ratio_reason: str | None = None
    if lowest[1] < 0:  # type: ignore[operator]
        ratio_reason = "a group's value is negative; min/max is not a ratio of rates"
    elif highest[1] == 0:
        ratio_reason = "every compared group's value is 0; min/max is 0/0"
    else:
        ratio = lowest[1] / highest[1]  # type: ignore[operator]
    difference = highest[1] - lowest[1]  # type: ignore[operator]
    return MetricGap(name, difference, ratio, highest[0], lowest[0], len(compared), undefined, small, None,
                     ratio_reason, attribute)


def subgroup_metrics(
    y_true: Any,
    y_pred: Any,
    sensitive_features: pd.DataFrame | pd.Series | Mapping[str, Sequence[Any]],
    metrics: Metrics,
    *,
    min_group_size: int = 1,
    expected_groups: Mapping[str, Sequence[Any]] | None = None,
) -> SubgroupMetrics:
    """Every metric overall and per group of the given sensitive column(s), with the largest gap per metric.

    ``y_pred`` is whatever the metric reads (positive-class scores for a binary set, a probability matrix for a
    multiclass set, predictions for regression); its first axis is the rows. Several columns give their
    intersections. ``expected_groups`` (column -> groups) declares groups that must be reported even when
    absent; a ``Categorical`` column declares its categories. Groups below ``min_group_size`` rows are
    reported but left out of the gap (and named in it).
    """
    truth = np.asarray(y_true)
    pred = np.asarray(y_pred)
    if len(truth) != len(pred):
        raise ValueError(f"y_true has {len(truth)} rows but y_pred has {len(pred)}")
    if len(truth) == 0:
        raise ValueError("no rows to evaluate")
    if min_group_size < 1:
        raise ValueError("min_group_size must be at least 1")
    features = _sensitive_frame(sensitive_features, len(truth))
    columns = tuple(str(c) for c in features.columns)
    features.columns = list(columns)
    declared = _declared_groups(features, expected_groups)

    # overall first, with no error caught: bad input (scores outside [0, 1], wrong labels) is the caller's to fix
    if isinstance(metrics, Mapping):
        if not metrics:
            raise ValueError("no metrics given")
        scalar_fns = dict(metrics)
        overall_values = {name: _finite_or_none(fn(truth, pred)) for name, fn in scalar_fns.items()}
        overall_undefined = {name: RETURNED_NONE_REASON for name, value in overall_values.items() if value is None}
        names = tuple(scalar_fns)
        frame_metrics = {name: _scalar_column(fn) for name, fn in scalar_fns.items()}

        def reason(name: str, rows: np.ndarray) -> str:
            return _scalar_reason(scalar_fns[name], truth[rows], pred[rows])
    else:
        columns_of_set = _MetricSetColumns(metrics)
        overall_set = metrics(truth, pred)
        names = tuple(overall_set.values)
        overall_values = {name: _finite_or_none(overall_set.values[name]) for name in names}
        overall_undefined = {name: overall_set.undefined.get(name, RETURNED_NONE_REASON)
                             for name, value in overall_values.items() if value is None}
        frame_metrics = {name: columns_of_set.column(name) for name in names}

        def reason(name: str, rows: np.ndarray) -> str:
            return columns_of_set.reason(name, truth[rows], pred[rows])

    frame = MetricFrame(metrics=frame_metrics, y_true=truth, y_pred=pred,
                        sensitive_features=features if len(columns) > 1 else features[columns[0]])
    by_group = frame.by_group
    sizes = features.groupby(list(columns), observed=True).size()

    def key_tuple(index: Any) -> tuple:
        return index if isinstance(index, tuple) else (index,)

    observed = {key_tuple(index): int(size) for index, size in sizes.items()}
    groups: list[GroupMetrics] = []
    for index, row in by_group.iterrows():
        key = key_tuple(index)
        if key not in observed:  # fairlearn lists unobserved combinations of categorical columns
            groups.append(GroupMetrics(dict(zip(columns, key)), 0, {name: None for name in names},
                                       {name: EMPTY_GROUP_REASON for name in names}))
            continue
        rows = np.flatnonzero(np.logical_and.reduce([features[c].to_numpy() == v for c, v in zip(columns, key)]))
        values = {name: _finite_or_none(row[name]) for name in names}
        undefined = {name: reason(name, rows) for name, value in values.items() if value is None}
        groups.append(GroupMetrics(dict(zip(columns, key)), observed[key], values, undefined))
    # declared groups absent from the data (fairlearn drops them), each listed once
    listed = {c: {group.key[c] for group in groups} for c in columns}
    for column in columns:
        for value in declared[column]:
            if value not in listed[column]:
                key = {c: (value if c == column else "*") for c in columns}
                groups.append(GroupMetrics(key, 0, {name: None for name in names},
                                           {name: EMPTY_GROUP_REASON for name in names}))
    attribute = " x ".join(columns)
    gaps = {name: _gap(name, groups, min_group_size, attribute) for name in names}
    return SubgroupMetrics(columns, names, overall_values, overall_undefined, groups, gaps, min_group_size,
                           len(truth))


def fairness_report(
    y_true: Any,
    y_pred: Any,
    sensitive_features: pd.DataFrame | Mapping[str, Sequence[Any]],
    metrics: Metrics,
    *,
    intersectional: bool = False,
    min_group_size: int = 1,
    expected_groups: Mapping[str, Sequence[Any]] | None = None,
) -> FairnessReport:
    """`subgroup_metrics` per sensitive column (sex, age band, institution, ...), plus their intersection if asked."""
    features = _sensitive_frame(sensitive_features, len(np.asarray(y_true)))
    frames = {
        str(column): subgroup_metrics(y_true, y_pred, features[[column]], metrics, min_group_size=min_group_size,
                                      expected_groups=expected_groups)
        for column in features.columns
    }
    if intersectional and features.shape[1] > 1:
        joint = subgroup_metrics(y_true, y_pred, features, metrics, min_group_size=min_group_size,
                                 expected_groups=expected_groups)
        frames[joint.attribute] = joint
    return FairnessReport(frames)


def age_bands(ages: Any, edges: Sequence[float] = (18, 40, 65, 80)) -> pd.Categorical:
    """Ages cut into bands ``<18``, ``18-39``, ..., ``>=80`` (left-closed), every band a category even when empty."""
    values = np.asarray(ages, dtype=np.float64)
    if np.isnan(values).any():
        raise ValueError("ages hold missing values; band them explicitly (e.g. 'unknown') before calling")
    bounds = [float(e) for e in edges]
    if not bounds or any(high <= low for low, high in zip(bounds, bounds[1:])):
        raise ValueError("edges must be a non-empty, strictly increasing sequence")

    def fmt(x: float) -> str:
        return str(int(x)) if x.is_integer() else str(x)

    def band(low: float, high: float) -> str:
        return f"{fmt(low)}-{fmt(high - 1)}" if low.is_integer() and high.is_integer() else f"[{fmt(low)}, {fmt(high)})"

    labels = [f"<{fmt(bounds[0])}", *(band(low, high) for low, high in zip(bounds, bounds[1:])), f">={fmt(bounds[-1])}"]
    codes = np.searchsorted(np.asarray(bounds), values, side="right")
    return pd.Categorical.from_codes(codes, categories=labels)


# --- the gate ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FairnessLimitResult:
    """One declared limit: the measured gap, the limit, pass or fail and why."""

    metric: str
    kind: str  # "difference" (value <= limit) or "ratio" (value >= limit)
    value: float | None
    limit: float
    passed: bool
    attribute: str
    reason: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"metric": self.metric, "kind": self.kind, "value": self.value, "limit": self.limit,
                "passed": self.passed, "attribute": self.attribute, "reason": self.reason}


@dataclass(frozen=True)
class FairnessCheck:
    passed: bool
    results: list[FairnessLimitResult]

    def failures(self) -> list[FairnessLimitResult]:
        return [result for result in self.results if not result.passed]

    def as_metadata(self) -> dict[str, Any]:
        return {"fairness_gate_passed": self.passed, "fairness_limits": [r.as_dict() for r in self.results]}


def _limit_result(gap: MetricGap, kind: str, limit: float) -> FairnessLimitResult:
    value = gap.difference if kind == "difference" else gap.ratio
    if gap.undefined_groups:
        return FairnessLimitResult(gap.metric, kind, value, limit, False, gap.attribute,
                                   f"undefined for groups {gap.undefined_groups} of at least min_group_size rows: "
                                   "their gap cannot be bounded")
    if value is None:
        why = gap.reason if kind == "difference" else (gap.ratio_reason or gap.reason)
        return FairnessLimitResult(gap.metric, kind, None, limit, False, gap.attribute, f"gap undefined: {why}")
    passed = value <= limit if kind == "difference" else value >= limit
    reason = None if passed else (
        f"{gap.highest_group} vs {gap.lowest_group}: {kind} {value:.4g} "
        f"{'exceeds' if kind == 'difference' else 'is below'} the limit {limit:g}")
    return FairnessLimitResult(gap.metric, kind, float(value), limit, passed, gap.attribute, reason)


def check_fairness(
    result: SubgroupMetrics | FairnessReport,
    limits: Mapping[str, float],
    *,
    min_ratios: Mapping[str, float] | None = None,
) -> FairnessCheck:
    """Pass/fail per declared limit: largest difference <= ``limits[metric]``, ratio >= ``min_ratios[metric]``.

    The limits come from the model's spec. No limit at all, an unknown metric or a negative limit is a
    ValueError; an undefined gap fails (the gate fails closed).
    """
    ratios = dict(min_ratios or {})
    if not limits and not ratios:
        raise ValueError("no fairness limits declared: the spec must declare a maximum gap per metric")
    gaps = result.largest_gaps() if isinstance(result, FairnessReport) else result.gaps
    unknown = sorted((set(limits) | set(ratios)) - set(gaps))
    if unknown:
        raise ValueError(f"fairness limits name metrics that were not computed: {unknown}; computed: {sorted(gaps)}")
    for name, limit in limits.items():
        if not (isinstance(limit, (int, float)) and math.isfinite(limit) and limit >= 0):
            raise ValueError(f"the limit of {name!r} must be a finite number >= 0, got {limit!r}")
    for name, limit in ratios.items():
        if not (isinstance(limit, (int, float)) and 0 <= limit <= 1):
            raise ValueError(f"the minimum ratio of {name!r} must lie in [0, 1], got {limit!r}")
    results = [_limit_result(gaps[name], "difference", float(limit)) for name, limit in limits.items()]
    if isinstance(result, FairnessReport):  # the smallest ratio over attributes, not the ratio of the largest gap
        for name, limit in ratios.items():
            per_attribute = [_limit_result(frame.gaps[name], "ratio", float(limit)) for frame in result.frames.values()]
            failing = [r for r in per_attribute if not r.passed]
            results.append(failing[0] if failing else min(per_attribute, key=lambda r: r.value))  # type: ignore
    else:
        results += [_limit_result(gaps[name], "ratio", float(limit)) for name, limit in ratios.items()]
    return FairnessCheck(all(r.passed for r in results), results)
