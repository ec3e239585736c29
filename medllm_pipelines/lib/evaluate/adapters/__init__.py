"""Family adapters of the evaluation engine: load a registered model, score its splits, add the family's analyses.

Each adapter module exposes

- ``dataset(spec, tables) -> SplitDataset``: the dataset joined with its splits exactly as the training asset built it
  (so that its version finds the training record), from the warehouse tables the evaluate asset read
  (``tables`` maps the names of `ADAPTERS`' table lists to frames);
- ``outputs(request) -> ModelOutputs``: every row of train, validation and test scored by the model and by the
  spec's baseline, with per-example losses, groups, and the family's report sections (attacks, explanations,
  canaries) and gate values.

The engine (``lib/evaluate/engine.py``) never loads a model; the adapters never decide the gate.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import pandas as pd

from medllm_pipelines.lib.curate.dataset import SplitDataset
from medllm_pipelines.lib.curate.spec import DEMO_SIZE, ModelSpec
from medllm_pipelines.lib.evaluate.gate import GatePolicy
from medllm_pipelines.lib.train.store import ModelStore


@dataclass(frozen=True)
class EvaluationRequest:
    """What an adapter gets: the spec and its gate policy, the training record of the model to evaluate (model_dir,
    registered_model, registered_version, mlflow ids), the dataset it was trained on, the tables read, the model
    store, folders (``images``: de-identified pixel arrays; the text models carry their tokenizer in their model
    folder), the training size (demo | full) and a seed."""

    spec: ModelSpec
    policy: GatePolicy | None
    record: dict[str, Any]
    dataset: SplitDataset
    tables: Mapping[str, pd.DataFrame]
    store: ModelStore
    folders: Mapping[str, Path] = field(default_factory=dict)
    size: str = DEMO_SIZE
    seed: int = 0


@dataclass(frozen=True)
class AdapterInfo:
    """Which module evaluates a spec and which warehouse tables (names -> the defs' asset keys) it reads."""

    module: str
    tables: tuple[str, ...]

    def load(self) -> ModuleType:
        return importlib.import_module(f"medllm_pipelines.lib.evaluate.adapters.{self.module}")


# spec id -> adapter. Table names: dataset, splits, patients (deidentify/patients), vitals (deidentify/vital_signs),
# observations (deidentify/observations: the per-person year a temporal split needs).
ADAPTERS: dict[str, AdapterInfo] = {
    "t2d_risk": AdapterInfo("tabular", ("dataset", "splits", "patients", "observations")),
    "lesion_classifier": AdapterInfo("imaging", ("dataset", "splits", "patients")),
    "lesion_segmentation": AdapterInfo("imaging", ("dataset", "splits", "patients")),
    "deterioration": AdapterInfo("sequence", ("dataset", "splits", "vitals", "patients")),
    "vitals_forecast": AdapterInfo("sequence", ("dataset", "splits", "vitals", "patients")),
    "triage": AdapterInfo("text", ("dataset", "splits", "patients")),
    "clinical_entities": AdapterInfo("text", ("dataset", "splits", "patients")),
    "note_generator": AdapterInfo("notes", ("dataset", "splits", "patients")),
}


def adapter_for(spec_id: str) -> AdapterInfo:
    try:
        return ADAPTERS[spec_id]
    except KeyError:
        raise KeyError(f"no evaluation adapter for spec {spec_id!r}; known: {sorted(ADAPTERS)}") from None
