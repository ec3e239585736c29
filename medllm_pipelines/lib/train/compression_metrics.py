"""Measuring a model variant: file size, single-thread CPU latency, and metrics overall and per subgroup.

Shared by compression and distillation (rows M7-M8): both compare a variant with its source on
the same rows, in metric points (1 point = 0.01 of a metric in [0, 1]).
"""

from __future__ import annotations

import tempfile
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from medllm_pipelines.lib.evaluate.metrics import binary_classification_metrics

SCORE_METRICS = ("roc_auc", "accuracy", "sensitivity", "specificity", "precision", "f1")
Runner = Callable[[np.ndarray], np.ndarray]  # float32 inputs -> raw network outputs (logits)


def state_dict_bytes(model: nn.Module) -> int:
    """Bytes of the saved weights (torch.save of the state dict): what a deployment ships."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "weights.pt"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # quantised tensors warn on save in torch 2.13
            torch.save(model.state_dict(), path)
        return path.stat().st_size


def parameter_count(model: nn.Module) -> int:
    return int(sum(p.numel() for p in model.parameters()))


@contextmanager
def single_thread() -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@dataclass(frozen=True)
class Latency:
    """Wall time of one call, single thread, after a warm-up."""

    p50_ms: float
    p95_ms: float
    calls: int
    batch_size: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def measure_latency(run: Runner, inputs: np.ndarray, *, calls: int = 200, batch_size: int = 1, warmup: int = 20) -> Latency:
    """p50/p95 of ``calls`` calls on consecutive ``batch_size``-row slices of ``inputs`` (cycled), one thread."""
    if len(inputs) == 0:
        raise ValueError("no inputs to time")
    batches = [inputs[(i * batch_size) % len(inputs):][:batch_size] for i in range(max(calls, 1))]
    batches = [b if len(b) == batch_size else inputs[:batch_size] for b in batches]
    timings = []
    with single_thread():
        for batch in batches[:warmup]:
            run(batch)
        for batch in batches:
            started = time.perf_counter()
            run(batch)
            timings.append(time.perf_counter() - started)
    p50, p95 = np.percentile(np.asarray(timings) * 1e3, [50, 95])
    return Latency(round(float(p50), 4), round(float(p95), 4), len(timings), min(batch_size, len(inputs)))


# ---------------------------------------------------------------------------------------------- metrics
def age_bands(age_years: pd.Series, edges: Sequence[float]) -> pd.Series:
    """Ages into coarse bands ("<40", "40-59", "60+" for edges 40, 60); missing ages are "unknown"."""
    edges = sorted(float(e) for e in edges)
    labels = [f"<{edges[0]:g}"] + [f"{lo:g}-{hi - 1:g}" for lo, hi in zip(edges, edges[1:])] + [f"{edges[-1]:g}+"]
    bands = pd.cut(pd.to_numeric(age_years, errors="coerce"), [-np.inf, *edges, np.inf], right=False, labels=labels)
    return bands.astype(object).where(bands.notna(), "unknown").astype(str)


def subgroup_frame(rows: pd.DataFrame, columns: Sequence[str], age_band_edges: Sequence[float],
                   patients: pd.DataFrame | None = None, id_column: str = "patient_pseudonym") -> pd.DataFrame:
    """One column per subgroup attribute for ``rows`` (same index): sex, age band, institution.

    The features table holds sex and age_years (an age band's midpoint); the institution comes from
    the de-identified patients table when given (a person seen at several: the first by name, as
    the dataset card counts them). An attribute nobody has is left out.
    """
    groups = pd.DataFrame(index=rows.index)
    wanted = tuple(columns)
    if "sex" in wanted and "sex" in rows.columns:
        groups["sex"] = rows["sex"].fillna("unknown").astype(str)
    if "age_band" in wanted and "age_years" in rows.columns:
        groups["age_band"] = age_bands(rows["age_years"], age_band_edges)
    if "institution" in wanted:
        source = rows if "institution" in rows.columns else None
        if source is None and patients is not None and {"institution", id_column} <= set(patients.columns):
            first = patients.sort_values([id_column, "institution"]).drop_duplicates(id_column).set_index(id_column)["institution"]
            groups["institution"] = rows[id_column].map(first).fillna("unknown").astype(str)
        elif source is not None:
            groups["institution"] = source["institution"].fillna("unknown").astype(str)
    return groups


def _score_metrics(labels: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, float | None]:
    computed = binary_classification_metrics(labels, scores, threshold)
    return {name: computed.get(name) for name in SCORE_METRICS}


@dataclass(frozen=True)
class GroupedMetrics:
    """Metrics overall and per subgroup value; subgroups under min_rows carry their n only."""

    overall: dict[str, float | None]
    n: int
    subgroups: dict[str, dict[str, dict[str, Any]]]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def grouped_metrics(labels: np.ndarray, scores: np.ndarray, groups: pd.DataFrame | None, *, threshold: float = 0.5,
                    min_rows: int = 10) -> GroupedMetrics:
    labels = np.asarray(labels).astype(np.int64)
    scores = np.asarray(scores, dtype=np.float64)
    subgroups: dict[str, dict[str, dict[str, Any]]] = {}
    for column in ([] if groups is None else groups.columns):
        values = groups[column].to_numpy()
        subgroups[column] = {}
        for value in sorted(set(values), key=str):
            mask = values == value
            entry: dict[str, Any] = {"n": int(mask.sum())}
            if mask.sum() >= min_rows:
                entry.update(_score_metrics(labels[mask], scores[mask], threshold))
            subgroups[column][str(value)] = entry
    return GroupedMetrics(_score_metrics(labels, scores, threshold), int(len(labels)), subgroups)


def points_lost(before: Mapping[str, Any], after: Mapping[str, Any], names: Iterable[str]) -> dict[str, float | None]:
    """(before - after) x 100 per metric: positive is worse; None where either side is undefined."""
    lost = {}
    for name in names:
        b, a = before.get(name), after.get(name)
        lost[name] = None if b is None or a is None else round((float(b) - float(a)) * 100.0, 4)
    return lost


def binary_scores(outputs: np.ndarray) -> np.ndarray:
    """Probability of the positive class from raw outputs: sigmoid of one logit, softmax column 1 of two or more."""
    outputs = np.asarray(outputs, dtype=np.float64)
    if outputs.ndim == 2 and outputs.shape[1] >= 2:
        shifted = np.exp(outputs - outputs.max(axis=1, keepdims=True))
        return shifted[:, 1] / shifted.sum(axis=1)
    return 1.0 / (1.0 + np.exp(-outputs.reshape(len(outputs))))


def markdown_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """Rows of one shape as a Markdown table (numbers to 4 significant digits), for asset metadata."""
    if not rows:
        return ""
    headers = list(rows[0])

    def cell(value: Any) -> str:
        return f"{value:.4g}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(row.get(h)) for h in headers) + " |" for row in rows]
    return "\n".join(lines)
