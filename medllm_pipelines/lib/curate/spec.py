"""Model specs: versioned YAML files declaring scenario, task, target, inputs, metrics and data needs.

Clause 5.2.1.1 (row M1): every model is declared by a spec file in
``lib/curate/specs``; the curate stage builds exactly the dataset a spec asks
for (labelled set, inputs, split strategy, preprocessing) and shows the spec
in the metadata of every asset built from it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from medllm_pipelines.lib.curate.preprocessing import PreprocessingSpec
from medllm_pipelines.lib.curate.splits import GROUPED_STRATIFIED, SplitConfig

SPECS_DIR = Path(__file__).with_name("specs")
DEMO_SIZE = "demo"
FULL_SIZE = "full"
TRAINING_SIZES = (DEMO_SIZE, FULL_SIZE)


@dataclass(frozen=True)
class DataNeeds:
    """Whether a dataset holds the rows a spec needs to train on; ``reason`` names the spec and both counts."""

    spec_id: str
    rows_needed: int
    rows: int

    @property
    def met(self) -> bool:
        return self.rows >= self.rows_needed

    @property
    def reason(self) -> str:
        return "" if self.met else f"spec {self.spec_id} needs {self.rows_needed} rows, has {self.rows}"

    def as_metadata(self) -> dict[str, Any]:
        return {"data_needs_met": self.met, "min_rows": self.rows_needed, "rows_available": self.rows,
                **({"reason": self.reason} if not self.met else {})}


@dataclass(frozen=True)
class ModelSpec:
    id: str
    version: str
    scenario: str
    task: str
    description: str
    target_icd10_category: str | None
    numeric_features: tuple[str, ...]
    categorical_features: tuple[str, ...]
    aggregation: str
    split_ratios: tuple[float, float, float]
    split_seed: int
    training: dict[str, Any]
    metrics: tuple[str, ...]
    baseline: str
    min_rows: int
    target: dict[str, Any] = field(default_factory=dict)
    dataset: dict[str, Any] = field(default_factory=dict)
    split: dict[str, Any] = field(default_factory=dict)
    preprocessing_raw: dict[str, Any] | None = None
    data_needs: dict[str, Any] = field(default_factory=dict)
    # The research project whose ethics approval must cover this spec (clause 4.1.2, row E1).
    project: str = ""
    # The network: ``family`` (mlp, unet, cnn, lstm, ...) and its architecture hyper-parameters.
    network: dict[str, Any] = field(default_factory=dict)
    # Overrides of ``training`` (and of ``network`` under its ``network`` key) for the full size.
    full: dict[str, Any] = field(default_factory=dict)
    # Adapter settings when a pretrained base is fine-tuned (LoRA, with its own ``full`` overrides).
    lora: dict[str, Any] = field(default_factory=dict)
    # Evaluation thresholds of the promotion gate (issue 12, lib/evaluate/gate.py); empty: the gate fails closed.
    evaluation: dict[str, Any] = field(default_factory=dict)

    @property
    def network_family(self) -> str | None:
        """The declared network family, None when the spec declares no network (a dataset-only spec)."""
        family = self.network.get("family")
        return None if family is None else str(family)

    def training_for(self, size: str = DEMO_SIZE) -> dict[str, Any]:
        """The training block at ``size``: "demo" is ``training`` as written, "full" applies the ``full`` overrides.

        ``training`` holds the demo-size defaults (seconds on a laptop core, what
        tests and ``make demo`` use); ``full`` only the keys production changes.
        """
        if size not in TRAINING_SIZES:
            raise ValueError(f"spec {self.id}: training size must be one of {', '.join(TRAINING_SIZES)}, got {size!r}")
        if size == DEMO_SIZE:
            return dict(self.training)
        return {**self.training, **{key: value for key, value in self.full.items() if key != "network"}}

    def network_for(self, size: str = DEMO_SIZE) -> dict[str, Any]:
        """The network block at ``size`` (``full.network`` overrides it at full size), ``family`` included."""
        if size not in TRAINING_SIZES:
            raise ValueError(f"spec {self.id}: training size must be one of {', '.join(TRAINING_SIZES)}, got {size!r}")
        overrides = dict(self.full.get("network") or {}) if size == FULL_SIZE else {}
        return {**self.network, **overrides}

    def needs_met_by(self, rows: int) -> DataNeeds:
        """``min_rows`` against a dataset of ``rows``: the data stages run whatever the count, training only above it."""
        return DataNeeds(self.id, self.min_rows, int(rows))

    @property
    def split_config(self) -> SplitConfig:
        """How the curate stage splits this spec's dataset (grouped, stratified, optional time/external/k-fold)."""
        return SplitConfig(
            ratios=self.split_ratios,
            seed=self.split_seed,
            strategy=str(self.split.get("strategy", GROUPED_STRATIFIED)),
            group_by=str(self.split.get("group_by", "patient_pseudonym")),
            stratify_by=self.split.get("stratify_by", "label"),
            together=tuple(self.split.get("together", ())),
            time_column=self.split.get("time_column"),
            external_institutions=tuple(self.split.get("external_institutions", ())),
            k_folds=int(self.split.get("k_folds", 0)),
        )

    @property
    def preprocessing(self) -> PreprocessingSpec | None:
        if not self.preprocessing_raw:
            return None
        return PreprocessingSpec.from_dict(self.preprocessing_raw, self.numeric_features, self.categorical_features)

    def describe(self) -> dict[str, Any]:
        """The whole declaration (scenario, task, target, inputs, metrics, data needs) for metadata and cards."""
        return {
            "id": self.id,
            "version": self.version,
            "scenario": self.scenario,
            "task": self.task,
            "description": self.description,
            "target": self.target,
            "inputs": {"numeric": list(self.numeric_features), "categorical": list(self.categorical_features)},
            "dataset": self.dataset,
            "split": self.split_config.as_dict(),
            "preprocessing": self.preprocessing.as_dict() if self.preprocessing else None,
            "metrics": list(self.metrics),
            "baseline": self.baseline,
            "data_needs": self.data_needs,
        }

    @property
    def feature_columns(self) -> list[str]:
        return [*self.numeric_features, *self.categorical_features]

    def as_metadata(self) -> dict[str, Any]:
        return {
            "model_spec": f"{self.id} v{self.version}",
            "scenario": self.scenario,
            "task": self.task,
            "target": f"ICD-10 {self.target_icd10_category}" if self.target_icd10_category else str(self.target.get("kind", "")),
        }


def spec_ids() -> list[str]:
    return sorted(path.stem for path in SPECS_DIR.glob("*.yaml"))


@cache
def load_spec(spec_id: str) -> ModelSpec:
    raw = yaml.safe_load((SPECS_DIR / f"{spec_id}.yaml").read_text())
    split = raw["split"]
    ratios = (float(split["train"]), float(split["validation"]), float(split["test"]))
    if abs(sum(ratios) - 1.0) > 1e-9:
        raise ValueError(f"spec {spec_id}: split ratios must sum to 1")
    inputs = raw.get("inputs") or {}
    target = dict(raw.get("target") or {})
    data_needs = dict(raw.get("data_needs") or {})
    for block in ("network", "training", "full", "lora", "evaluation"):
        if raw.get(block) is not None and not isinstance(raw[block], dict):
            raise ValueError(f"spec {spec_id}: {block} must be a mapping, got {type(raw[block]).__name__}")
    if (raw.get("full") or {}).get("network") is not None and not isinstance(raw["full"]["network"], dict):
        raise ValueError(f"spec {spec_id}: full.network must be a mapping")
    spec = ModelSpec(
        id=raw["id"],
        version=str(raw["version"]),
        scenario=raw["scenario"],
        task=raw["task"],
        description=" ".join(str(raw.get("description", "")).split()),
        target_icd10_category=target.get("icd10_category"),
        numeric_features=tuple(inputs.get("numeric") or ()),
        categorical_features=tuple(inputs.get("categorical") or ()),
        aggregation=inputs.get("aggregation", "median"),
        split_ratios=ratios,
        split_seed=int(split["seed"]),
        training=dict(raw.get("training") or {}),
        metrics=tuple(raw["metrics"]),
        baseline=str(raw.get("baseline", "none")),
        min_rows=int(data_needs.get("min_rows", 1)),
        target=target,
        dataset=dict(raw.get("dataset") or {}),
        split={k: v for k, v in split.items() if k not in ("train", "validation", "test", "seed")},
        preprocessing_raw=raw.get("preprocessing"),
        data_needs=data_needs,
        project=str(raw.get("project", "")),
        network=dict(raw.get("network") or {}),
        full=dict(raw.get("full") or {}),
        lora=dict(raw.get("lora") or {}),
        evaluation=dict(raw.get("evaluation") or {}),
    )
    _ = (spec.split_config, spec.preprocessing)  # both validate their declaration
    return spec
