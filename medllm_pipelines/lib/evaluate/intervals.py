"""Bootstrap intervals (percentile and BCa) for any metric, paired deltas and k-fold summaries (V3, V5).

`bootstrap_intervals` resamples rows (or cases: an image, a patient) with
replacement and recomputes the metric on each draw; the metric may return one
number, a mapping of numbers or a `task_metrics.MetricSet`, and then every
metric of the set gets its interval from the same draws.

- Percentile: the (1 - level)/2 and (1 + level)/2 quantiles of the draws
  (linear interpolation, numpy's default).
- BCa (Efron & Tibshirani 1993, 14.3 and 15.4): bias correction z0 from the
  share of draws below the full-sample estimate (ties count one half) and
  acceleration from the leave-one-out jackknife, exactly as
  ``scipy.stats.bootstrap(method="BCa")`` computes them; with the same seed and
  no stratification the draws are the same as scipy's (one
  ``rng.integers(0, n, (n_boot, n))`` call), and a test checks both intervals
  against scipy to 1e-9. The jackknife costs n extra metric evaluations.
- Undefined draws (None or NaN, e.g. a resample with no positive case for
  ROC-AUC) are skipped and counted; the interval is then conditional on the
  metric being defined, which the count lets a reader judge. BCa is reported
  as undefined (with the reason) when the jackknife hits an undefined value,
  when every jackknife value is equal, or when every draw lies on one side of
  the estimate.
- ``stratify`` (e.g. y_true) resamples within each stratum, keeping its size,
  so that rare positives are present in every draw; BCa then keeps the
  ordinary leave-one-out jackknife.

The metric function must return None or NaN for "undefined", not raise.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.special import ndtr, ndtri

from medllm_pipelines.lib.evaluate.task_metrics import MetricSet

METHODS = ("percentile", "bca")
SCALAR_NAME = "value"


@dataclass(frozen=True)
class BootstrapInterval:
    """One metric's estimate on the full sample and its bootstrap intervals.

    An interval kind that could not be computed is None and ``reasons`` says why.
    """

    estimate: float | None
    level: float
    n_boot: int
    n_defined: int
    percentile: tuple[float, float] | None
    bca: tuple[float, float] | None
    standard_error: float | None
    acceleration: float | None = None
    bias_correction: float | None = None
    reasons: dict[str, str] = field(default_factory=dict)

    @property
    def n_undefined(self) -> int:
        return self.n_boot - self.n_defined

    def as_dict(self) -> dict[str, Any]:
        return {
            "estimate": self.estimate,
            "level": self.level,
            "n_boot": self.n_boot,
            "n_defined": self.n_defined,
            "n_undefined": self.n_undefined,
            "percentile": None if self.percentile is None else list(self.percentile),
            "bca": None if self.bca is None else list(self.bca),
            "standard_error": self.standard_error,
            "acceleration": self.acceleration,
            "bias_correction": self.bias_correction,
            "reasons": dict(self.reasons),
        }


MetricResult = float | None | Mapping[str, float | None] | MetricSet
MetricFunction = Callable[..., MetricResult]


def _named_values(result: MetricResult) -> dict[str, float]:
    """The metric's result as name -> float, NaN standing for undefined."""
    if isinstance(result, MetricSet):
        items = result.values.items()
    elif isinstance(result, Mapping):
        items = result.items()
    else:
        items = ((SCALAR_NAME, result),)
    named: dict[str, float] = {}
    for name, value in items:
        if value is None:
            named[name] = math.nan
        elif isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool):
            named[name] = float(value)
        else:
            raise TypeError(f"metric {name!r} returned {type(value).__name__}; expected a number or None")
    return named


def _as_arrays(arrays: Sequence[Any]) -> tuple[list[np.ndarray], int]:
    if not arrays:
        raise ValueError("pass at least one data array")
    converted = [np.asarray(array) for array in arrays]
    lengths = {len(array) for array in converted}
    if len(lengths) != 1:
        raise ValueError(f"data arrays must have the same number of rows, got {sorted(lengths)}")
    n = lengths.pop()
    if n < 2:
        raise ValueError("need at least two rows (cases) to bootstrap")
    return converted, n


def resample_indices(
    n: int, n_boot: int, rng: np.random.Generator, stratify: np.ndarray | None = None
) -> np.ndarray:
    """Row indices of each draw, shape (n_boot, n).

    Unstratified: one ``rng.integers(0, n, (n_boot, n))`` call, the draws
    ``scipy.stats.bootstrap`` makes with the same generator. Stratified: each
    stratum (in sorted order) resampled within itself, its size kept.
    """
    if stratify is None:
        return rng.integers(0, n, (n_boot, n))
    strata = np.asarray(stratify)
    if len(strata) != n:
        raise ValueError(f"stratify has {len(strata)} values for {n} rows")
    blocks = []
    for stratum in np.unique(strata):
        members = np.flatnonzero(strata == stratum)
        blocks.append(members[rng.integers(0, len(members), (n_boot, len(members)))])
    return np.concatenate(blocks, axis=1)


def _evaluate(
    metric_fn: MetricFunction, arrays: Sequence[np.ndarray], rows: np.ndarray | None = None
) -> dict[str, float]:
    data = arrays if rows is None else [array[rows] for array in arrays]
    return _named_values(metric_fn(*data))


def _bca_bounds(
    draws: np.ndarray, estimate: float, jackknife: np.ndarray, level: float
) -> tuple[tuple[float, float] | None, float | None, float | None, str | None]:
    """The BCa interval, acceleration and bias correction, or a reason why there is none."""
    if np.isnan(jackknife).any():
        return None, None, None, f"{int(np.isnan(jackknife).sum())} leave-one-out jackknife values are undefined"
    share_below = (np.count_nonzero(draws < estimate) + np.count_nonzero(draws <= estimate)) / (2 * len(draws))
    if share_below in (0.0, 1.0):
        return None, None, None, "every bootstrap draw lies on one side of the estimate (degenerate distribution)"
    deviations = (len(jackknife) - 1) * (jackknife.mean() - jackknife)
    squares = float(np.sum(deviations**2))
    if squares == 0.0:
        return None, None, None, "every jackknife value is equal; the acceleration is undefined"
    acceleration = float(np.sum(deviations**3) / squares**1.5 / 6.0)
    bias_correction = float(ndtri(share_below))
    z_alpha = float(ndtri((1.0 - level) / 2.0))
    low_z = bias_correction + z_alpha
    high_z = bias_correction - z_alpha
    low_share = float(ndtr(bias_correction + low_z / (1.0 - acceleration * low_z)))
    high_share = float(ndtr(bias_correction + high_z / (1.0 - acceleration * high_z)))
    low, high = np.quantile(draws, [low_share, high_share])
    return (float(low), float(high)), acceleration, bias_correction, None


def bootstrap_intervals(
    metric_fn: MetricFunction,
    *arrays: Any,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    methods: Sequence[str] = METHODS,
    stratify: Any = None,
) -> dict[str, BootstrapInterval]:
    """Intervals for every metric `metric_fn(*arrays)` returns, rows of all arrays resampled together.

    Returns name -> `BootstrapInterval`; a metric returning one number is
    named ``"value"``. Arrays share their first axis (rows, or cases such as
    images); ``stratify`` gives the stratum of each row.
    """
    unknown = set(methods) - set(METHODS)
    if unknown:
        raise ValueError(f"unknown interval methods {sorted(unknown)}; choose from {METHODS}")
    if not 0.0 < level < 1.0:
        raise ValueError("level must lie strictly between 0 and 1")
    if n_boot < 2:
        raise ValueError("n_boot must be at least 2")
    data, n = _as_arrays(arrays)
    estimates = _evaluate(metric_fn, data)
    rng = np.random.default_rng(seed)
    indices = resample_indices(n, n_boot, rng, None if stratify is None else np.asarray(stratify))
    draws: dict[str, list[float]] = {name: [] for name in estimates}
    for rows in indices:
        drawn = _evaluate(metric_fn, data, rows)
        for name in estimates:
            draws[name].append(drawn.get(name, math.nan))
    jackknife: dict[str, np.ndarray] = {}
    if "bca" in methods:
        leave_one_out = [_evaluate(metric_fn, data, np.delete(np.arange(n), i)) for i in range(n)]
        jackknife = {name: np.array([values.get(name, math.nan) for values in leave_one_out]) for name in estimates}

    tail = (1.0 - level) / 2.0
    results: dict[str, BootstrapInterval] = {}
    for name, estimate in estimates.items():
        values = np.asarray(draws[name], dtype=np.float64)
        defined = values[~np.isnan(values)]
        reasons: dict[str, str] = {}
        if math.isnan(estimate):
            reason = "the metric is undefined on the full sample"
            results[name] = BootstrapInterval(
                estimate=None, level=level, n_boot=n_boot, n_defined=len(defined), percentile=None, bca=None,
                standard_error=None, reasons={method: reason for method in methods},
            )
            continue
        percentile = bca = None
        acceleration = bias_correction = None
        if len(defined) < 2:
            reasons.update({method: f"only {len(defined)} of {n_boot} draws are defined" for method in methods})
        else:
            if "percentile" in methods:
                low, high = np.quantile(defined, [tail, 1.0 - tail])
                percentile = (float(low), float(high))
            if "bca" in methods:
                bca, acceleration, bias_correction, why = _bca_bounds(defined, estimate, jackknife[name], level)
                if why is not None:
                    reasons["bca"] = why
        results[name] = BootstrapInterval(
            estimate=estimate,
            level=level,
            n_boot=n_boot,
            n_defined=len(defined),
            percentile=percentile,
            bca=bca,
            standard_error=float(np.std(defined, ddof=1)) if len(defined) >= 2 else None,
            acceleration=acceleration,
            bias_correction=bias_correction,
            reasons=reasons,
        )
    return results


def paired_delta_intervals(
    metric_fn: MetricFunction,
    y_true: Any,
    model_output: Any,
    baseline_output: Any,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    methods: Sequence[str] = METHODS,
    stratify: Any = None,
) -> dict[str, BootstrapInterval]:
    """Intervals of metric(model) - metric(baseline), both computed on the same resampled rows.

    Two overlapping separate intervals do not show that the models are equal;
    the paired difference does say whether the model beats its baseline (V5).
    A draw where either side is undefined is undefined for the delta.
    """

    def delta(truth: np.ndarray, model: np.ndarray, baseline: np.ndarray) -> dict[str, float]:
        model_values = _named_values(metric_fn(truth, model))
        baseline_values = _named_values(metric_fn(truth, baseline))
        return {name: value - baseline_values.get(name, math.nan) for name, value in model_values.items()}

    return bootstrap_intervals(
        delta, y_true, model_output, baseline_output,
        n_boot=n_boot, seed=seed, level=level, methods=methods, stratify=stratify,
    )


def _summarise(per_fold: list[float | None]) -> dict[str, Any]:
    defined = [value for value in per_fold if value is not None]
    return {
        "mean": float(np.mean(defined)) if defined else None,
        "sd": float(np.std(defined, ddof=1)) if len(defined) >= 2 else None,
        "min": float(min(defined)) if defined else None,
        "max": float(max(defined)) if defined else None,
        "n_folds": len(per_fold),
        "n_defined": len(defined),
        "undefined_folds": [index for index, value in enumerate(per_fold) if value is None],
        "per_fold": per_fold,
    }


def cross_validation_summary(fold_values: Sequence[MetricResult]) -> dict[str, Any]:
    """Mean, sample SD (ddof=1), min, max and the per-fold values of k-fold results.

    `fold_values` holds one entry per fold: a number, a mapping of numbers or
    a `MetricSet` (then the summary is per metric name). A fold where a metric
    is undefined is listed, not averaged in as 0; the SD is None below two
    defined folds.
    """
    if len(fold_values) == 0:
        raise ValueError("no folds to summarise")
    named = [_named_values(value) for value in fold_values]
    names = list(dict.fromkeys(name for fold in named for name in fold))
    summary: dict[str, Any] = {}
    for name in names:
        per_fold = [None if math.isnan(fold.get(name, math.nan)) else fold[name] for fold in named]
        summary[name] = _summarise(per_fold)
    return summary[SCALAR_NAME] if names == [SCALAR_NAME] else summary


def cross_validation_metrics(metric_fn: MetricFunction, fold_ids: Any, *arrays: Any) -> dict[str, Any]:
    """The metric on each fold's rows (e.g. out-of-fold predictions), then `cross_validation_summary`.

    Returns ``{"folds": [fold ids in sorted order], "summary": cross_validation_summary(...)}``.
    """
    folds = np.asarray(fold_ids)
    data, n = _as_arrays(arrays)
    if len(folds) != n:
        raise ValueError(f"fold_ids has {len(folds)} values for {n} rows")
    fold_names = list(np.unique(folds))
    results = [metric_fn(*[array[folds == fold] for array in data]) for fold in fold_names]
    return {
        "folds": [fold.item() if hasattr(fold, "item") else fold for fold in fold_names],
        "summary": cross_validation_summary(results),
    }
