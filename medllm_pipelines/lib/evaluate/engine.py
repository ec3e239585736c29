"""One evaluation for every registered model (issue 12): from a family adapter's `ModelOutputs` to metrics with
intervals, baseline deltas, curves, subgroup gaps, membership inference and the promotion gate.

The engine never loads a model (adapters do, ``lib/evaluate/adapters``). For every task it computes, on the test
split (the hold-out of V3):

- the task's metric set (``task_metrics``) for the model and for the spec's baseline, each metric with bootstrap
  percentile and BCa intervals (``intervals.bootstrap_intervals``; resampling rows: a person, an image, a window,
  a text), and paired model - baseline deltas with their intervals;
- binary tasks: the decision threshold chosen on the validation split (Youden), never on test; ROC and PR curves,
  reliability diagram and ECE, decision curve, confusion matrix at the chosen threshold;
  multiclass: top-label ECE and reliability (confidence of the top class against its correctness);
- subgroup metrics per sex, age band and institution (fairlearn ``MetricFrame`` via ``fairness.py``), the largest
  gap of the gate's primary metric among groups of at least ``min_group_size`` rows;
- a loss-threshold membership-inference attack: the training rows' losses against the test rows' (AUC 0.5: the
  loss says nothing about membership);
- the gate decision (``gate.decide``) from the spec's thresholds: fails closed on anything undefined.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from medllm_pipelines.lib.evaluate import curves
from medllm_pipelines.lib.evaluate.fairness import fairness_report
from medllm_pipelines.lib.evaluate.gate import GateDecision, GatePolicy, GatePolicyError, decide, refused
from medllm_pipelines.lib.evaluate.intervals import bootstrap_intervals, paired_delta_intervals
from medllm_pipelines.lib.evaluate.membership import membership_inference
from medllm_pipelines.lib.evaluate.metrics import roc_curve_points
from medllm_pipelines.lib.evaluate.outputs import ModelOutputs, ReportSection, jsonable
from medllm_pipelines.lib.evaluate.task_metrics import (
    MetricSet,
    binary_metric_set,
    multiclass_metric_set,
    regression_metric_set,
    segmentation_set_from_cases,
)

EVALUATION_SPLIT = "test"
THRESHOLD_SPLIT = "validation"
THRESHOLD_RULE = "youden"
DEFAULT_THRESHOLD = 0.5
ECE_BINS = 10
MIN_MIA_ROWS = 5
PRIMARY_DEFAULTS = {"binary": "roc_auc", "multiclass": "macro_f1", "regression": "r2", "segmentation": "dice",
                    "spans": "span_f1", "notes": "field_f1"}


# ----------------------------------------------------------------------------------------------- task metric sets
def _ratio(numerator: float, denominator: float) -> float | None:
    return None if denominator <= 0 else float(numerator / denominator)


def _f1(precision: float | None, recall: float | None) -> float | None:
    if precision is None or recall is None:
        return None
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def span_metric_set(_: Any, counts: np.ndarray) -> MetricSet:
    """Micro span precision, recall and F1 from per-text (tp, fp, fn) counts (exact span and type)."""
    tp, fp, fn = (float(np.nansum(counts[:, i])) for i in range(3))
    precision, recall = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
    values = {"span_precision": precision, "span_recall": recall, "span_f1": _f1(precision, recall)}
    reasons = {"span_precision": "no predicted span", "span_recall": "no gold span",
               "span_f1": "precision or recall undefined"}
    return MetricSet("spans", values, {k: reasons[k] for k, v in values.items() if v is None},
                     counts={"n_texts": len(counts), "tp": int(tp), "fp": int(fp), "fn": int(fn)})


def note_metric_set(_: Any, stats: np.ndarray) -> MetricSet:
    """Field-level micro P/R/F1, ICD-10 exact match (notes whose gold has a code) and mean ROUGE-L F."""
    scored = ~np.isnan(stats[:, 0])
    tp, fp, fn = (float(np.sum(stats[scored, i])) for i in range(3))
    precision, recall = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
    icd = stats[:, 3][~np.isnan(stats[:, 3])]
    rouge = stats[:, 4][~np.isnan(stats[:, 4])]
    values = {"field_precision": precision, "field_recall": recall, "field_f1": _f1(precision, recall),
              "icd10_exact_match": float(icd.mean()) if len(icd) else None,
              "rouge_l": float(rouge.mean()) if len(rouge) else None}
    reasons = {"field_precision": "no generated field", "field_recall": "no gold field",
               "field_f1": "precision or recall undefined", "icd10_exact_match": "no gold note holds an ICD-10 code",
               "rouge_l": "no note scored"}
    return MetricSet("notes", values, {k: reasons[k] for k, v in values.items() if v is None},
                     counts={"n_notes": int(scored.sum()), "n_with_icd10": int(len(icd))})


def segmentation_metrics(_: Any, cases: np.ndarray) -> MetricSet:
    """Mean Dice, IoU and HD95 over the images where each is defined (task_metrics' conventions).

    Dice is NaN exactly where the true mask is empty; HD95 NaN on an image with a lesion means the prediction
    was empty there (for empty true masks the counts cannot tell whether the prediction was empty too).
    """
    dice, iou, hd95 = (np.asarray(cases[:, i], dtype=float) for i in range(3))
    true_empty = np.isnan(dice)
    return segmentation_set_from_cases(dice, iou, hd95, pred_empty=np.isnan(hd95) & ~true_empty,
                                       true_empty=true_empty)


def metric_function(task: str, threshold: float = DEFAULT_THRESHOLD) -> Callable[[Any, Any], MetricSet]:
    """The metric set of ``task`` as a function of (y_true, output), what the bootstrap resamples."""
    if task == "binary":
        return functools.partial(binary_metric_set, threshold=threshold)
    if task == "multiclass":
        return lambda y, p: multiclass_metric_set(np.asarray(y, dtype=int), np.asarray(p, dtype=float))
    if task == "regression":
        return regression_metric_set
    if task == "segmentation":
        return segmentation_metrics
    if task == "spans":
        return span_metric_set
    if task == "notes":
        return note_metric_set
    raise ValueError(f"unknown task {task!r}")


# ----------------------------------------------------------------------------------------------- the result
@dataclass(frozen=True)
class ModelEvaluation:
    """Everything the report, the asset metadata and the gate read (JSON-ready through ``as_dict``)."""

    spec_id: str
    task: str
    model_name: str
    model_version: str
    baseline_name: str
    primary_metric: str
    counts: dict[str, int]
    metrics: dict[str, Any]             # side (model | baseline) -> MetricSet.as_dict() on test
    validation_metrics: dict[str, Any]  # side -> MetricSet.as_dict() on validation
    intervals: dict[str, Any]           # side -> metric -> BootstrapInterval.as_dict()
    deltas: dict[str, Any]              # metric -> BootstrapInterval.as_dict() of model - baseline
    threshold: dict[str, Any]
    calibration: dict[str, Any]
    curves: dict[str, Any]
    fairness: dict[str, Any]
    membership: dict[str, Any]
    gate: GateDecision
    sections: tuple[ReportSection, ...] = ()
    limits: tuple[str, ...] = ()
    class_names: tuple[str, ...] = ()

    def model_value(self, metric: str) -> float | None:
        return self.metrics.get("model", {}).get("values", {}).get(metric)

    def baseline_value(self, metric: str) -> float | None:
        return self.metrics.get("baseline", {}).get("values", {}).get(metric)

    def as_dict(self) -> dict[str, Any]:
        return jsonable({
            "spec_id": self.spec_id, "task": self.task, "model_name": self.model_name,
            "model_version": self.model_version, "baseline_name": self.baseline_name,
            "primary_metric": self.primary_metric, "counts": self.counts, "metrics": self.metrics,
            "validation_metrics": self.validation_metrics, "intervals": self.intervals, "deltas": self.deltas,
            "threshold": self.threshold, "calibration": self.calibration, "curves": self.curves,
            "fairness": self.fairness, "membership": self.membership, "gate": self.gate.as_metadata(),
            "sections": [s.as_dict() for s in self.sections], "limits": list(self.limits),
            "class_names": list(self.class_names),
        })

    def mlflow_metrics(self) -> dict[str, float]:
        """test_<metric> and baseline_test_<metric>, the ECE and the membership AUC, as numbers only."""
        out: dict[str, float] = {}
        for side, prefix in (("model", "test_"), ("baseline", "baseline_test_")):
            for name, value in self.metrics.get(side, {}).get("values", {}).items():
                if value is not None:
                    out[f"{prefix}{name}"] = float(value)
        if self.calibration.get("ece") is not None:
            out["test_ece"] = float(self.calibration["ece"])
        if self.membership.get("auc") is not None:
            out["membership_inference_auc"] = float(self.membership["auc"])
        return out

    def summary(self) -> str:
        model, base = self.model_value(self.primary_metric), self.baseline_value(self.primary_metric)
        return (f"{self.model_name} v{self.model_version}: test {self.primary_metric} {_fmt(model)} vs "
                f"{self.baseline_name or 'baseline'} {_fmt(base)}; {self.gate.summary()}")


def _fmt(value: float | None) -> str:
    return "undefined" if value is None else f"{value:.4f}"


# ----------------------------------------------------------------------------------------------- the engine
def _side_arrays(outputs: ModelOutputs, rows: np.ndarray) -> dict[str, np.ndarray]:
    sides = {"model": np.asarray(outputs.model)[rows]}
    if outputs.baseline is not None:
        baseline = np.asarray(outputs.baseline, dtype=float)[rows]
        if not np.isnan(baseline).all():
            sides["baseline"] = baseline
    return sides


def _choose_threshold(outputs: ModelOutputs) -> dict[str, Any]:
    if outputs.task != "binary":
        return {}
    rows = outputs.rows(THRESHOLD_SPLIT)
    y, p = np.asarray(outputs.y_true)[rows], np.asarray(outputs.model, dtype=float)[rows]
    try:
        choice = curves.choose_threshold(y, p, THRESHOLD_RULE, split=THRESHOLD_SPLIT)
    except ValueError as error:
        return {"threshold": DEFAULT_THRESHOLD, "rule": "default 0.5", "chosen_on": None,
                "reason": f"no threshold chosen on the validation split ({error}); 0.5 used"}
    return choice.as_dict()


def _binary_curves(y: np.ndarray, sides: Mapping[str, np.ndarray], threshold: float) -> tuple[dict, dict]:
    out: dict[str, Any] = {}
    calibration: dict[str, Any] = {}
    for side, score in sides.items():
        score = np.clip(np.asarray(score, dtype=float), 0.0, 1.0)
        entry: dict[str, Any] = {}
        if len(set(y.tolist())) == 2:
            entry["roc"] = roc_curve_points(y, score)
            entry["pr"] = curves.precision_recall_points(y, score)
            entry["decision_curve"] = curves.decision_curve(y, score)
        entry["confusion"] = curves.confusion_matrix_at(y, score, threshold)
        entry["reliability"] = curves.reliability_diagram(y, score, ECE_BINS)
        out[side] = entry
        calibration[f"{side}_ece" if side != "model" else "ece"] = curves.expected_calibration_error(y, score, ECE_BINS)
    calibration["n_bins"] = ECE_BINS
    return out, calibration


def _multiclass_calibration(y: np.ndarray, probabilities: np.ndarray) -> tuple[dict, dict]:
    confidence = probabilities.max(axis=1)
    correct = (probabilities.argmax(axis=1) == y).astype(int)
    diagram = curves.reliability_diagram(correct, confidence, ECE_BINS)
    ece = curves.expected_calibration_error(correct, confidence, ECE_BINS)
    matrix = np.zeros((probabilities.shape[1], probabilities.shape[1]), dtype=int)
    for truth, predicted in zip(y, probabilities.argmax(axis=1), strict=True):
        matrix[int(truth), int(predicted)] += 1
    return ({"model": {"reliability": diagram, "confusion": {"matrix": matrix.tolist()}}},
            {"ece": ece, "n_bins": ECE_BINS, "kind": "top-label"})


def _fairness(outputs: ModelOutputs, rows: np.ndarray, metric_fn: Callable, policy: GatePolicy | None,
              primary: str) -> dict[str, Any]:
    groups = outputs.groups(EVALUATION_SPLIT)
    single = [c for c in groups.columns if groups[c].nunique() <= 1]  # one group: there is no gap to measure
    groups = groups[[c for c in groups.columns if c not in single]]
    if groups.empty or groups.shape[1] == 0:
        return {"largest_gap": None, "single_group_attributes": single,
                "reason": "the test rows hold no attribute (sex, age band, institution) with two or more groups"}
    min_size = policy.min_group_size if policy else 20
    report = fairness_report(np.asarray(outputs.y_true)[rows], np.asarray(outputs.model)[rows], groups,
                             metric_fn, min_group_size=min_size)
    gated, blocking, too_small = _primary_gaps(report, primary)
    if blocking:  # a group large enough to count has no value: fail closed
        largest_gap, attribute = None, blocking[0].attribute
        reason = (f"{primary} is undefined on the group(s) {blocking[0].undefined_groups} of {attribute} "
                  f"(at least {min_size} rows each): the gap cannot be checked")
    elif not gated:
        largest_gap, attribute = None, None
        reason = (f"no attribute has two groups of at least {min_size} test rows with a defined {primary} "
                  f"(too small: {', '.join(too_small) or 'none'}); nothing to check")
    else:
        worst = max(gated, key=lambda gap: gap.difference)
        largest_gap, attribute, reason = worst.difference, worst.attribute, ""
    return {
        **report.as_dict(),
        "primary_metric": primary,
        "largest_gap": largest_gap,
        "largest_gap_attribute": attribute,
        "gated_attributes": [gap.attribute for gap in gated],
        "too_small_attributes": too_small,
        "reason": reason,
        "min_group_size": min_size,
        "single_group_attributes": single,
    }


def _primary_gaps(report: Any, primary: str) -> tuple[list[Any], list[Any], list[str]]:
    """The primary metric's gap per attribute, sorted into: gated (defined), blocking (a group of at least the
    minimum size has an undefined value: fails closed) and too small (fewer than two groups of the minimum size:
    reported, not gated; the gate still fails when no attribute is left to gate)."""
    gated, blocking, too_small = [], [], []
    for attribute, frame in report.frames.items():
        gap = frame.gaps.get(primary)
        if gap is None:
            continue
        if gap.undefined_groups:
            blocking.append(gap)
        elif gap.difference is None:
            too_small.append(attribute)
        else:
            gated.append(gap)
    return gated, blocking, too_small


def _membership(outputs: ModelOutputs, seed: int) -> dict[str, Any]:
    loss = outputs.frame["loss"].to_numpy(dtype=float)
    members = loss[outputs.rows("train")]
    nonmembers = loss[outputs.rows(EVALUATION_SPLIT)]
    members, nonmembers = members[~np.isnan(members)], nonmembers[~np.isnan(nonmembers)]
    if len(members) < MIN_MIA_ROWS or len(nonmembers) < MIN_MIA_ROWS:
        return {"auc": None, "reason": f"too few rows with a loss (train {len(members)}, test {len(nonmembers)}; "
                                       f"need {MIN_MIA_ROWS} each)"}
    return membership_inference(members, nonmembers, n_boot=200, seed=seed).as_dict()


def evaluate_outputs(spec_id: str, outputs: ModelOutputs, policy: GatePolicy | None, *, seed: int = 0,
                     policy_error: str = "") -> ModelEvaluation:
    """Metrics, intervals, deltas, curves, subgroups, membership inference and the gate for one model version.

    ``policy`` None (with ``policy_error`` saying why): everything is measured and the gate fails closed.
    """
    primary = policy.primary_metric if policy else PRIMARY_DEFAULTS[outputs.task]
    threshold = _choose_threshold(outputs)
    metric_fn = metric_function(outputs.task, float(threshold.get("threshold", DEFAULT_THRESHOLD)))
    rows = outputs.rows(EVALUATION_SPLIT)
    counts = {split: int(outputs.rows(split).sum()) for split in ("train", "validation", "test")}
    if counts[EVALUATION_SPLIT] == 0:
        raise ValueError(f"spec {spec_id}: the test split holds no rows; nothing to evaluate")
    y = np.asarray(outputs.y_true)[rows]
    sides = _side_arrays(outputs, rows)
    n_boot = policy.n_boot if policy else 1000
    stratify = y if outputs.task == "binary" else None
    metrics = {side: metric_fn(y, output).as_dict() for side, output in sides.items()}
    val_rows = outputs.rows(THRESHOLD_SPLIT)
    validation = ({side: metric_fn(np.asarray(outputs.y_true)[val_rows], out).as_dict()
                   for side, out in _side_arrays(outputs, val_rows).items()} if val_rows.any() else {})
    intervals = {side: {name: interval.as_dict() for name, interval in
                        bootstrap_intervals(metric_fn, y, output, n_boot=n_boot, seed=seed, stratify=stratify).items()}
                 for side, output in sides.items()}
    deltas = ({name: interval.as_dict() for name, interval in paired_delta_intervals(
        metric_fn, y, sides["model"], sides["baseline"], n_boot=n_boot, seed=seed, stratify=stratify).items()}
              if "baseline" in sides else {})
    curve_data: dict[str, Any] = {}
    calibration: dict[str, Any] = {}
    if outputs.task == "binary":
        curve_data, calibration = _binary_curves(y, sides, float(threshold.get("threshold", DEFAULT_THRESHOLD)))
    elif outputs.task == "multiclass":
        curve_data, calibration = _multiclass_calibration(y.astype(int), np.asarray(sides["model"], dtype=float))
    fairness = _fairness(outputs, rows, metric_fn, policy, primary)
    membership = _membership(outputs, seed)
    model_name, version = outputs.model_name, outputs.model_version
    if policy is None:
        gate = refused(spec_id, model_name, version, policy_error or f"spec {spec_id} declares no gate")
    elif primary not in metrics["model"]["values"]:
        gate = refused(spec_id, model_name, version, f"primary metric {primary!r} is not one of the task's "
                                                     f"{sorted(metrics['model']['values'])}")
    else:
        gate = decide(
            policy, model_name, version,
            primary=metrics["model"]["values"].get(primary),
            baseline_primary=metrics.get("baseline", {}).get("values", {}).get(primary),
            ece=calibration.get("ece"),
            subgroup_gap=fairness.get("largest_gap"),
            subgroup_gap_reason=fairness.get("reason", ""),
            attack_accuracy=outputs.gate_values.get("attack_accuracy"),
            mia_auc=membership.get("auc"),
        )
    return ModelEvaluation(
        spec_id=spec_id, task=outputs.task, model_name=model_name, model_version=version,
        baseline_name=outputs.baseline_name, primary_metric=primary, counts=counts, metrics=metrics,
        validation_metrics=validation, intervals=intervals, deltas=deltas,
        threshold={**threshold, **({"note": outputs.threshold_note} if outputs.threshold_note else {})},
        calibration=calibration, curves=curve_data, fairness=fairness, membership=membership, gate=gate,
        sections=tuple(outputs.sections), limits=tuple(outputs.limits), class_names=tuple(outputs.class_names),
    )


def policy_or_error(spec_id: str, block: Mapping[str, Any] | None) -> tuple[GatePolicy | None, str]:
    """The spec's gate policy, or None and the reason (the gate then fails closed)."""
    from medllm_pipelines.lib.evaluate.gate import gate_policy

    try:
        return gate_policy(spec_id, block), ""
    except GatePolicyError as error:
        return None, str(error)


