"""What a family adapter hands the evaluation engine (issue 12): a registered model's outputs on its splits.

Every registered model is evaluated the same way (``lib/evaluate/engine.py``): metrics per task with bootstrap
intervals, paired deltas against the spec's baseline, curves, subgroup metrics, membership inference and the
promotion gate. What differs per family is how the model is loaded and scored, and which extra analyses apply
(attacks, explanations, canaries): an adapter (``lib/evaluate/adapters/<family>.py``) loads the model the training
record names, scores every row of the train, validation and test splits, scores the spec's baseline on the same
rows, and returns a `ModelOutputs`. The engine never loads a model.

Per task, ``y_true``, ``model`` and ``baseline`` hold (rows aligned with ``frame``):

=============  =====================  =====================================================================
task           y_true                 model / baseline
=============  =====================  =====================================================================
binary         0/1                    P(positive), shape (n,)
multiclass     class index 0..K-1     class probabilities, shape (n, K), rows sum to 1
regression     observed value         predicted value, shape (n,)
segmentation   unused (zeros)         per image: dice, iou, hd95, shape (n, 3); NaN where undefined
spans          unused (zeros)         per text: true positives, false positives, false negatives, shape (n, 3)
notes          unused (zeros)         per note: field tp, fp, fn, ICD-10 exact match (0/1, NaN: no code in
                                      the gold), ROUGE-L F, shape (n, 5)
=============  =====================  =====================================================================

A baseline that is not computed on some rows (e.g. train) holds NaN there; the engine compares on test rows.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

TASKS = ("binary", "multiclass", "regression", "segmentation", "spans", "notes")
SPLITS = ("train", "validation", "test")
GROUP_COLUMNS = ("sex", "age_band", "institution")
REQUIRED_COLUMNS = ("example_id", "split", "patient_pseudonym", "loss")
CASE_COLUMNS = {
    "segmentation": ("dice", "iou", "hd95"),
    "spans": ("tp", "fp", "fn"),
    "notes": ("field_tp", "field_fp", "field_fn", "icd10_exact", "rouge_l"),
}
# spec task (lib/curate/specs/*.yaml) -> evaluation task
SPEC_TASKS = {
    "binary_classification": "binary",
    "multiclass_classification": "multiclass",
    "regression": "regression",
    "binary_segmentation": "segmentation",
    "token_classification": "spans",
    "text_generation": "notes",
}


@dataclass(frozen=True)
class Table:
    """A table of a report section: a title, column headers and rows of plain values."""

    title: str
    headers: tuple[str, ...]
    rows: tuple[tuple[Any, ...], ...]

    def as_dict(self) -> dict[str, Any]:
        return {"title": self.title, "headers": list(self.headers), "rows": [list(r) for r in self.rows]}


@dataclass(frozen=True)
class Figure:
    """A PNG figure of a report section (HTML embeds it, the PDF draws it)."""

    title: str
    png: bytes
    caption: str = ""


@dataclass(frozen=True)
class ReportSection:
    """A family-specific part of the report: robustness, explanations, canary exposure, public benchmarks, ...

    ``summary`` holds JSON-ready key values (shown as a table, kept in the report JSON and the asset
    metadata under ``key``); ``clause`` names the clause of the standard (and the REQUIREMENTS row) it serves.
    """

    key: str
    title: str
    clause: str
    summary: dict[str, Any] = field(default_factory=dict)
    tables: tuple[Table, ...] = ()
    figures: tuple[Figure, ...] = ()
    text: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"key": self.key, "title": self.title, "clause": self.clause, "summary": jsonable(self.summary),
                "tables": [t.as_dict() for t in self.tables], "figures": [f.title for f in self.figures],
                "text": self.text}


@dataclass(frozen=True)
class ModelOutputs:
    """A registered model's outputs on every row of its train, validation and test splits (see the module doc).

    ``frame`` holds one row per example: ``example_id``, ``split`` (train | validation | test),
    ``patient_pseudonym``, ``loss`` (the model's per-example loss, what membership inference reads; NaN where
    not defined) and, where the data holds them, the group columns ``sex``, ``age_band``, ``institution``
    (strings). ``gate_values`` are what the adapter measured for thresholds beyond the engine's, e.g.
    ``{"attack_accuracy": 0.71}`` at the spec's declared epsilon. ``limits`` are sentences the report lists
    under "limits of this evaluation".
    """

    task: str
    frame: pd.DataFrame
    y_true: np.ndarray
    model: np.ndarray
    model_name: str
    model_version: str
    baseline: np.ndarray | None = None
    baseline_name: str = ""
    class_names: tuple[str, ...] = ()
    sections: tuple[ReportSection, ...] = ()
    gate_values: dict[str, float | None] = field(default_factory=dict)
    limits: tuple[str, ...] = ()
    threshold_note: str = ""

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"unknown evaluation task {self.task!r}; choose one of {', '.join(TASKS)}")
        missing = [c for c in REQUIRED_COLUMNS if c not in self.frame.columns]
        if missing:
            raise ValueError(f"model outputs lack the columns {missing}")
        n = len(self.frame)
        if n == 0:
            raise ValueError("model outputs hold no rows")
        bad_splits = sorted(set(self.frame["split"].astype(str)) - set(SPLITS))
        if bad_splits:
            raise ValueError(f"unknown splits {bad_splits}; expected {SPLITS}")
        for name, array in (("y_true", self.y_true), ("model", self.model), ("baseline", self.baseline)):
            if array is not None and len(array) != n:
                raise ValueError(f"{name} has {len(array)} rows but the frame has {n}")
        expected = CASE_COLUMNS.get(self.task)
        if expected is not None:
            for name, array in (("model", self.model), ("baseline", self.baseline)):
                if array is not None and (np.ndim(array) != 2 or np.shape(array)[1] != len(expected)):
                    raise ValueError(f"{self.task}: {name} must have shape (n, {len(expected)}): {expected}")
        if self.task == "multiclass":
            if np.ndim(self.model) != 2:
                raise ValueError("multiclass: model must be a probability matrix (n, K)")
            if self.class_names and np.shape(self.model)[1] != len(self.class_names):
                raise ValueError("multiclass: class_names do not match the probability columns")

    def rows(self, split: str) -> np.ndarray:
        """Boolean mask of the rows of ``split``."""
        return (self.frame["split"].astype(str) == split).to_numpy()

    def groups(self, split: str) -> pd.DataFrame:
        """The group columns present (sex, age band, institution) on the rows of ``split``, as strings."""
        present = [c for c in GROUP_COLUMNS if c in self.frame.columns]
        frame = self.frame.loc[self.rows(split), present].copy()
        for column in present:
            frame[column] = frame[column].astype("string").fillna("unknown").astype(str)
        return frame.reset_index(drop=True)


def jsonable(value: Any) -> Any:
    """Plain JSON values: numpy scalars and arrays unwrapped, NaN and infinity as None, paths as text."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (np.floating, float)):
        number = float(value)
        return None if math.isnan(number) or math.isinf(number) else number
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    return value


AGE_BAND_EDGES = (40.0, 65.0)  # fairness bands: <40, 40-64, >=65 (deidentify/patients keeps 5-year bands)


def _band_low(band: Any) -> float:
    """``"55-59"`` -> 55.0, ``"90+"`` -> 90.0; NaN when unreadable."""
    text = str(band or "").strip()
    try:
        return float(text[:-1]) if text.endswith("+") else float(text.split("-")[0])
    except ValueError:
        return float("nan")


def coarse_age_band(band: Any, edges: tuple[float, ...] = AGE_BAND_EDGES) -> str:
    """A 5-year band of the de-identified patients table folded into the fairness bands (``"40-64"``)."""
    low = _band_low(band)
    if math.isnan(low):
        return "unknown"
    bounds = (-math.inf, *edges, math.inf)
    for start, end in zip(bounds, bounds[1:]):
        if start <= low < end:
            if start == -math.inf:
                return f"<{end:g}"
            return f">={start:g}" if end == math.inf else f"{start:g}-{end - 1:g}"
    return "unknown"


def person_groups(pseudonyms: pd.Series, patients: pd.DataFrame | None) -> pd.DataFrame:
    """Sex, fairness age band and institution per row, from the de-identified patients table (one row per
    person: the first institution in sort order); ``"unknown"`` where the person or the column is missing."""
    out = pd.DataFrame(index=pseudonyms.index)
    if patients is None or "patient_pseudonym" not in patients.columns:
        for column in GROUP_COLUMNS:
            out[column] = "unknown"
        return out
    order = [c for c in ("patient_pseudonym", "institution") if c in patients.columns]
    person = patients.sort_values(order).drop_duplicates("patient_pseudonym").set_index("patient_pseudonym")
    keys = pseudonyms.astype(str)
    out["sex"] = keys.map(person["sex"]).astype("string") if "sex" in person.columns else "unknown"
    out["age_band"] = (keys.map(person["age_band"]).map(coarse_age_band) if "age_band" in person.columns
                       else "unknown")
    out["institution"] = (keys.map(person["institution"]).astype("string") if "institution" in person.columns
                          else "unknown")
    return out.fillna("unknown").astype(str)
