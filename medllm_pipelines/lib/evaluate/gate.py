"""The promotion gate (issue 12 item 11): the thresholds a spec declares, and the decision on one evaluation.

A spec declares its gate in an ``evaluation:`` block::

    evaluation:
      primary_metric: roc_auc     # a metric of the task's set (lib/evaluate/task_metrics.py)
      baseline_margin: 0.02       # primary >= baseline - margin (lower-is-better metrics: <= baseline + margin)
      ece_max: 0.05               # binary and multiclass: expected calibration error on test
      subgroup_gap_max: 0.20      # largest gap of the primary metric over sex, age band and institution
      min_group_size: 20          # smaller groups are reported but not gated
      attack: {epsilon: 0.1, accuracy_min: 0.6}   # where the family is attacked (adapter's attack_accuracy)
      mia_auc_max: 0.60           # loss-threshold membership inference AUC

The gate fails closed: no block, an unknown key, a threshold whose value is undefined (a test split with one
class, no subgroup of the declared size, an attack the adapter did not run) are each a failed criterion with
its reason, never a pass. Only a passed decision may move the ``champion`` alias
(``lib/train/registry.promote_to_champion``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

LOWER_IS_BETTER = frozenset({"brier", "mse", "mae", "rmse", "hd95", "ece"})
KNOWN_KEYS = frozenset({"primary_metric", "baseline_margin", "ece_max", "subgroup_gap_max", "min_group_size",
                        "attack", "mia_auc_max", "n_boot"})
DEFAULT_MIN_GROUP_SIZE = 20
DEFAULT_N_BOOT = 1000


class GatePolicyError(ValueError):
    """A spec's evaluation block is missing or malformed: the gate cannot pass."""


@dataclass(frozen=True)
class GatePolicy:
    """A spec's declared thresholds (see the module doc)."""

    spec_id: str
    primary_metric: str
    baseline_margin: float
    ece_max: float | None
    subgroup_gap_max: float | None
    min_group_size: int
    attack_epsilon: float | None
    attack_accuracy_min: float | None
    mia_auc_max: float | None
    n_boot: int = DEFAULT_N_BOOT

    @property
    def higher_is_better(self) -> bool:
        return self.primary_metric not in LOWER_IS_BETTER

    def as_dict(self) -> dict[str, Any]:
        return {"primary_metric": self.primary_metric, "baseline_margin": self.baseline_margin,
                "ece_max": self.ece_max, "subgroup_gap_max": self.subgroup_gap_max,
                "min_group_size": self.min_group_size,
                "attack": (None if self.attack_epsilon is None
                           else {"epsilon": self.attack_epsilon, "accuracy_min": self.attack_accuracy_min}),
                "mia_auc_max": self.mia_auc_max, "n_boot": self.n_boot}


def _number(spec_id: str, key: str, value: Any, *, low: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(float(value)):
        raise GatePolicyError(f"spec {spec_id}: evaluation.{key} must be a finite number, got {value!r}")
    if low is not None and float(value) < low:
        raise GatePolicyError(f"spec {spec_id}: evaluation.{key} must be >= {low}, got {value!r}")
    return float(value)


def gate_policy(spec_id: str, block: Mapping[str, Any] | None) -> GatePolicy:
    """The policy of a spec's ``evaluation`` block; GatePolicyError when missing or malformed."""
    if not block:
        raise GatePolicyError(f"spec {spec_id} declares no evaluation thresholds (an `evaluation:` block); "
                              "the promotion gate fails closed")
    unknown = sorted(set(block) - KNOWN_KEYS)
    if unknown:
        raise GatePolicyError(f"spec {spec_id}: unknown evaluation keys {unknown}; known: {sorted(KNOWN_KEYS)}")
    primary = block.get("primary_metric")
    if not isinstance(primary, str) or not primary:
        raise GatePolicyError(f"spec {spec_id}: evaluation.primary_metric is required")
    if "baseline_margin" not in block:
        raise GatePolicyError(f"spec {spec_id}: evaluation.baseline_margin is required")
    attack = block.get("attack")
    epsilon = accuracy_min = None
    if attack is not None:
        if not isinstance(attack, Mapping) or set(attack) != {"epsilon", "accuracy_min"}:
            raise GatePolicyError(f"spec {spec_id}: evaluation.attack must be {{epsilon, accuracy_min}}")
        epsilon = _number(spec_id, "attack.epsilon", attack["epsilon"], low=0.0)
        accuracy_min = _number(spec_id, "attack.accuracy_min", attack["accuracy_min"], low=0.0)

    def optional(key: str) -> float | None:
        return None if block.get(key) is None else _number(spec_id, key, block[key], low=0.0)

    return GatePolicy(
        spec_id=spec_id,
        primary_metric=primary,
        baseline_margin=_number(spec_id, "baseline_margin", block["baseline_margin"], low=0.0),
        ece_max=optional("ece_max"),
        subgroup_gap_max=optional("subgroup_gap_max"),
        min_group_size=int(_number(spec_id, "min_group_size", block.get("min_group_size", DEFAULT_MIN_GROUP_SIZE),
                                   low=1.0)),
        attack_epsilon=epsilon,
        attack_accuracy_min=accuracy_min,
        mia_auc_max=optional("mia_auc_max"),
        n_boot=int(_number(spec_id, "n_boot", block.get("n_boot", DEFAULT_N_BOOT), low=2.0)),
    )


@dataclass(frozen=True)
class Criterion:
    """One threshold of the gate: its measured value, the limit, and whether it holds (None value: fails)."""

    name: str
    value: float | None
    limit: float | None
    comparison: str  # ">=" or "<="
    passed: bool
    reason: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "value": self.value, "limit": self.limit, "comparison": self.comparison,
                "passed": self.passed, "reason": self.reason}


@dataclass(frozen=True)
class GateDecision:
    """Whether the model may become champion, each criterion with its value and limit."""

    spec_id: str
    model_name: str
    model_version: str
    passed: bool
    criteria: tuple[Criterion, ...] = ()
    reason: str = ""
    policy: dict[str, Any] = field(default_factory=dict)

    @property
    def failed(self) -> list[str]:
        return [c.name for c in self.criteria if not c.passed]

    def summary(self) -> str:
        if self.passed:
            return f"{self.model_name} v{self.model_version}: gate passed ({len(self.criteria)} criteria)"
        detail = self.reason or "; ".join(
            f"{c.name} {c.value} {c.comparison} {c.limit} fails{(' (' + c.reason + ')') if c.reason else ''}"
            for c in self.criteria if not c.passed)
        return f"{self.model_name} v{self.model_version}: gate FAILED: {detail}"

    def as_metadata(self) -> dict[str, Any]:
        return {"passed": self.passed, "spec_id": self.spec_id, "model": self.model_name,
                "version": self.model_version, "reason": self.reason, "failed": self.failed,
                "criteria": [c.as_dict() for c in self.criteria], "policy": dict(self.policy)}


def criterion(name: str, value: float | None, limit: float, comparison: str, reason: str = "") -> Criterion:
    """A criterion that fails closed: an undefined value never passes."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return Criterion(name, None, limit, comparison, False, reason or "undefined: cannot be checked")
    holds = value >= limit if comparison == ">=" else value <= limit
    return Criterion(name, float(value), float(limit), comparison, bool(holds), "" if holds else reason)


def refused(spec_id: str, model_name: str, model_version: str, reason: str) -> GateDecision:
    """A gate that could not be evaluated at all (no thresholds, no model): failed, with the reason."""
    return GateDecision(spec_id, model_name, model_version, False, (), reason)


def decide(
    policy: GatePolicy,
    model_name: str,
    model_version: str,
    *,
    primary: float | None,
    baseline_primary: float | None,
    ece: float | None = None,
    subgroup_gap: float | None = None,
    subgroup_gap_reason: str = "",
    attack_accuracy: float | None = None,
    mia_auc: float | None = None,
) -> GateDecision:
    """Every declared threshold checked against its measured value; the gate passes only when all hold."""
    criteria: list[Criterion] = []
    name = policy.primary_metric
    if baseline_primary is None:
        criteria.append(Criterion(f"{name} vs baseline", primary, None, ">=" if policy.higher_is_better else "<=",
                                  False, "the baseline's value is undefined: nothing to compare against"))
    elif policy.higher_is_better:
        criteria.append(criterion(f"{name} >= baseline - margin", primary, baseline_primary - policy.baseline_margin,
                                  ">=", "below the baseline by more than the margin"))
    else:
        criteria.append(criterion(f"{name} <= baseline + margin", primary, baseline_primary + policy.baseline_margin,
                                  "<=", "worse than the baseline by more than the margin"))
    if policy.ece_max is not None:
        criteria.append(criterion("ece", ece, policy.ece_max, "<=", "calibration error above the limit"))
    if policy.subgroup_gap_max is not None:
        criteria.append(criterion(f"largest subgroup gap of {name}", subgroup_gap, policy.subgroup_gap_max, "<=",
                                  subgroup_gap_reason or "a subgroup is served worse than the limit allows"))
    if policy.attack_epsilon is not None and policy.attack_accuracy_min is not None:
        criteria.append(criterion(f"accuracy under attack at eps={policy.attack_epsilon:g}", attack_accuracy,
                                  policy.attack_accuracy_min, ">=", "not robust enough at the declared epsilon"))
    if policy.mia_auc_max is not None:
        criteria.append(criterion("membership inference AUC", mia_auc, policy.mia_auc_max, "<=",
                                  "the model leaks who was in its training set"))
    return GateDecision(policy.spec_id, model_name, model_version, all(c.passed for c in criteria),
                        tuple(criteria), policy=policy.as_dict())
