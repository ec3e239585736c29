"""Guideline rules and a small knowledge graph (``guidelines.yaml``) turned into next steps.

Clinical content is data, versioned, each statement with its source; this module
only interprets the condition language the file documents. A rule file that uses
an unknown operator, refers to a rule defined later or to an unknown source is
refused at load time, not at the first patient it would have applied to.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

__all__ = ["GUIDELINES_PATH", "Guidelines", "load_guidelines"]

GUIDELINES_PATH = Path(__file__).with_name("guidelines.yaml")
RISK_LEVELS = ("low", "moderate", "high")
COMPARATORS = {"ge": float.__ge__, "gt": float.__gt__, "le": float.__le__, "lt": float.__lt__}
OPERATORS = ("all", "any", "not", "feature", "missing", "condition", "condition_risk_factor", "risk_level", "fired")


@dataclass(frozen=True)
class Context:
    """What a rule may look at: harmonised features, ICD-10 codes of the patient's conditions, the risk level."""

    features: Mapping[str, Any]
    conditions: Sequence[str]
    risk_level: str
    fired: set[str]


@dataclass(frozen=True)
class Guidelines:
    version: str
    sources: dict[str, str]
    decimals: dict[str, int]
    moderate_fraction: float
    risk_factor_conditions: tuple[str, ...]
    rules: tuple[dict[str, Any], ...]
    graph: dict[str, Any]

    def risk_level(self, probability: float, threshold: float) -> str:
        if probability >= threshold:
            return "high"
        return "moderate" if probability >= self.moderate_fraction * threshold else "low"

    def _value(self, features: Mapping[str, Any], name: str) -> float | None:
        value = features.get(name)
        if value is None:
            return None
        decimals = self.decimals.get(name)
        return round(float(value), decimals) if decimals is not None else float(value)

    def holds(self, condition: Mapping[str, Any], context: Context) -> bool:
        if "all" in condition:
            return all(self.holds(c, context) for c in condition["all"])
        if "any" in condition:
            return any(self.holds(c, context) for c in condition["any"])
        if "not" in condition:
            return not self.holds(condition["not"], context)
        if "feature" in condition:
            value = self._value(context.features, condition["feature"])
            return value is not None and all(COMPARATORS[op](value, float(limit))
                                             for op, limit in condition.items() if op in COMPARATORS)
        if "missing" in condition:
            return context.features.get(condition["missing"]) is None
        if "condition" in condition:
            return any(code.startswith(tuple(condition["condition"])) for code in context.conditions)
        if "condition_risk_factor" in condition:
            return any(code.startswith(self.risk_factor_conditions) for code in context.conditions)
        if "risk_level" in condition:
            return context.risk_level in condition["risk_level"]
        if "fired" in condition:
            return bool(context.fired & set(condition["fired"]))
        raise ValueError(f"unknown rule condition {sorted(condition)}")

    def _evidence(self, source: str) -> str:
        return self.sources[source]

    def next_steps(self, features: Mapping[str, Any], conditions: Sequence[str], risk_level: str) -> list[dict[str, str]]:
        """Fired rules in file order, then the knowledge-graph screenings they activate."""
        context = Context(features, conditions, risk_level, set())
        steps: list[dict[str, str]] = []
        for rule in self.rules:
            if self.holds(rule["when"], context):
                context.fired.add(rule["id"])
                steps.append({"id": rule["id"], "text": " ".join(str(rule["text"]).split()),
                              "evidence": self._evidence(rule["evidence"])})
        if context.fired & set(self.graph.get("activated_by") or ()):
            steps.extend(self.graph_steps())
        return steps

    def graph_steps(self) -> list[dict[str, str]]:
        """start -has_complication-> complication -screened_by-> test, one step per test."""
        nodes = self.graph["nodes"]
        edges = self.graph["edges"]
        steps = []
        for source, relation, complication in edges:
            if source != self.graph["start"] or relation != "has_complication":
                continue
            for origin, kind, test in edges:
                if origin == complication and kind == "screened_by":
                    node = nodes[test]
                    steps.append({
                        "id": f"kg:{source}/{complication}/{test}",
                        "text": f"{nodes[complication]['label']}: " + " ".join(str(node["text"]).split()),
                        "evidence": self._evidence(node["evidence"]),
                    })
        return steps


def _check_condition(condition: Any, known_rules: set[str], where: str) -> None:
    if not isinstance(condition, Mapping) or not condition:
        raise ValueError(f"{where}: a condition must be a non-empty mapping")
    operator = next((op for op in OPERATORS if op in condition), None)
    if operator is None:
        raise ValueError(f"{where}: unknown rule condition {sorted(condition)}")
    if operator in ("all", "any"):
        for item in condition[operator]:
            _check_condition(item, known_rules, where)
    elif operator == "not":
        _check_condition(condition["not"], known_rules, where)
    elif operator == "feature":
        ops = set(condition) - {"feature"}
        if not ops or not ops <= set(COMPARATORS):
            raise ValueError(f"{where}: a feature test needs one of {sorted(COMPARATORS)}")
    elif operator == "fired":
        unknown = set(condition["fired"]) - known_rules
        if unknown:
            raise ValueError(f"{where}: refers to rules not defined above it: {sorted(unknown)}")
    elif operator == "risk_level" and not set(condition["risk_level"]) <= set(RISK_LEVELS):
        raise ValueError(f"{where}: risk levels are {RISK_LEVELS}")


@lru_cache(maxsize=4)
def load_guidelines(path: Path = GUIDELINES_PATH) -> Guidelines:
    raw = yaml.safe_load(Path(path).read_text())
    sources = {str(k): " ".join(str(v).split()) for k, v in raw["sources"].items()}
    known: set[str] = set()
    for rule in raw["rules"]:
        where = f"{path.name} rule {rule.get('id')!r}"
        if rule["id"] in known:
            raise ValueError(f"{where}: duplicate id")
        if rule["evidence"] not in sources:
            raise ValueError(f"{where}: unknown source {rule['evidence']!r}")
        _check_condition(rule["when"], known, where)
        known.add(rule["id"])
    graph = raw.get("knowledge_graph") or {}
    for node in (graph.get("nodes") or {}).values():
        if "evidence" in node and node["evidence"] not in sources:
            raise ValueError(f"{path.name}: knowledge graph cites an unknown source {node['evidence']!r}")
    for edge in graph.get("edges") or []:
        if len(edge) != 3 or edge[0] not in graph["nodes"] or edge[2] not in graph["nodes"]:
            raise ValueError(f"{path.name}: knowledge graph edge {edge} names unknown nodes")
    if set(graph.get("activated_by") or ()) - known:
        raise ValueError(f"{path.name}: knowledge graph activated by unknown rules")
    return Guidelines(
        version=str(raw["version"]),
        sources=sources,
        decimals={str(k): int(v) for k, v in (raw.get("comparison_decimals") or {}).items()},
        moderate_fraction=float(raw["risk_levels"]["moderate_from_fraction_of_threshold"]),
        risk_factor_conditions=tuple(str(c) for c in raw.get("risk_factor_conditions") or ()),
        rules=tuple(raw["rules"]),
        graph=graph,
    )
