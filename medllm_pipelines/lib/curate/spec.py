"""Model specs: versioned YAML files declaring scenario, task, target and data needs."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

SPECS_DIR = Path(__file__).with_name("specs")


@dataclass(frozen=True)
class ModelSpec:
    id: str
    version: str
    scenario: str
    task: str
    description: str
    target_icd10_category: str
    numeric_features: tuple[str, ...]
    categorical_features: tuple[str, ...]
    aggregation: str
    split_ratios: tuple[float, float, float]
    split_seed: int
    training: dict[str, Any]
    metrics: tuple[str, ...]
    baseline: str
    min_rows: int

    @property
    def feature_columns(self) -> list[str]:
        return [*self.numeric_features, *self.categorical_features]

    def as_metadata(self) -> dict[str, Any]:
        return {
            "model_spec": f"{self.id} v{self.version}",
            "scenario": self.scenario,
            "task": self.task,
            "target": f"ICD-10 {self.target_icd10_category}",
        }


@lru_cache(maxsize=None)
def load_spec(spec_id: str) -> ModelSpec:
    raw = yaml.safe_load((SPECS_DIR / f"{spec_id}.yaml").read_text())
    split = raw["split"]
    ratios = (float(split["train"]), float(split["validation"]), float(split["test"]))
    if abs(sum(ratios) - 1.0) > 1e-9:
        raise ValueError(f"spec {spec_id}: split ratios must sum to 1")
    return ModelSpec(
        id=raw["id"],
        version=str(raw["version"]),
        scenario=raw["scenario"],
        task=raw["task"],
        description=" ".join(str(raw.get("description", "")).split()),
        target_icd10_category=raw["target"]["icd10_category"],
        numeric_features=tuple(raw["inputs"]["numeric"]),
        categorical_features=tuple(raw["inputs"]["categorical"]),
        aggregation=raw["inputs"].get("aggregation", "median"),
        split_ratios=ratios,
        split_seed=int(split["seed"]),
        training=dict(raw["training"]),
        metrics=tuple(raw["metrics"]),
        baseline=raw["baseline"],
        min_rows=int(raw["data_needs"]["min_rows"]),
    )
