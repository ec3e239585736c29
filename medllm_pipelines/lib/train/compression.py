"""Compressing a trained network and proving what it cost (issue 11 item 4, row M7).

Generic over ``nn.Module``: pruning (global L1 magnitude, per-layer L2 structured) made permanent,
int8 dynamic quantisation (Linear, LSTM, GRU), int8 static post-training quantisation with
calibration for CNNs, and ONNX export run with onnxruntime. Each variant gets a
`CompressionReport`: file size, single-thread CPU latency p50/p95, the spec's metrics before and
after overall and per subgroup (sex, age band, institution), the drop in points and whether it is
within the tolerance that ``configs/compression.yaml`` declares for the spec.

Static int8 uses torch's FX graph mode (``prepare_fx``/``convert_fx`` with the ``x86`` qconfig):
in torch 2.13 the export-based PT2E flow has moved out of torch into ``torchao`` (not installed),
eager mode needs QuantStub/fusion written into each architecture, while FX traces MONAI's
ResNet/DenseNet as they are, fuses conv-bn-relu itself and runs on fbgemm/oneDNN kernels here
(measured 16 -> 2 ms for a 2D ResNet-18 at 64x64). torch marks ``torch.ao.quantization`` as
deprecated; its warning is silenced here and the move to torchao is noted in docs/models_compression.md.
"""

from __future__ import annotations

import copy
import logging
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import yaml
from torch import nn
from torch.nn.utils import prune

from medllm_pipelines.lib.train.compression_metrics import (
    SCORE_METRICS,
    GroupedMetrics,
    Latency,
    Runner,
    binary_scores,
    grouped_metrics,
    measure_latency,
    points_lost,
    state_dict_bytes,
    subgroup_frame,
)

CONFIG_PATH = Path(__file__).with_name("configs") / "compression.yaml"
PRUNABLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
DYNAMIC_QUANTISABLE = {nn.Linear, nn.LSTM, nn.GRU}
VARIANTS = ("pruned_l1", "pruned_structured", "int8_dynamic", "int8_static", "onnx")
FAMILY_OF_VARIANT = {"pruned_l1": "pruned", "pruned_structured": "pruned", "int8_dynamic": "quantised",
                     "int8_static": "quantised"}  # onnx keeps the base family: an fp32 export, not a compression
ONNX_ATOL = 1e-4
ONNX_RTOL = 1e-3


# ----------------------------------------------------------------------------------------------- config
@dataclass(frozen=True)
class CompressionConfig:
    """One spec's entry of configs/compression.yaml, with the file's version."""

    spec_id: str
    version: str
    base_family: str
    variants: tuple[str, ...]
    tolerance_points: float
    gate_metrics: tuple[str, ...]
    evaluation_split: str = "test"
    l1_amount: float = 0.3
    structured_amount: float = 0.25
    latency_calls: int = 200
    latency_batch_size: int = 1
    calibration_batches: int = 8
    subgroup_columns: tuple[str, ...] = ("sex", "age_band", "institution")
    age_band_edges: tuple[float, ...] = (40.0, 60.0)
    subgroup_min_rows: int = 10
    distillation: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        unknown = [v for v in self.variants if v not in VARIANTS]
        if unknown:
            raise ValueError(f"compression config of spec {self.spec_id}: unknown variants {unknown}; choose from {list(VARIANTS)}")
        if self.tolerance_points < 0 or not 0 <= self.l1_amount < 1 or not 0 <= self.structured_amount < 1:
            raise ValueError(f"compression config of spec {self.spec_id}: tolerance must be >= 0 and amounts in [0, 1)")

    def as_metadata(self) -> dict[str, Any]:
        return {"compression_config_version": self.version, "tolerance_points": self.tolerance_points,
                "gate_metrics": list(self.gate_metrics), "variants": list(self.variants),
                "evaluation_split": self.evaluation_split}


@cache
def load_compression_config(spec_id: str, path: str | Path = CONFIG_PATH) -> CompressionConfig:
    """The spec's compression entry; a spec without one is an error naming the file."""
    raw = yaml.safe_load(Path(path).read_text())
    entry = (raw.get("specs") or {}).get(spec_id)
    if entry is None:
        raise KeyError(f"spec {spec_id} has no entry in {path}")
    pruning, latency, subgroups = entry.get("pruning") or {}, entry.get("latency") or {}, entry.get("subgroups") or {}
    return CompressionConfig(
        spec_id=spec_id, version=str(raw["version"]), base_family=str(entry["base_family"]),
        variants=tuple(entry["variants"]), tolerance_points=float(entry["tolerance_points"]),
        gate_metrics=tuple(entry.get("gate_metrics", ("roc_auc",))),
        evaluation_split=str(entry.get("evaluation_split", "test")),
        l1_amount=float(pruning.get("l1_amount", 0.3)), structured_amount=float(pruning.get("structured_amount", 0.25)),
        latency_calls=int(latency.get("calls", 200)), latency_batch_size=int(latency.get("batch_size", 1)),
        calibration_batches=int(entry.get("calibration_batches", 8)),
        subgroup_columns=tuple(subgroups.get("columns", ("sex", "age_band", "institution"))),
        age_band_edges=tuple(float(e) for e in subgroups.get("age_band_edges", (40, 60))),
        subgroup_min_rows=int(subgroups.get("min_rows", 10)),
        distillation=dict(entry.get("distillation") or {}),
    )


# ---------------------------------------------------------------------------------------------- pruning
def prunable_layers(model: nn.Module) -> list[nn.Module]:
    return [module for module in model.modules() if isinstance(module, PRUNABLE)]


def weight_sparsity(model: nn.Module) -> float:
    """Share of zero weights over every Linear/Conv layer."""
    weights = [layer.weight.detach() for layer in prunable_layers(model)]
    total = sum(w.numel() for w in weights)
    return float(sum(int((w == 0).sum()) for w in weights) / total) if total else 0.0


def prune_magnitude(model: nn.Module, amount: float) -> nn.Module:
    """A copy with the smallest ``amount`` of all Linear/Conv weights (global L1) zeroed, made permanent."""
    pruned = copy.deepcopy(model).eval()
    parameters = [(layer, "weight") for layer in prunable_layers(pruned)]
    if parameters and amount > 0:
        prune.global_unstructured(parameters, pruning_method=prune.L1Unstructured, amount=amount)
        for layer, name in parameters:
            prune.remove(layer, name)
    return pruned


def prune_structured(model: nn.Module, amount: float, norm: int = 2) -> nn.Module:
    """A copy with ``amount`` of each layer's output units/channels (smallest Ln norm) zeroed, made permanent.

    The last layer is left whole: its outputs are the classes (or the one logit), and a pruned
    class would never be predicted again.
    """
    pruned = copy.deepcopy(model).eval()
    layers = prunable_layers(pruned)[:-1]
    if amount > 0:
        for layer in layers:
            prune.ln_structured(layer, "weight", amount=amount, n=norm, dim=0)
            prune.remove(layer, "weight")
    return pruned


# ----------------------------------------------------------------------------------------- quantisation
@contextmanager
def quiet_quantisation() -> Iterator[None]:
    """torch 2.13 warns on every torch.ao.quantization call that it moves to torchao; said once in the docs."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning, message=r".*torch\.ao\.quantization.*")
        warnings.filterwarnings("ignore", category=UserWarning, message=r".*quantize_per_tensor.*")
        warnings.filterwarnings("ignore", category=UserWarning, message=r".*quantized tensor creation.*")
        warnings.filterwarnings("ignore", message=r".*must run observer before calling calculate_qparams.*")
        warnings.filterwarnings("ignore", message=r".*reduce_range will be deprecated.*")
        yield


@contextmanager
def nondeterministic_kernels_allowed() -> Iterator[None]:
    """Quantised kernels (e.g. quantized_resize_cpu_) have no deterministic variant, and a Lightning training run
    with deterministic=True leaves ``torch.use_deterministic_algorithms(True)`` on for the whole process.
    Their outputs do not vary between runs on the CPU; the previous setting is restored after."""
    enabled, warn_only = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(False)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(enabled, warn_only=warn_only)


def quantise_dynamic_int8(model: nn.Module) -> nn.Module:
    """int8 weights, activations quantised per call: Linear, LSTM and GRU layers (fp32 elsewhere)."""
    with quiet_quantisation(), nondeterministic_kernels_allowed():
        return torch.ao.quantization.quantize_dynamic(copy.deepcopy(model).eval(), DYNAMIC_QUANTISABLE, dtype=torch.qint8)


def quantise_static_int8(model: nn.Module, example_input: torch.Tensor, calibration: Iterable[torch.Tensor],
                         backend: str = "x86") -> nn.Module:
    """int8 weights and activations (FX graph mode), activation ranges observed on ``calibration`` batches."""
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    with quiet_quantisation(), nondeterministic_kernels_allowed():
        torch.backends.quantized.engine = backend
        prepared = prepare_fx(copy.deepcopy(model).eval(), get_default_qconfig_mapping(backend), example_inputs=(example_input,))
        seen = 0
        with torch.inference_mode():
            for batch in calibration:
                prepared(batch)
                seen += 1
        if not seen:
            raise ValueError("static int8 quantisation needs at least one calibration batch")
        return convert_fx(prepared)


# ------------------------------------------------------------------------------------------------- ONNX
def export_onnx(model: nn.Module, example_input: torch.Tensor, path: str | Path) -> Path:
    """The network as ONNX (torch.export-based exporter, onnxscript), the batch dimension left dynamic."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    exporter_log = logging.getLogger("torch.onnx")
    previous = exporter_log.level
    exporter_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(copy.deepcopy(model).eval(), (example_input,), str(path), dynamo=True,
                              dynamic_shapes=({0: torch.export.Dim("batch", min=1)},), verbose=False, external_data=False,
                              input_names=["features"], output_names=["logits"])
    finally:
        exporter_log.setLevel(previous)
    return path


def onnx_runner(path: str | Path, threads: int = 1) -> Runner:
    """An onnxruntime CPU session (``threads`` intra-op threads) as a numpy -> numpy function."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name

    def run(inputs: np.ndarray) -> np.ndarray:
        return session.run(None, {input_name: np.ascontiguousarray(inputs, dtype=np.float32)})[0]

    return run


def torch_runner(model: nn.Module) -> Runner:
    model = model.eval()

    def run(inputs: np.ndarray) -> np.ndarray:
        # quantised kernels have no deterministic variant: a Lightning training earlier in the process must not break them
        with torch.inference_mode(), nondeterministic_kernels_allowed():
            return model(torch.from_numpy(np.ascontiguousarray(inputs, dtype=np.float32))).numpy()

    return run


def compare_outputs(expected: np.ndarray, actual: np.ndarray, atol: float = ONNX_ATOL, rtol: float = ONNX_RTOL) -> tuple[bool, float]:
    """(all close, max absolute difference): the ONNX runtime must compute what torch computes."""
    diff = float(np.max(np.abs(expected.astype(np.float64) - actual.astype(np.float64)))) if expected.size else 0.0
    return bool(np.allclose(actual, expected, atol=atol, rtol=rtol)), diff


# ---------------------------------------------------------------------------------------------- reports
@dataclass(frozen=True)
class CompressedVariant:
    """A built variant: how to run it, where its file is, and what it is."""

    name: str
    family: str
    run: Runner
    path: Path
    module: nn.Module | None = None  # the torch module (None for ONNX)
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class CompressionReport:
    """One variant against the uncompressed network: size, latency, metrics and the tolerance verdict."""

    spec_id: str
    variant: str
    family: str
    file_bytes: int
    baseline_file_bytes: int
    latency: Latency
    baseline_latency: Latency
    metrics_before: GroupedMetrics
    metrics_after: GroupedMetrics
    tolerance_points: float
    gate_metrics: tuple[str, ...]
    config_version: str
    details: dict[str, Any] = field(default_factory=dict)
    failure: str | None = None  # why the variant is refused regardless of metrics (ONNX outputs differ)

    @property
    def drop_points(self) -> dict[str, float | None]:
        return points_lost(self.metrics_before.overall, self.metrics_after.overall, SCORE_METRICS)

    @property
    def subgroup_drop_points(self) -> dict[str, dict[str, dict[str, float | None]]]:
        drops: dict[str, dict[str, dict[str, float | None]]] = {}
        for column, values in self.metrics_before.subgroups.items():
            after = self.metrics_after.subgroups.get(column, {})
            drops[column] = {value: points_lost(before, after.get(value, {}), self.gate_metrics)
                             for value, before in values.items() if "roc_auc" in before}
        return drops

    @property
    def within_tolerance(self) -> bool:
        if self.failure:
            return False
        drops = self.drop_points
        for name in self.gate_metrics:
            if self.metrics_before.overall.get(name) is None:
                continue  # undefined before (one class): nothing to lose
            if drops[name] is None or drops[name] > self.tolerance_points + 1e-9:
                return False
        return True

    @property
    def speedup_p50(self) -> float:
        return round(self.baseline_latency.p50_ms / self.latency.p50_ms, 3) if self.latency.p50_ms > 0 else float("nan")

    @property
    def size_ratio(self) -> float:
        return round(self.file_bytes / self.baseline_file_bytes, 4) if self.baseline_file_bytes else float("nan")

    def verdict(self) -> str:
        if self.failure:
            return f"refused: {self.failure}"
        worst = {k: v for k, v in self.drop_points.items() if k in self.gate_metrics}
        state = "within" if self.within_tolerance else "outside"
        return f"{state} the tolerance of {self.tolerance_points:g} points (points lost: {worst})"

    def as_dict(self) -> dict[str, Any]:
        return {
            "spec_id": self.spec_id, "variant": self.variant, "family": self.family,
            "file_bytes": self.file_bytes, "baseline_file_bytes": self.baseline_file_bytes, "size_ratio": self.size_ratio,
            "latency": self.latency.as_dict(), "baseline_latency": self.baseline_latency.as_dict(),
            "speedup_p50": self.speedup_p50,
            "metrics_before": self.metrics_before.as_dict(), "metrics_after": self.metrics_after.as_dict(),
            "drop_points": self.drop_points, "subgroup_drop_points": self.subgroup_drop_points,
            "tolerance_points": self.tolerance_points, "gate_metrics": list(self.gate_metrics),
            "within_tolerance": self.within_tolerance, "verdict": self.verdict(), "failure": self.failure,
            "compression_config_version": self.config_version, "details": self.details,
        }

    def table_row(self) -> dict[str, Any]:
        """One flat row for the MLflow comparison table and the asset's Markdown table."""
        after, drops = self.metrics_after.overall, self.drop_points
        return {"variant": self.variant, "family": self.family, "file_bytes": self.file_bytes,
                "size_ratio": self.size_ratio, "p50_ms": self.latency.p50_ms, "p95_ms": self.latency.p95_ms,
                "speedup_p50": self.speedup_p50, "roc_auc": after.get("roc_auc"), "accuracy": after.get("accuracy"),
                "roc_auc_points_lost": drops.get("roc_auc"), "accuracy_points_lost": drops.get("accuracy"),
                "within_tolerance": self.within_tolerance}


# ------------------------------------------------------------------------------------------ the whole run
@dataclass(frozen=True)
class EvaluationData:
    """What every variant is judged on: inputs, labels, subgroup columns, a threshold, and calibration inputs."""

    inputs: np.ndarray
    labels: np.ndarray
    groups: pd.DataFrame | None = None
    threshold: float = 0.5
    calibration: np.ndarray | None = None  # training-split inputs for static int8 (never the evaluation split)
    scores: Callable[[np.ndarray], np.ndarray] = binary_scores


def build_variant(name: str, model: nn.Module, data: EvaluationData, config: CompressionConfig, out_dir: Path) -> CompressedVariant:
    """Build one named variant of ``model`` and save it under ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    example = torch.from_numpy(np.ascontiguousarray(data.inputs[:1], dtype=np.float32))
    details: dict[str, Any] = {"input_shape": list(data.inputs.shape[1:])}
    if name == "onnx":
        # two rows: with a batch of one torch.export specialises the batch dimension of an LSTM/GRU to 1
        pair = torch.from_numpy(np.ascontiguousarray(data.inputs[:2], dtype=np.float32))
        path = export_onnx(model, pair, out_dir / "model.onnx")
        return CompressedVariant(name, config.base_family, onnx_runner(path), path, None,
                                 {**details, "exporter": "torch.onnx (dynamo)", "runtime": "onnxruntime CPUExecutionProvider"})
    if name == "pruned_l1":
        module = prune_magnitude(model, config.l1_amount)
        details |= {"amount": config.l1_amount, "method": "global L1 unstructured"}
    elif name == "pruned_structured":
        module = prune_structured(model, config.structured_amount)
        details |= {"amount": config.structured_amount, "method": "L2 structured, output units/channels, last layer whole"}
    elif name == "int8_dynamic":
        module = quantise_dynamic_int8(model)
        details |= {"layers": sorted(c.__name__ for c in DYNAMIC_QUANTISABLE), "dtype": "qint8"}
    elif name == "int8_static":
        source = data.calibration if data.calibration is not None and len(data.calibration) else data.inputs
        batches = [torch.from_numpy(np.ascontiguousarray(b, dtype=np.float32))
                   for b in np.array_split(source, max(1, min(config.calibration_batches, len(source))))]
        module = quantise_static_int8(model, example, batches)
        details |= {"calibration_batches": len(batches), "calibration_rows": int(len(source)), "backend": "x86 (FX graph mode)"}
    else:
        raise ValueError(f"spec {config.spec_id}: unknown compression variant {name!r}; choose from {list(VARIANTS)}")
    if name.startswith("pruned"):
        details["weight_sparsity"] = round(weight_sparsity(module), 4)
    path = out_dir / "weights.pt"
    with quiet_quantisation():
        torch.save(module.state_dict(), path)
    return CompressedVariant(name, FAMILY_OF_VARIANT[name], torch_runner(module), path, module, details)


@dataclass(frozen=True)
class CompressionSuite:
    """Every variant of one model: the reports, and the variants themselves for logging and registration."""

    spec_id: str
    config: CompressionConfig
    reports: tuple[CompressionReport, ...]
    variants: tuple[CompressedVariant, ...]
    baseline_metrics: GroupedMetrics
    baseline_latency: Latency
    baseline_file_bytes: int
    n_evaluated: int

    @property
    def accepted(self) -> list[str]:
        return [r.variant for r in self.reports if r.within_tolerance]

    def as_dict(self) -> dict[str, Any]:
        return {"spec_id": self.spec_id, "config": self.config.as_metadata(), "n_evaluated": self.n_evaluated,
                "baseline": {"metrics": self.baseline_metrics.as_dict(), "latency": self.baseline_latency.as_dict(),
                             "file_bytes": self.baseline_file_bytes},
                "variants": [r.as_dict() for r in self.reports]}

    def table(self) -> list[dict[str, Any]]:
        base = {"variant": "fp32", "family": self.config.base_family, "file_bytes": self.baseline_file_bytes,
                "size_ratio": 1.0, "p50_ms": self.baseline_latency.p50_ms, "p95_ms": self.baseline_latency.p95_ms,
                "speedup_p50": 1.0, "roc_auc": self.baseline_metrics.overall.get("roc_auc"),
                "accuracy": self.baseline_metrics.overall.get("accuracy"), "roc_auc_points_lost": 0.0,
                "accuracy_points_lost": 0.0, "within_tolerance": True}
        return [base, *(r.table_row() for r in self.reports)]

    def mlflow_metrics(self) -> dict[str, float]:
        metrics = {"fp32_p50_ms": self.baseline_latency.p50_ms, "fp32_file_bytes": float(self.baseline_file_bytes)}
        metrics |= {f"fp32_{k}": float(v) for k, v in self.baseline_metrics.overall.items() if v is not None}
        for report in self.reports:
            row = report.table_row()
            for key in ("file_bytes", "p50_ms", "p95_ms", "speedup_p50", "roc_auc", "accuracy",
                        "roc_auc_points_lost", "accuracy_points_lost"):
                if row[key] is not None:
                    metrics[f"{report.variant}_{key}"] = float(row[key])
        return metrics

    def summary(self) -> str:
        parts = [f"{r.variant}: x{r.speedup_p50} p50, {r.verdict()}" for r in self.reports]
        return f"compressed {self.spec_id}: " + "; ".join(parts)

    def as_metadata(self) -> dict[str, Any]:
        return {"trained": True, **self.config.as_metadata(), "n_evaluated": self.n_evaluated,
                "variants_within_tolerance": self.accepted,
                "variants_refused": [r.variant for r in self.reports if not r.within_tolerance],
                "fp32_p50_ms": self.baseline_latency.p50_ms,
                "best_speedup_p50": max((r.speedup_p50 for r in self.reports if r.within_tolerance), default=None),
                "fp32_metrics": self.baseline_metrics.overall}


def compress_model(model: nn.Module, data: EvaluationData, config: CompressionConfig, out_dir: str | Path,
                   variants: Sequence[str] | None = None) -> CompressionSuite:
    """Build each declared variant of ``model`` and report it against the fp32 network on ``data``."""
    with nondeterministic_kernels_allowed():
        return _compress(model, data, config, Path(out_dir), variants)


def _compress(model: nn.Module, data: EvaluationData, config: CompressionConfig, out_dir: Path,
              variants: Sequence[str] | None) -> CompressionSuite:
    model = copy.deepcopy(model).eval()
    baseline_run = torch_runner(model)
    baseline_outputs = baseline_run(data.inputs)
    baseline_metrics = grouped_metrics(data.labels, data.scores(baseline_outputs), data.groups,
                                       threshold=data.threshold, min_rows=config.subgroup_min_rows)
    timing = {"calls": config.latency_calls, "batch_size": config.latency_batch_size}
    baseline_latency = measure_latency(baseline_run, data.inputs, **timing)
    baseline_bytes = state_dict_bytes(model)
    reports, built = [], []
    for name in variants or config.variants:
        variant = build_variant(name, model, data, config, out_dir / name)
        outputs = variant.run(data.inputs)
        failure = None
        details = dict(variant.details)
        if name == "onnx":
            close, diff = compare_outputs(baseline_outputs, outputs)
            details |= {"max_abs_diff_vs_torch": diff, "atol": ONNX_ATOL, "rtol": ONNX_RTOL}
            failure = None if close else f"onnxruntime outputs differ from torch by up to {diff:.3g}"
        after = grouped_metrics(data.labels, data.scores(outputs), data.groups, threshold=data.threshold,
                                min_rows=config.subgroup_min_rows)
        reports.append(CompressionReport(
            config.spec_id, name, variant.family, variant.path.stat().st_size, baseline_bytes,
            measure_latency(variant.run, data.inputs, **timing), baseline_latency, baseline_metrics, after,
            config.tolerance_points, config.gate_metrics, config.version, details, failure))
        built.append(variant)
    return CompressionSuite(config.spec_id, config, tuple(reports), tuple(built), baseline_metrics, baseline_latency,
                            baseline_bytes, int(len(data.labels)))


# ------------------------------------------------------------------------------------ the tabular model
def tabular_evaluation_data(predictor: Any, frame: pd.DataFrame, config: CompressionConfig,
                            patients: pd.DataFrame | None = None, label_column: str = "label") -> EvaluationData:
    """A TabularPredictor's evaluation split as network inputs (its own preprocessing), labels and subgroups."""
    rows = frame[frame["split"] == config.evaluation_split]
    if len(rows) == 0:
        raise ValueError(f"spec {config.spec_id}: no rows in the {config.evaluation_split!r} split to compare variants on")
    train = frame[frame["split"] == "train"]
    return EvaluationData(
        inputs=predictor.preprocessing.transform_array(rows),
        labels=rows[label_column].to_numpy().astype(np.int64),
        groups=subgroup_frame(rows, config.subgroup_columns, config.age_band_edges, patients),
        threshold=predictor.threshold,
        calibration=predictor.preprocessing.transform_array(train) if len(train) else None,
    )


def compress_tabular_model(model_dir: str | Path, frame: pd.DataFrame, config: CompressionConfig, out_dir: str | Path,
                           patients: pd.DataFrame | None = None) -> CompressionSuite:
    """Compress the trained MLP in ``model_dir`` (TabularPredictor layout) and judge it on ``frame``'s evaluation split."""
    from medllm_pipelines.lib.train.predictor import TabularPredictor

    predictor = TabularPredictor.load(model_dir)
    data = tabular_evaluation_data(predictor, frame, config, patients)
    return compress_model(predictor.network, data, config, out_dir)


# ----------------------------------------------------------------------------------- the imaging CNN
def _age_midpoint(band: object) -> float:
    """``"55-59"`` -> 57.0, ``"90+"`` -> 90.0 (deidentify/patients keeps ages as bands); NaN when unreadable."""
    text = str(band or "").strip()
    try:
        if text.endswith("+"):
            return float(text[:-1])
        low, high = text.split("-")
        return (float(low) + float(high)) / 2.0
    except ValueError:
        return float("nan")


def with_person_attributes(rows: pd.DataFrame, patients: pd.DataFrame | None) -> pd.DataFrame:
    """``rows`` with the person's sex and age (band midpoint) from the de-identified patients table, same index."""
    if patients is None or "patient_pseudonym" not in rows.columns:
        return rows
    person = patients.sort_values(["patient_pseudonym", "institution"]).drop_duplicates("patient_pseudonym")
    person = person.set_index("patient_pseudonym")
    extra = pd.DataFrame(index=rows.index)
    if "sex" in person.columns:
        extra["sex"] = rows["patient_pseudonym"].map(person["sex"])
    if "age_band" in person.columns:
        extra["age_years"] = rows["patient_pseudonym"].map(person["age_band"]).map(_age_midpoint)
    return rows.join(extra[[c for c in extra.columns if c not in rows.columns]])


def imaging_evaluation_data(predictor: Any, frame: pd.DataFrame, images_folder: str | Path, config: CompressionConfig,
                            patients: pd.DataFrame | None = None) -> EvaluationData:
    """The lesion classifier's evaluation split as normalised slices (n, 1, H, W), presence labels and subgroups;
    the training split's slices calibrate static int8. Slices must share one shape (they are stacked)."""
    from medllm_pipelines.lib.train.imaging.training import split_images

    images = split_images(frame, Path(images_folder))
    evaluation, train = images.get(config.evaluation_split), images["train"]
    if evaluation is None or len(evaluation) == 0:
        raise ValueError(f"spec {config.spec_id}: no images in the {config.evaluation_split!r} split to compare variants on")
    shapes = {image.shape for image in (*evaluation.images, *train.images)}
    if len(shapes) > 1:
        raise ValueError(f"spec {config.spec_id}: compression compares variants on slices of one shape, got {sorted(shapes)}")
    rows = frame[frame["split"] == config.evaluation_split].sort_values("image_id")  # split_images' order
    return EvaluationData(
        inputs=np.stack(evaluation.images).astype(np.float32),
        labels=evaluation.presence.astype(np.int64),
        groups=subgroup_frame(with_person_attributes(rows, patients), config.subgroup_columns, config.age_band_edges),
        threshold=predictor.threshold,
        calibration=np.stack(train.images).astype(np.float32) if len(train) else None,
    )


def compress_imaging_model(model_dir: str | Path, frame: pd.DataFrame, images_folder: str | Path,
                           config: CompressionConfig, out_dir: str | Path,
                           patients: pd.DataFrame | None = None) -> CompressionSuite:
    """Compress the trained lesion classifier in ``model_dir`` (imaging predictor layout) and judge it on the
    evaluation split of ``frame`` (curate lesion rows with ``split``), overall and per sex, age band, institution."""
    from medllm_pipelines.lib.train.imaging.predictor import ImagingPredictor

    predictor = ImagingPredictor.load(model_dir)
    if predictor.task != "classification":
        raise ValueError(f"spec {config.spec_id}: only the lesion classifier is compressed, not a {predictor.task} model")
    data = imaging_evaluation_data(predictor, frame, images_folder, config, patients)
    return compress_model(predictor.network, data, config, out_dir)


# ------------------------------------------------------------------------------------------------ MLflow
def log_variant_model(variant: CompressedVariant, example_input: np.ndarray) -> str:
    """Log a variant into the active MLflow run (torch: pickled module; ONNX: the ONNX file); returns its model URI.

    Quantised modules cannot go through torch.export (the "pt2" format), so torch variants are
    pickled: loading one runs pickled code, as for any pickled torch model.
    """
    import mlflow
    from mlflow.models import infer_signature

    from medllm_pipelines.lib.train.tracking import pinned_pip_requirements

    example = np.ascontiguousarray(example_input, dtype=np.float32)
    signature = infer_signature(example, variant.run(example))
    if variant.module is None:
        import mlflow.onnx
        import onnx

        info = mlflow.onnx.log_model(onnx.load(str(variant.path)), name=f"{variant.name}", signature=signature,
                                     pip_requirements=[*pinned_pip_requirements(("onnx", "onnxruntime", "numpy"))])
        return info.model_uri
    import mlflow.pytorch

    module = variant.module
    with quiet_quantisation():
        if isinstance(module, torch.fx.GraphModule):
            # An FX-converted CNN (static int8) does not pickle: its generated code's globals hold MONAI objects
            # torch.package cannot name. Traced to TorchScript it saves and loads without pickled code.
            with torch.no_grad():
                module = torch.jit.trace(module, torch.from_numpy(example))
        info = mlflow.pytorch.log_model(module, name=f"{variant.name}", serialization_format="pickle",
                                        signature=signature, pip_requirements=pinned_pip_requirements())
    return info.model_uri


def register_within_tolerance(suite: CompressionSuite, example_input: np.ndarray, *, dataset_version: str,
                              tracking_uri: str | None = None) -> dict[str, Any]:
    """Log every variant to the active run; register as ``<spec>-<variant>`` only those within tolerance."""
    from medllm_pipelines.lib.train.registry import register_model

    registered: dict[str, Any] = {}
    for report, variant in zip(suite.reports, suite.variants):
        with nondeterministic_kernels_allowed():
            uri = log_variant_model(variant, example_input)
        if not report.within_tolerance:
            continue
        model = register_model(uri, suite.spec_id, family=report.family, dataset_version=dataset_version,
                               metrics={f"test_{k}": v for k, v in report.metrics_after.overall.items() if v is not None},
                               tracking_uri=tracking_uri, name=f"{suite.spec_id}-{report.variant}")
        registered[report.variant] = model.as_metadata()
    return registered



@contextmanager
def failure_recorded(spec_id: str, stage: str) -> Iterator[None]:
    """Tag the active MLflow run with the reason when the block fails (the run then ends FAILED), and re-raise."""
    from medllm_pipelines.lib.train.tracking import mark_failed

    try:
        yield
    except Exception as error:
        mark_failed(f"spec {spec_id}: {stage} failed: {type(error).__name__}: {error}")
        raise


REPORT_ARTIFACT = "compression_report.json"
TABLE_ARTIFACT = "compression_table.json"


def log_compression(suite: CompressionSuite, *, dataset_version: str, tracking_uri: str | None = None) -> dict[str, Any]:
    """The suite into the active run (params, metrics, report JSON, comparison table, each variant's model);
    the variants within tolerance registered. Returns what was registered, by variant."""
    import mlflow

    mlflow.log_params({"compression_config_version": suite.config.version, "tolerance_points": suite.config.tolerance_points,
                       "gate_metrics": ",".join(suite.config.gate_metrics), "variants": ",".join(suite.config.variants),
                       "evaluation_split": suite.config.evaluation_split, "dataset_version": dataset_version,
                       "latency_calls": suite.config.latency_calls, "latency_batch_size": suite.config.latency_batch_size})
    mlflow.log_metrics(suite.mlflow_metrics())
    mlflow.log_dict(suite.as_dict(), REPORT_ARTIFACT)
    mlflow.log_table(pd.DataFrame(suite.table()), TABLE_ARTIFACT)
    first = suite.variants[0] if suite.variants else None
    n_inputs = None if first is None else int(np.prod(_input_shape(first)))
    example = np.zeros((2, *(_input_shape(first) if first else ())), dtype=np.float32) if n_inputs else None
    return {} if example is None else register_within_tolerance(suite, example, dataset_version=dataset_version,
                                                                 tracking_uri=tracking_uri)


def _input_shape(variant: CompressedVariant) -> tuple[int, ...]:
    """Per-row input shape, recorded when the variant was built (zeros of it are the logged input example)."""
    return tuple(variant.details.get("input_shape", ()))
