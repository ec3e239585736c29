"""Differential privacy for released statistics, with a per-dataset budget (clause 5.4.1.3, row S3).

Mechanisms (neighbouring datasets differ by adding or removing one person, who
contributes at most one row):

* Laplace: noise ``Lap(Δ₁/ε)``, pure ε-DP.
* Gaussian: noise ``N(0, σ²)`` with σ from the *analytic* Gaussian mechanism
  (Balle & Wang 2018), (ε, δ)-DP for every ε > 0 and tighter than the classic
  ``σ = Δ₂·sqrt(2 ln(1.25/δ))/ε`` (which only holds for ε < 1).

Counts have sensitivity 1; sums clip every value into declared ``[lower,
upper]`` bounds first (sensitivity ``max(|lower|, |upper|)``); a mean is a
noisy sum over a noisy count, each with half the budget; a histogram over
*declared* categories has sensitivity 1 (each person is in one bin). Bounds
and categories must come from domain knowledge, never from the data.

Every release is charged to a :class:`PrivacyLedger` *before* the noise is
drawn (sequential composition: the ε and δ of all releases add up), and the
ledger refuses a release that would overspend. The ledger is a JSON file,
hash-chained like the audit log, replaced atomically under a lock.

Randomness: pass ``rng=numpy.random.default_rng(seed)`` for reproducible tests;
production uses a fresh OS-seeded generator. (Floating-point Laplace samplers
leak through their low bits in theory - Mironov 2012; counts are released
rounded to integers, which closes that channel for them.)
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medllm_pipelines.lib.common.files import exclusive_lock, write_private_atomic

__all__ = [
    "DPRelease",
    "LedgerIntegrityError",
    "PrivacyBudgetExceeded",
    "PrivacyLedger",
    "PrivateStatistics",
    "analytic_gaussian_sigma",
    "classic_gaussian_sigma",
    "gaussian_mechanism",
    "laplace_mechanism",
]

_TOLERANCE = 1e-9
_DATASET = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,127}$")
_GENESIS = "0" * 64


class PrivacyBudgetExceeded(Exception):
    """A release would spend more ε (or δ) than the dataset's budget has left."""


class LedgerIntegrityError(Exception):
    """The ledger file was edited outside this module (its hash chain breaks)."""


# --- mechanisms -----------------------------------------------------------------
def _check_epsilon(epsilon: float) -> None:
    if not (isinstance(epsilon, (int, float)) and math.isfinite(epsilon) and epsilon > 0):
        raise ValueError("epsilon must be a positive finite number")


def _check_delta(delta: float) -> None:
    if not 0 < delta < 1:
        raise ValueError("delta must be in (0, 1) for the Gaussian mechanism")


def laplace_mechanism(value: float | np.ndarray, sensitivity: float, epsilon: float,
                      rng: np.random.Generator) -> float | np.ndarray:
    """``value + Lap(sensitivity / epsilon)`` (elementwise for arrays)."""
    _check_epsilon(epsilon)
    if sensitivity <= 0:
        raise ValueError("sensitivity must be positive")
    scale = sensitivity / epsilon
    if np.ndim(value) == 0:
        return float(value) + float(rng.laplace(0.0, scale))
    return np.asarray(value, dtype=float) + rng.laplace(0.0, scale, size=np.shape(value))


def classic_gaussian_sigma(sensitivity: float, epsilon: float, delta: float) -> float:
    """Dwork & Roth's σ (Theorem A.1); valid for ε < 1 only."""
    _check_epsilon(epsilon)
    _check_delta(delta)
    if epsilon >= 1:
        raise ValueError("the classic Gaussian calibration only holds for epsilon < 1")
    return sensitivity * math.sqrt(2 * math.log(1.25 / delta)) / epsilon


def _phi(x: float) -> float:
    return 0.5 * math.erfc(-x / math.sqrt(2))


def _gaussian_delta(sigma: float, sensitivity: float, epsilon: float) -> float:
    """Exact δ of N(0, σ²) noise at ε (Balle & Wang 2018, Theorem 8)."""
    a = sensitivity / (2 * sigma)
    b = epsilon * sigma / sensitivity
    upper = _phi(a - b)
    # exp(ε)·Φ(-a-b) computed in log space: exp(ε) alone overflows for large ε.
    tail = _phi(-a - b)
    lower = math.exp(epsilon + math.log(tail)) if tail > 0 else 0.0
    return upper - lower


def analytic_gaussian_sigma(sensitivity: float, epsilon: float, delta: float) -> float:
    """Smallest σ with (ε, δ)-DP for L2 sensitivity ``sensitivity`` (bisection on the exact δ)."""
    _check_epsilon(epsilon)
    _check_delta(delta)
    if sensitivity <= 0:
        raise ValueError("sensitivity must be positive")
    low, high = 1e-12 * sensitivity, sensitivity
    while _gaussian_delta(high, sensitivity, epsilon) > delta:
        high *= 2
    for _ in range(200):
        middle = (low + high) / 2
        if _gaussian_delta(middle, sensitivity, epsilon) > delta:
            low = middle
        else:
            high = middle
        if high - low <= 1e-12 * high:
            break
    return high


def gaussian_mechanism(value: float | np.ndarray, sensitivity: float, epsilon: float, delta: float,
                       rng: np.random.Generator) -> float | np.ndarray:
    """``value + N(0, σ²)`` with the analytic σ (elementwise for arrays; L2 sensitivity)."""
    sigma = analytic_gaussian_sigma(sensitivity, epsilon, delta)
    if np.ndim(value) == 0:
        return float(value) + float(rng.normal(0.0, sigma))
    return np.asarray(value, dtype=float) + rng.normal(0.0, sigma, size=np.shape(value))


# --- the ledger --------------------------------------------------------------------
def _canonical(fields: dict[str, Any]) -> bytes:
    return json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _entry_hash(entry: dict[str, Any]) -> str:
    return hashlib.sha256(b"medllm-dp-ledger-v1\n" + _canonical({k: v for k, v in entry.items() if k != "hash"})).hexdigest()


@dataclass(frozen=True)
class LedgerEntry:
    seq: int
    time: str
    query: str
    mechanism: str
    epsilon: float
    delta: float
    actor: str
    prev_hash: str
    hash: str


class PrivacyLedger:
    """The privacy budget of one dataset: ε and δ spent so far, and what on.

    The budget is fixed when the ledger file is created; opening it with a
    different budget is an error (a budget is raised by a new, documented
    decision and a new dataset name, not by a parameter).
    """

    def __init__(self, path: str | os.PathLike[str], *, dataset: str, epsilon_budget: float,
                 delta_budget: float = 0.0) -> None:
        if not _DATASET.fullmatch(dataset):
            raise ValueError(f"invalid dataset name {dataset!r}")
        _check_epsilon(epsilon_budget)
        if not 0 <= delta_budget < 1:
            raise ValueError("delta_budget must be in [0, 1)")
        self.path = Path(path)
        self.lock_path = self.path.with_name(self.path.name + ".lock")
        self.dataset = dataset
        self.epsilon_budget = float(epsilon_budget)
        self.delta_budget = float(delta_budget)
        with exclusive_lock(self.lock_path):
            self._load()  # creates nothing, but checks an existing file now

    def __repr__(self) -> str:
        return f"PrivacyLedger({self.dataset!r}, epsilon_budget={self.epsilon_budget}, delta_budget={self.delta_budget})"

    # --- reading --------------------------------------------------------------------
    def entries(self) -> list[LedgerEntry]:
        with exclusive_lock(self.lock_path):
            return [LedgerEntry(**e) for e in self._load()["entries"]]

    def spent(self) -> tuple[float, float]:
        """(ε, δ) spent so far."""
        entries = self.entries()
        return math.fsum(e.epsilon for e in entries), math.fsum(e.delta for e in entries)

    def remaining(self) -> tuple[float, float]:
        epsilon, delta = self.spent()
        return max(self.epsilon_budget - epsilon, 0.0), max(self.delta_budget - delta, 0.0)

    # --- spending -------------------------------------------------------------------
    def charge(self, epsilon: float, delta: float = 0.0, *, query: str, mechanism: str, actor: str = "pipeline",
               now: dt.datetime | None = None) -> LedgerEntry:
        """Record a spend, or raise PrivacyBudgetExceeded (nothing recorded)."""
        _check_epsilon(epsilon)
        if not 0 <= delta < 1:
            raise ValueError("delta must be in [0, 1)")
        with exclusive_lock(self.lock_path):
            data = self._load()
            spent_epsilon = math.fsum(e["epsilon"] for e in data["entries"])
            spent_delta = math.fsum(e["delta"] for e in data["entries"])
            if spent_epsilon + epsilon > self.epsilon_budget + _TOLERANCE:
                raise PrivacyBudgetExceeded(
                    f"dataset {self.dataset!r}: {query!r} needs epsilon={epsilon:g} but only "
                    f"{max(self.epsilon_budget - spent_epsilon, 0):.6g} of {self.epsilon_budget:g} is left"
                )
            if spent_delta + delta > self.delta_budget + _TOLERANCE * 1e-6:
                raise PrivacyBudgetExceeded(
                    f"dataset {self.dataset!r}: {query!r} needs delta={delta:g} but only "
                    f"{max(self.delta_budget - spent_delta, 0):.3g} of {self.delta_budget:g} is left"
                )
            entries = data["entries"]
            entry: dict[str, Any] = {
                "seq": len(entries),
                "time": (now or dt.datetime.now(dt.UTC)).astimezone(dt.UTC).isoformat(timespec="seconds"),
                "query": query,
                "mechanism": mechanism,
                "epsilon": float(epsilon),
                "delta": float(delta),
                "actor": actor,
                "prev_hash": entries[-1]["hash"] if entries else _GENESIS,
            }
            entry["hash"] = _entry_hash(entry)
            entries.append(entry)
            self._save(data)
            return LedgerEntry(**entry)

    # --- storage --------------------------------------------------------------------
    def _load(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {"format": "medllm-dp-ledger", "format_version": 1, "dataset": self.dataset,
                    "epsilon_budget": self.epsilon_budget, "delta_budget": self.delta_budget, "entries": []}
        if data.get("format") != "medllm-dp-ledger" or data.get("dataset") != self.dataset:
            raise LedgerIntegrityError(f"{self.path.name} is not the privacy ledger of {self.dataset!r}")
        if (data.get("epsilon_budget"), data.get("delta_budget")) != (self.epsilon_budget, self.delta_budget):
            raise ValueError(
                f"dataset {self.dataset!r} has a recorded budget of epsilon={data.get('epsilon_budget')}, "
                f"delta={data.get('delta_budget')}; it cannot be changed by opening the ledger with another"
            )
        previous = _GENESIS
        for index, entry in enumerate(data["entries"]):
            if entry.get("seq") != index or entry.get("prev_hash") != previous or _entry_hash(entry) != entry.get("hash"):
                raise LedgerIntegrityError(f"privacy ledger of {self.dataset!r} is broken at entry {index}: "
                                           "it was edited, reordered or had entries removed")
            previous = entry["hash"]
        return data

    def _save(self, data: dict[str, Any]) -> None:
        write_private_atomic(self.path, json.dumps(data, indent=1, sort_keys=True, ensure_ascii=False))


# --- budgeted releases --------------------------------------------------------------
@dataclass(frozen=True)
class DPRelease:
    """A released statistic and what it cost; safe to publish (the true value is not kept)."""

    value: Any
    query: str
    mechanism: str
    epsilon: float
    delta: float
    sensitivity: float
    noise_scale: float  # Laplace b or Gaussian σ (of each noisy component)
    ledger_seq: int

    def as_metadata(self) -> dict[str, Any]:
        return {"dp_query": self.query, "dp_mechanism": self.mechanism, "dp_epsilon": self.epsilon,
                "dp_delta": self.delta, "dp_noise_scale": self.noise_scale, "dp_ledger_seq": self.ledger_seq}


class PrivateStatistics:
    """Counts, sums, means and histograms of one dataset, charged to its ledger.

    ``mechanism`` is "laplace" (ε-DP) or "gaussian" ((ε, δ)-DP, needs ``delta``).
    """

    def __init__(self, ledger: PrivacyLedger, *, rng: np.random.Generator | None = None,
                 actor: str = "pipeline") -> None:
        self.ledger = ledger
        self.rng = rng if rng is not None else np.random.default_rng()
        self.actor = actor

    def _noise(self, value: Any, sensitivity: float, epsilon: float, delta: float, mechanism: str) -> tuple[Any, float]:
        if mechanism == "laplace":
            return laplace_mechanism(value, sensitivity, epsilon, self.rng), sensitivity / epsilon
        if mechanism == "gaussian":
            return (gaussian_mechanism(value, sensitivity, epsilon, delta, self.rng),
                    analytic_gaussian_sigma(sensitivity, epsilon, delta))
        raise ValueError(f"unknown mechanism {mechanism!r} (laplace | gaussian)")

    def _charge(self, query: str, epsilon: float, delta: float, mechanism: str) -> int:
        if mechanism == "laplace" and delta:
            raise ValueError("the Laplace mechanism takes no delta")
        if mechanism == "gaussian":
            _check_delta(delta)
        return self.ledger.charge(epsilon, delta, query=query, mechanism=mechanism, actor=self.actor).seq

    def count(self, n: int, *, epsilon: float, query: str, mechanism: str = "laplace", delta: float = 0.0,
              round_result: bool = True) -> DPRelease:
        """A noisy count of persons (sensitivity 1), rounded to an integer by default."""
        seq = self._charge(query, epsilon, delta, mechanism)
        noisy, scale = self._noise(float(n), 1.0, epsilon, delta, mechanism)
        value = round(noisy) if round_result else float(noisy)
        return DPRelease(value, query, mechanism, epsilon, delta, 1.0, scale, seq)

    def sum(self, values: Iterable[float], *, lower: float, upper: float, epsilon: float, query: str,
            mechanism: str = "laplace", delta: float = 0.0) -> DPRelease:
        """A noisy sum of values clipped into the declared ``[lower, upper]``."""
        clipped = _clip(values, lower, upper)
        sensitivity = max(abs(lower), abs(upper)) or 1e-12
        seq = self._charge(query, epsilon, delta, mechanism)
        noisy, scale = self._noise(float(clipped.sum()), sensitivity, epsilon, delta, mechanism)
        return DPRelease(float(noisy), query, mechanism, epsilon, delta, sensitivity, scale, seq)

    def mean(self, values: Iterable[float], *, lower: float, upper: float, epsilon: float, query: str,
             mechanism: str = "laplace", delta: float = 0.0) -> DPRelease:
        """Noisy centred sum / noisy count (half the budget each), clamped into ``[lower, upper]``.

        Values are centred on the middle of the bounds before summing, so one
        person moves the sum by at most half the range (``(upper - lower) / 2``)
        instead of ``max(|lower|, |upper|)``: for HbA1c in [4, 15] %, 5.5
        instead of 15, i.e. 2.7x less noise for the same epsilon.
        """
        release = self.grouped_mean({None: values}, lower=lower, upper=upper, epsilon=epsilon, query=query,
                                    mechanism=mechanism, delta=delta)
        return DPRelease(release.value[None], query, mechanism, epsilon, delta, release.sensitivity,
                         release.noise_scale, release.ledger_seq)

    def grouped_mean(self, values_by_group: Mapping[Any, Iterable[float]], *, lower: float, upper: float,
                     epsilon: float, query: str, mechanism: str = "laplace", delta: float = 0.0,
                     contributions: int = 1) -> DPRelease:
        """One noisy mean per declared group, charged once (parallel composition).

        A person contributes one value to at most ``contributions`` groups (a
        person registered at two institutions: 2; the caller truncates to that
        bound): the vector of centred sums then moves by at most
        ``contributions * (upper - lower) / 2`` in L1 and the vector of counts
        by ``contributions``, so one charge of ``epsilon`` covers every group,
        instead of one charge per group.
        """
        if not isinstance(contributions, int) or contributions < 1:
            raise ValueError("contributions must be a positive integer")
        groups = list(values_by_group)
        if not groups:
            raise ValueError("declare at least one group")
        clipped = [_clip(values_by_group[g], lower, upper) for g in groups]
        midpoint, half_range = (lower + upper) / 2, (upper - lower) / 2
        l2 = mechanism != "laplace"
        sum_sensitivity = (math.sqrt(contributions) if l2 else contributions) * half_range
        count_sensitivity = math.sqrt(contributions) if l2 else float(contributions)
        seq = self._charge(query, epsilon, delta, mechanism)
        half_epsilon, half_delta = epsilon / 2, delta / 2
        sums = np.array([float((c - midpoint).sum()) for c in clipped])
        counts = np.array([float(len(c)) for c in clipped])
        noisy_sums, sum_scale = self._noise(sums, sum_sensitivity, half_epsilon, half_delta, mechanism)
        noisy_counts, _ = self._noise(counts, count_sensitivity, half_epsilon, half_delta, mechanism)
        means = {g: float(np.clip(midpoint + s / max(n, 1.0), lower, upper))
                 for g, s, n in zip(groups, np.atleast_1d(noisy_sums), np.atleast_1d(noisy_counts), strict=True)}
        return DPRelease(means, query, mechanism, epsilon, delta, sum_sensitivity, sum_scale, seq)

    def histogram(self, values: Iterable[Any], *, categories: Sequence[Any], epsilon: float, query: str,
                  mechanism: str = "laplace", delta: float = 0.0, nonnegative: bool = True,
                  contributions: int = 1) -> DPRelease:
        """Noisy count per *declared* category (values outside them are counted nowhere).

        One row per person: then adding or removing a person changes one bin
        by one (L1 = L2 sensitivity 1). A person may instead hold up to
        ``contributions`` values *in distinct categories* (a person registered
        at two institutions): L1 sensitivity ``contributions``, L2 its square
        root. The caller truncates to that bound. ``nonnegative`` rounds and
        clamps at 0 (post-processing: free, but biased upwards near zero).
        """
        if len(set(categories)) != len(categories) or not categories:
            raise ValueError("categories must be declared, non-empty and distinct")
        if not isinstance(contributions, int) or contributions < 1:
            raise ValueError("contributions must be a positive integer")
        index = {c: i for i, c in enumerate(categories)}
        counts = np.zeros(len(categories))
        for value in values:
            position = index.get(value)
            if position is not None:
                counts[position] += 1
        sensitivity = float(contributions) if mechanism == "laplace" else math.sqrt(contributions)
        seq = self._charge(query, epsilon, delta, mechanism)
        noisy, scale = self._noise(counts, sensitivity, epsilon, delta, mechanism)
        if nonnegative:
            noisy = np.maximum(np.rint(noisy), 0)
        released = {c: (int(v) if nonnegative else float(v)) for c, v in zip(categories, noisy, strict=True)}
        return DPRelease(released, query, mechanism, epsilon, delta, sensitivity, scale, seq)


def _clip(values: Iterable[float], lower: float, upper: float) -> np.ndarray:
    if not (math.isfinite(lower) and math.isfinite(upper)) or lower >= upper:
        raise ValueError("declare finite bounds with lower < upper")
    array = np.asarray(list(values), dtype=float)
    if np.isnan(array).any():
        raise ValueError("values contain NaN; impute or drop them before a private release")
    return np.clip(array, lower, upper)
