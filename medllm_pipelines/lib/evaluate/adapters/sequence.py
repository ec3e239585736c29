"""Evaluation adapter of the sequence family (issue 12): the deterioration early-warning LSTM/GRU and the next-hour
heart-rate forecast (specs ``deterioration`` and ``vitals_forecast``).

The trained network is loaded from the model folder the training record names (``model_spec.json`` + weights,
``lib/train/sequence/runs.load_network``); its windows are rebuilt from the de-identified vitals with the scaler the
training saved (fitted on the training stays), exactly as training and compression build them
(``lib/train/sequence/data.window_tensor``). Every window of train, validation and test is scored:

- ``deterioration`` (task binary): P(ICU admission within the horizon) per window; the declared baseline NEWS2 is
  the dataset's own ``news2`` column mapped to ``NEWS2 / 20`` (20 is the score's maximum), the mapping the training
  uses for its baseline figures: monotone, so ROC-AUC and PR-AUC are NEWS2's own, but it is not a calibrated
  probability (its Brier score and ECE say nothing about NEWS2). Loss: binary log loss.
- ``vitals_forecast`` (task regression): the next hour's reading; the declared baseline is the training mean (the
  one the training saved); the last value carried forward sits in a section table. Loss: squared error.

Sections: ``perturbations`` (S8: measurement noise, a vital absent in the last hours, unit mix-ups, each with the
model's metric and the clinical baseline's before and after), ``temporal_validation`` (V6: what the data allow
without calendar time), and per task ``news2_operating_points`` or ``forecast_baselines``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medllm_pipelines.lib.common.records import frame_content_hash
from medllm_pipelines.lib.curate.dataset import SplitDataset
from medllm_pipelines.lib.curate.news2 import news2_score
from medllm_pipelines.lib.curate.sequences import HOUR, STAY_KEYS, VITALS, carried_forward, windows_with_splits
from medllm_pipelines.lib.curate.spec import DEMO_SIZE, ModelSpec
from medllm_pipelines.lib.evaluate.adapters import EvaluationRequest
from medllm_pipelines.lib.evaluate.intervals import bootstrap_intervals
from medllm_pipelines.lib.evaluate.membership import binary_log_losses, regression_squared_errors
from medllm_pipelines.lib.evaluate.metrics import roc_auc_or_none
from medllm_pipelines.lib.evaluate.outputs import SPEC_TASKS, ModelOutputs, ReportSection, Table, person_groups
from medllm_pipelines.lib.evaluate.robustness import (
    PerturbationResult,
    UnitMixup,
    apply_unit_mixup,
    load_robustness_config,
    measurement_noise,
)
from medllm_pipelines.lib.evaluate.task_metrics import average_precision_or_none, regression_metric_set

BINARY, REGRESSION = "binary", "regression"
# what training writes into model_spec.json per evaluation task (lib/train/sequence/training.py)
MODEL_TASKS = {BINARY: "deterioration_early_warning", REGRESSION: "next_value_regression"}
NEWS2_MAX = 20.0
# RCP 2017 NEWS2 clinical response triggers: 5 = urgent response (key threshold), 7 = emergency response
NEWS2_TRIGGERS = (5, 7)
# Measurement CVs of the bedside vitals robustness.yaml does not declare (it holds heart_rate and systolic_bp, which
# win): respiratory rate counted by hand over 30-60 s is off by 2-3 breaths/min at 18/min (~10 %); pulse oximeters
# are accurate to an Arms of 2-3 % SpO2 at 90-100 % (ISO 80601-2-61 allows 4 %): ~2 %; a ward thermometer to about
# 0.2 degC at 37 degC (~0.5 %). Proposed for robustness.yaml's measurement_cv.
BEDSIDE_CV_DEFAULTS = {"respiratory_rate": 0.10, "spo2": 0.02, "temperature": 0.005}
# A vital absent in the last hours: 4 h is one missed routine observation round (RCP: NEWS2 1-4 -> 4-6-hourly).
MISSING_HOURS = 4
# Unit mix-ups of the bedside feed (ingest/vital_signs reads valueQuantity.value and ignores its unit):
# temperature in degF written where degC is expected (degF = degC x 9/5 + 32, by definition), and SpO2 as a
# fraction (0.97) where percent (97) is expected.
BEDSIDE_UNIT_MIXUPS = (
    UnitMixup("temperature", "[degF]", "Cel", 5.0 / 9.0, -160.0 / 9.0, "definition: degF = degC * 9/5 + 32"),
    UnitMixup("spo2", "1", "%", 100.0, 0.0, "definition: 1 = 100 %"),
)
# Test stays the perturbation suite and the temporal bootstrap read at most (seeded choice), and bootstrap draws.
STAY_CAP = {DEMO_SIZE: 150, "full": 1500}
TEMPORAL_N_BOOT = {DEMO_SIZE: 200, "full": 1000}
SCORE_BATCH = 2048


# --------------------------------------------------------------------------------------------- dataset and model


def dataset(spec: ModelSpec, tables: Mapping[str, pd.DataFrame]) -> SplitDataset:
    """The windows joined with the deterioration splits exactly as ``defs/train/sequence.py`` joins them, so that
    the version is the one the model was trained on (its training record is filed under it)."""
    missing = [name for name in ("dataset", "splits") if name not in tables]
    if missing:
        raise KeyError(f"spec {spec.id}: the sequence adapter needs the tables {missing} (dataset, splits)")
    frame = windows_with_splits(tables["dataset"], tables["splits"])
    return SplitDataset(frame, frame_content_hash(frame))


@dataclass(frozen=True)
class SequenceModel:
    """A trained sequence network as training saved it: the network, its vitals scaler and window, and for the
    forecast the target's training mean and scale (the network predicts the standardised target)."""

    network: Any
    scaler: Any
    window_hours: int
    task: str
    description: dict[str, Any]

    @property
    def target_mean(self) -> float:
        return float(self.description.get("target_mean", 0.0))

    @property
    def target_scale(self) -> float:
        return float(self.description.get("target_scale", 1.0))

    def score(self, windows: Any) -> np.ndarray:
        """(n, window_hours, channels) tensor -> P(positive) (binary) or the forecast value (regression)."""
        import torch

        from medllm_pipelines.lib.train.text.training import cpu_threads

        outputs = []
        self.network.eval()
        with torch.no_grad(), cpu_threads(1):
            for start in range(0, len(windows), SCORE_BATCH):
                logits = self.network(windows[start:start + SCORE_BATCH]).double()
                outputs.append(torch.sigmoid(logits) if self.task == BINARY
                               else logits * self.target_scale + self.target_mean)
        return torch.cat(outputs).numpy() if outputs else np.zeros(0)


def load_sequence_model(model_dir: str | Path, task: str) -> SequenceModel:
    """The network and its preprocessing from a model folder; a folder of the other sequence task is refused."""
    from medllm_pipelines.lib.train.sequence.data import VitalsScaler
    from medllm_pipelines.lib.train.sequence.runs import load_network
    from medllm_pipelines.lib.train.sequence.training import MODEL_SPEC_FILENAME

    folder = Path(model_dir)
    if not (folder / MODEL_SPEC_FILENAME).is_file():
        raise FileNotFoundError(f"no sequence model in {folder} (no {MODEL_SPEC_FILENAME})")
    description = json.loads((folder / MODEL_SPEC_FILENAME).read_text())
    if description.get("task") != MODEL_TASKS[task]:
        raise ValueError(f"the model in {folder} is a {description.get('task')!r} model, not the "
                         f"{MODEL_TASKS[task]!r} model a {task} evaluation needs")
    scaler = VitalsScaler(**{k: tuple(v) for k, v in description["scaler"].items()})
    return SequenceModel(load_network(folder), scaler, int(description["window_hours"]), task, description)


def stays_of(vitals: pd.DataFrame, windows: pd.DataFrame) -> pd.DataFrame:
    """The vitals rows of the stays ``windows`` come from; a stay without vitals is a clear error."""
    keys = windows[STAY_KEYS].drop_duplicates()
    rows = vitals.merge(keys, on=STAY_KEYS)
    found = rows[STAY_KEYS].drop_duplicates()
    if len(found) < len(keys):
        raise ValueError(f"{len(keys) - len(found)} of {len(keys)} stays of the windows have no rows in the vitals "
                         "table (deidentify/vital_signs): the windows cannot be rebuilt")
    return rows


def window_inputs(model: SequenceModel, vitals: pd.DataFrame, windows: pd.DataFrame) -> Any:
    """The windows' network inputs, built as training built them (``data.window_tensor``)."""
    from medllm_pipelines.lib.train.sequence.data import window_tensor

    return window_tensor(stays_of(vitals, windows), windows, model.scaler, model.window_hours)


def hourly_table(vitals: pd.DataFrame, windows: pd.DataFrame) -> pd.DataFrame:
    """One row per stay-hour of the windows' stays, readings carried forward as the chart and NEWS2 see them
    (``curate.sequences.carried_forward``, what ``build_windows`` scores NEWS2 on), stay keys as columns."""
    parts = []
    for key, stay in stays_of(vitals, windows).sort_values([*STAY_KEYS, HOUR]).groupby(STAY_KEYS, sort=False):
        hourly = carried_forward(stay)[[*VITALS, "acvpu"]].rename_axis(HOUR).reset_index()
        for column, value in zip(STAY_KEYS, key, strict=True):
            hourly[column] = value
        parts.append(hourly)
    return pd.concat(parts, ignore_index=True)


def readings_at(table: pd.DataFrame, windows: pd.DataFrame, *, gap_columns: Sequence[str] = (),
                gap_hours: int = 0) -> pd.DataFrame:
    """Per window (aligned with ``windows``), the carried-forward readings of `hourly_table` at its hour;
    ``gap_columns`` as if not measured in the window's last ``gap_hours`` hours (carried forward from the hour
    before the gap, missing when the stay has none)."""
    if gap_columns and gap_hours > 0:
        table = table.copy()
        shifted = table.groupby(STAY_KEYS, sort=False)[list(gap_columns)].shift(gap_hours)
        table[list(gap_columns)] = shifted
    return windows[[*STAY_KEYS, HOUR]].merge(table, on=[*STAY_KEYS, HOUR], how="left")


def news2_of(readings: pd.DataFrame) -> np.ndarray:
    """NEWS2 (0-20) of carried-forward readings, as ``curate.sequences.build_windows`` scores each window."""
    return news2_score(respiratory_rate=readings["respiratory_rate"], spo2=readings["spo2"],
                       systolic_bp=readings["systolic_bp"], heart_rate=readings["heart_rate"],
                       temperature=readings["temperature"], acvpu=readings["acvpu"].to_numpy()).astype(float)


def mask_last_hours(inputs: Any, vitals: Sequence[str], hours: int) -> Any:
    """Window inputs with ``vitals`` not measured in each window's last ``hours`` hours: their values carried
    forward from the hour before the gap (0, the pre-first-reading value, when the window has no such hour) and
    their "measured" channels 0; equal to rebuilding the windows with those readings missing."""
    from medllm_pipelines.lib.train.sequence.data import CHANNELS

    out = inputs.clone()
    width = out.shape[1]
    gap = min(hours, width)
    present = out[:, width - gap:, CHANNELS.index("present")]
    for vital in vitals:
        value, measured = CHANNELS.index(vital), CHANNELS.index(f"{vital}_measured")
        before = out[:, width - gap - 1, value] if width - gap - 1 >= 0 else out.new_zeros(len(out))
        out[:, width - gap:, value] = before[:, None] * present
        out[:, width - gap:, measured] = 0.0
    return out


# --------------------------------------------------------------------------------------------- outputs


def _task(spec: ModelSpec) -> str:
    task = SPEC_TASKS.get(spec.task)
    if task not in (BINARY, REGRESSION):
        raise ValueError(f"spec {spec.id}: the sequence adapter evaluates binary and regression specs, not "
                         f"{spec.task!r}")
    return task


def _size(request: EvaluationRequest) -> str:
    return request.size if request.size in STAY_CAP else DEMO_SIZE


def outputs(request: EvaluationRequest) -> ModelOutputs:
    """Every window of train, validation and test scored by the model and the declared baseline, with per-window
    losses, groups, the perturbation suite and the temporal analysis."""
    spec = request.spec
    task = _task(spec)
    if "vitals" not in request.tables:
        raise KeyError(f"spec {spec.id}: the sequence adapter needs the table 'vitals' (deidentify/vital_signs)")
    if "model_dir" not in request.record:
        raise KeyError(f"spec {spec.id}: the training record names no model_dir")
    model = load_sequence_model(request.record["model_dir"], task)
    trained_on = model.description.get("dataset_version") or request.record.get("dataset_version")
    if trained_on and trained_on != request.dataset.version:
        raise ValueError(f"spec {spec.id}: the model was trained on dataset version {str(trained_on)[:16]}, not on "
                         f"the {request.dataset.version[:16]} being evaluated")
    frame = request.dataset.frame.reset_index(drop=True)
    if frame.empty:
        raise ValueError(f"spec {spec.id}: the dataset holds no windows")
    vitals = request.tables["vitals"]
    scores = model.score(window_inputs(model, vitals, frame))
    if task == BINARY:
        y_true = frame["label"].to_numpy(dtype=np.int64)
        baseline = frame["news2"].to_numpy(dtype=float) / NEWS2_MAX
        loss = binary_log_losses(y_true, scores)
        baseline_name = "NEWS2 / 20 (RCP 2017; monotone map of the score, not a calibrated probability)"
    else:
        y_true = frame["target"].to_numpy(dtype=float)
        baseline = np.full(len(frame), model.target_mean)
        loss = regression_squared_errors(y_true, scores)
        baseline_name = "training mean"
    groups = person_groups(frame["patient_pseudonym"], request.tables.get("patients"))
    groups["institution"] = frame["institution"].astype(str)  # the stay's own institution, a column of the window
    out = pd.DataFrame({
        "example_id": [f"{p}|{i}|{s}|{h}" for p, i, s, h in frame[[*STAY_KEYS, HOUR]].itertuples(index=False)],
        "split": frame["split"].astype(str),
        "patient_pseudonym": frame["patient_pseudonym"].astype(str),
        "loss": loss,
        **{column: groups[column] for column in ("sex", "age_band")},
        "institution": groups["institution"],
        HOUR: frame[HOUR].astype(int),
    })
    sections = [perturbation_section(request, model, frame, y_true, scores),
                temporal_section(request, frame, y_true, scores, baseline)]
    sections.append(news2_operating_points(frame, y_true, scores) if task == BINARY
                    else forecast_baselines(frame, y_true, scores, model.target_mean))
    gate_values: dict[str, float | None] = {}
    limits = list(_limits(request, frame, task))
    if request.policy is not None and request.policy.attack_epsilon is not None:
        gate_values["attack_accuracy"] = None
        limits.append("No gradient or black-box attack is run on the sequence models (the issue asks them of the MLP "
                      "and the CNN): the spec's attack threshold cannot be checked and fails closed.")
    registered = request.record.get("registered_model")
    if not registered:
        limits.append("The model was not registered: it is named by its spec id and 'unregistered'.")
    return ModelOutputs(
        task=task, frame=out, y_true=y_true, model=scores,
        model_name=str(registered or spec.id), model_version=str(request.record.get("registered_version") or
                                                                 "unregistered"),
        baseline=baseline, baseline_name=baseline_name, sections=tuple(sections), gate_values=gate_values,
        limits=tuple(limits),
        threshold_note=("The NEWS2 baseline is on the NEWS2 / 20 scale: a threshold t reads NEWS2 >= 20 t, so 0.25 "
                        "is the RCP urgent-response trigger (5) and 0.35 the emergency trigger (7); a threshold chosen "
                        "for the model is not NEWS2's clinical operating point. Compare the threshold-free metrics, "
                        "or the section on NEWS2 triggers at equal alert rate.") if task == BINARY else "",
    )


def _limits(request: EvaluationRequest, frame: pd.DataFrame, task: str) -> list[str]:
    test = frame[frame["split"] == "test"]
    stays = len(test[STAY_KEYS].drop_duplicates())
    limits = [
        f"Windows are hourly and overlap within a stay: the {len(test)} test windows come from {stays} stays, and "
        "row-level bootstrap intervals are narrower than the stays justify (the effective sample is nearer the "
        "number of stays). Membership inference also reads windows, not persons.",
        "The vitals carry no calendar time (the de-identification releases hours since admission only): no "
        "temporal split is possible; see the temporal validation section.",
        "On the synthetic hospital the vitals follow a written, stationary process (docs/synthetic_vitals.md): "
        "these figures say how well the model learnt that process, not how it would do on a real ward.",
    ]
    if task == BINARY:
        limits.append("NEWS2 is scored on SpO2 scale 1 and 'air' for every window (the data hold no supplemental "
                      "oxygen or hypercapnic-failure flag), and its NEWS2 / 20 map is not a probability: the "
                      "baseline's Brier score and calibration are not NEWS2's clinical performance.")
    return limits


# --------------------------------------------------------------------------------------------- S8 perturbations


def _test_subsample(frame: pd.DataFrame, size: str, seed: int) -> np.ndarray:
    """Positions (in ``frame``) of the test windows of at most ``STAY_CAP[size]`` test stays (a seeded choice of
    stays beyond it), every window of a chosen stay, in the frame's order."""
    test = np.flatnonzero((frame["split"] == "test").to_numpy())
    stays = frame.iloc[test].groupby(STAY_KEYS, sort=False).ngroup().to_numpy()
    cap = STAY_CAP[size]
    n_stays = int(stays.max()) + 1 if len(stays) else 0
    if n_stays > cap:
        chosen = np.random.default_rng(seed).choice(n_stays, size=cap, replace=False)
        test = test[np.isin(stays, chosen)]
    return test


def _metric(task: str) -> tuple[str, Callable[[np.ndarray, np.ndarray], float | None]]:
    if task == BINARY:
        return "roc_auc", lambda truth, score: roc_auc_or_none(truth, score)
    return "rmse", lambda truth, value: float(np.sqrt(np.mean((truth - value) ** 2))) if len(truth) else None


def _bedside_cvs(config: Any) -> dict[str, float]:
    declared = {k: float(v) for k, v in (config.perturbations.get("measurement_cv") or {}).items() if k in VITALS}
    return {**BEDSIDE_CV_DEFAULTS, **declared}


def perturbation_section(request: EvaluationRequest, model: SequenceModel, frame: pd.DataFrame, y_true: np.ndarray,
                         scores: np.ndarray) -> ReportSection:
    """S8's clinical perturbation suite on the test windows: noise, missing readings, unit mix-ups; the model's
    metric and the clinical baseline's (NEWS2, or the last value carried forward) before and after each."""
    task = model.task
    name, metric = _metric(task)
    seed = int(request.seed)
    index = _test_subsample(frame, _size(request), seed)
    if len(index) == 0:
        return ReportSection("perturbations", "Clinical perturbations of the vitals", "5.4.3 adversarial testing (S8)",
                             summary={"metric": name, "clean": None, "reason": "the test split holds no windows"},
                             text="No test windows: the perturbation suite was not run.")
    rows = frame.iloc[index].reset_index(drop=True)
    truth, clean_scores = y_true[index], scores[index]
    vitals = stays_of(request.tables["vitals"], rows)
    inputs = window_inputs(model, vitals, rows)
    forecast_vital = str(request.spec.target.get("vital", "heart_rate"))

    def baseline_of(readings: pd.DataFrame) -> np.ndarray:
        if task == BINARY:
            return news2_of(readings) / NEWS2_MAX
        return readings[forecast_vital].astype(float).fillna(model.target_mean).to_numpy()

    clean_table = hourly_table(vitals, rows)
    clean_baseline = baseline_of(readings_at(clean_table, rows))
    results: list[PerturbationResult] = []

    def record(kind: str, target: str, setting: str, perturbed_scores: np.ndarray, readings: pd.DataFrame) -> None:
        perturbed_baseline = baseline_of(readings)
        results.append(PerturbationResult(kind, target, name, metric(truth, clean_scores),
                                          metric(truth, perturbed_scores), {
                                              "setting": setting,
                                              "baseline_clean": metric(truth, clean_baseline),
                                              "baseline_perturbed": metric(truth, perturbed_baseline),
                                              "mean_abs_model_change": float(np.mean(np.abs(perturbed_scores -
                                                                                             clean_scores))),
                                              **({"model_brier_clean": _brier(truth, clean_scores),
                                                  "model_brier_perturbed": _brier(truth, perturbed_scores)}
                                                 if task == BINARY else {}),
                                          }))

    config = load_robustness_config()
    cvs = _bedside_cvs(config)
    for multiplier in config.perturbations.get("noise_multipliers") or [1.0]:
        noisy = measurement_noise(vitals, cvs, multiplier=float(multiplier), seed=seed)
        noisy["spo2"] = noisy["spo2"].clip(upper=100.0)  # an oximeter never reads above 100 %
        record("measurement_noise", ",".join(sorted(cvs)), f"CV x {float(multiplier):g}",
               model.score(window_inputs(model, noisy, rows)), readings_at(hourly_table(noisy, rows), rows))
    for vital in (*VITALS, "all"):
        absent = list(VITALS) if vital == "all" else [vital]
        record("missing", vital, f"not measured in the last {MISSING_HOURS} h",
               model.score(mask_last_hours(inputs, absent, MISSING_HOURS)),
               readings_at(clean_table, rows, gap_columns=absent, gap_hours=MISSING_HOURS))
    for mixup in BEDSIDE_UNIT_MIXUPS:
        mixed = apply_unit_mixup(vitals, mixup)
        record("unit_mixup", mixup.column, f"{mixup.given_in} given as {mixup.canonical_unit}",
               model.score(window_inputs(model, mixed, rows)), readings_at(hourly_table(mixed, rows), rows))

    baseline_label = "NEWS2" if task == BINARY else "last value carried forward"
    headers: tuple[str, ...] = ("perturbation", "vitals", "setting", f"model {name} clean", f"model {name} perturbed",
                                "change", f"{baseline_label} clean", f"{baseline_label} perturbed",
                                "mean |change| of the " + ("risk" if task == BINARY else "forecast (/min)"))
    if task == BINARY:
        headers += ("model Brier clean", "model Brier perturbed")
    table = Table(f"Test {name} under clinical perturbations (model and {baseline_label})", headers, tuple(
        (r.perturbation, r.target, r.details["setting"], _round(r.clean), _round(r.perturbed), _round(r.change),
         _round(r.details["baseline_clean"]), _round(r.details["baseline_perturbed"]),
         _round(r.details["mean_abs_model_change"]),
         *((_round(r.details["model_brier_clean"]), _round(r.details["model_brier_perturbed"])) if task == BINARY
           else ())) for r in results))
    def label(result: PerturbationResult) -> str:
        return f"{result.perturbation}: {result.target} ({result.details['setting']})"

    worse = [r for r in results if r.change is not None]
    worst = (max(worse, key=lambda r: -r.change if task == BINARY else r.change) if worse else None)
    stays = len(rows[STAY_KEYS].drop_duplicates())
    summary = {
        "metric": name, "clean": metric(truth, clean_scores),
        "n_test_windows_used": len(rows), "n_test_stays_used": stays,
        "subsampled": stays < len(frame.loc[frame["split"] == "test", STAY_KEYS].drop_duplicates()),
        "worst_perturbation": None if worst is None else label(worst),
        "worst_change": None if worst is None else worst.change,
        "largest_mean_abs_change": label(max(results, key=lambda r: r.details["mean_abs_model_change"])),
        "measurement_cv": cvs, "missing_hours": MISSING_HOURS,
        "robustness_config_version": config.version,
        "gradient_attacks": "not run: the issue asks white-box and black-box attacks of the MLP and the CNN",
        "results": [r.as_metadata() for r in results],
    }
    text = (
        f"Clinical perturbations of the bedside vitals on {len(rows)} test windows of {stays} stays "
        f"(all test stays up to {STAY_CAP[_size(request)]}, a seeded choice beyond). Measurement noise: "
        "multiplicative Gaussian at a coefficient of variation per vital (robustness.yaml's, and for respiratory "
        "rate, SpO2 and temperature the adapter's declared values), times each multiplier. Missing: the vital not "
        f"measured in the last {MISSING_HOURS} hours of each window, carried forward from before the gap as the "
        "network and a chart would. Unit mix-ups: temperature in degF where degC is expected, SpO2 as a fraction "
        "where percent is expected; the bedside feed (ingest/vital_signs) keeps the value and not its unit, and "
        "no plausibility rule for bedside vitals exists in the quality rules, so such a reading reaches the model "
        f"unchanged. The clinical baseline ({baseline_label}) is recomputed from the same perturbed readings. "
        "The targets are never perturbed. ROC-AUC is rank-based: a perturbation that shifts every risk (a unit "
        "mix-up) can leave it unchanged or even raise it while the absolute risks are wrong; read the mean change of "
        "the risk and the Brier score beside it. No gradient attack is run on the sequence models: the issue asks "
        "white-box and black-box attacks of the tabular MLP and the CNN classifier.")
    return ReportSection("perturbations", "Clinical perturbations of the vitals", "5.4.3 adversarial testing (S8)",
                         summary=summary, tables=(table,), text=text)


def _round(value: float | None, digits: int = 4) -> float | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else round(float(value), digits)


# --------------------------------------------------------------------------------------------- V6 temporal


def _brier(truth: np.ndarray, score: np.ndarray) -> float | None:
    return float(np.mean((score - truth) ** 2)) if len(truth) else None


def temporal_section(request: EvaluationRequest, frame: pd.DataFrame, y_true: np.ndarray, scores: np.ndarray,
                     baseline: np.ndarray) -> ReportSection:
    """The test metric on the earliest and the latest third of the test windows by the only time they carry (hours
    since admission), with stay-resampled intervals of the differences; and why no true temporal split is possible.

    Binary: ROC-AUC (often undefined on the earliest third: deterioration comes late in a stay, so early windows
    are rarely positive) and the Brier score (defined on any rows). Regression: RMSE."""
    task = _task(request.spec)
    name, metric = _metric(task)
    metrics: dict[str, Callable[[np.ndarray, np.ndarray], float | None]] = {name: metric}
    if task == BINARY:
        metrics["brier"] = _brier
    test_mask = (frame["split"] == "test").to_numpy()
    test = frame[test_mask].reset_index(drop=True)
    truth, model_scores, base = y_true[test_mask], scores[test_mask], baseline[test_mask]
    hours = test[HOUR].to_numpy(dtype=float)
    summary: dict[str, Any] = {"calendar_time_released": False, "time_axis": HOUR, "metric": name,
                               "resampling_unit": "stay"}
    rows: list[tuple[Any, ...]] = []
    thirds = pd.qcut(hours, 3, labels=False, duplicates="drop") if len(test) >= 3 else None
    n_thirds = 0 if thirds is None else len(np.unique(thirds[~pd.isna(thirds)]))
    if n_thirds < 3:
        summary.update({"early": None, "late": None, "late_minus_early": None,
                        "reason": f"the {len(test)} test windows do not fall into three distinct hour ranges"})
    else:
        thirds = np.asarray(thirds, dtype=int)
        for third, label in enumerate(("earliest", "middle", "latest")):
            chosen = thirds == third
            row: tuple[Any, ...] = (label, f"{int(hours[chosen].min())}-{int(hours[chosen].max())}",
                                    int(chosen.sum()), len(test.loc[chosen, STAY_KEYS].drop_duplicates()))
            if task == BINARY:
                row += (int(truth[chosen].sum()), _round(float(truth[chosen].mean())),
                        _round(float(model_scores[chosen].mean())))
            row += tuple(_round(fn(truth[chosen], model_scores[chosen])) for fn in metrics.values())
            rows.append(row + (_round(metric(truth[chosen], base[chosen])),))
        early, late = thirds == 0, thirds == 2
        stay_codes = test.groupby(STAY_KEYS, sort=False).ngroup().to_numpy()
        rows_of = [np.flatnonzero(stay_codes == code) for code in range(stay_codes.max() + 1)]

        def differences(stays: np.ndarray) -> dict[str, float | None]:
            picked = np.concatenate([rows_of[s] for s in stays])
            first_rows, last_rows = picked[early[picked]], picked[late[picked]]
            out: dict[str, float | None] = {}
            for key, fn in metrics.items():
                first = fn(truth[first_rows], model_scores[first_rows])
                last = fn(truth[last_rows], model_scores[last_rows])
                out[key] = None if first is None or last is None else last - first
            return out

        n_boot = TEMPORAL_N_BOOT[_size(request)]
        if request.policy is not None:
            n_boot = min(n_boot, request.policy.n_boot)
        intervals = (bootstrap_intervals(differences, np.arange(len(rows_of)), n_boot=n_boot, seed=request.seed,
                                         methods=("percentile",)) if len(rows_of) >= 2 else {})
        summary.update({"n_boot": n_boot, "n_test_stays": len(rows_of),
                        "third_edges_hours": [float(hours[thirds == 0].max()), float(hours[thirds == 2].min())]})
        for key, fn in metrics.items():
            first, last = fn(truth[early], model_scores[early]), fn(truth[late], model_scores[late])
            interval = intervals.get(key)
            prefix = "" if key == name else f"{key}_"
            summary.update({
                f"{prefix}early": first, f"{prefix}late": last,
                f"{prefix}late_minus_early": None if first is None or last is None else last - first,
                f"{prefix}late_minus_early_interval": None if interval is None or interval.percentile is None
                else list(interval.percentile),
            })
            if first is None or last is None:
                summary[f"{prefix}reason"] = (f"{key} is undefined on the earliest or the latest third (no positive "
                                              "or no negative window there)")
            elif interval is not None and interval.percentile is None:
                summary[f"{prefix}reason"] = interval.reasons.get("percentile")
    baseline_label = "NEWS2" if task == BINARY else "training mean"
    headers: tuple[str, ...] = ("third", "hours since admission", "windows", "stays")
    if task == BINARY:
        headers += ("positive windows", "observed rate", "mean predicted risk")
    headers += (*(f"model {key}" for key in metrics), f"{baseline_label} {name}")
    table = Table(f"Test {name} by thirds of the test windows' hours since admission", headers, tuple(rows))
    text = (
        "The released vitals carry no calendar time: the de-identification policy (table vital_signs) lets only the "
        "hours since admission out, and removes the admission instant. The only time axis is therefore the time "
        "into the stay: the table compares the test windows of the earliest and the latest third of that axis, with "
        "a percentile interval of the difference from resampling whole test stays. This is not a temporal "
        "validation: late windows belong to longer stays and to patients still on the ward, so case mix and label "
        "prevalence differ between thirds. A true temporal split (train on earlier admissions, validate on later "
        "ones) needs (1) an admission period released by the policy, e.g. `admission: {generalise: year}` or a "
        "quarter, as observations release effective_year; (2) a split by period in curate (deterioration_splits) "
        "instead of the grouped random split; and (3) a retraining on the earlier periods only, since the model "
        "under evaluation has seen stays of every period. Today the data do not allow it; institution-held-out "
        "validation (also V6) needs the same retraining, with the split stage's institution option.")
    return ReportSection("temporal_validation", "Temporal validation: what the data allow",
                         "5.3.3 independent validation (V6)", summary=summary, tables=(table,), text=text)


# --------------------------------------------------------------------------------------------- task sections


def news2_operating_points(frame: pd.DataFrame, y_true: np.ndarray, scores: np.ndarray) -> ReportSection:
    """At the alert rate of each NEWS2 trigger (5: urgent, 7: emergency) on the test windows, the share of
    deteriorating windows NEWS2 flags and the share the model flags when it alerts on as many windows."""
    test = (frame["split"] == "test").to_numpy()
    truth, model_scores = y_true[test], scores[test]
    news2 = frame.loc[test, "news2"].to_numpy(dtype=float)
    positives = int(truth.sum())
    rows = []
    summary: dict[str, Any] = {"n_test_windows": int(test.sum()), "n_positive": positives,
                               "model_pr_auc": average_precision_or_none(truth, model_scores) if positives else None,
                               "news2_pr_auc": average_precision_or_none(truth, news2) if positives else None}
    for trigger in NEWS2_TRIGGERS:
        flagged = news2 >= trigger
        rate = float(flagged.mean()) if len(news2) else 0.0
        alerts = int(flagged.sum())
        # the model alerts on its `alerts` highest-risk windows (ties broken by order: same count as NEWS2)
        model_flagged = np.zeros(len(truth), dtype=bool)
        if alerts:
            model_flagged[np.argsort(-model_scores, kind="mergesort")[:alerts]] = True

        def share(flags: np.ndarray) -> float | None:
            return float((flags & (truth == 1)).sum() / positives) if positives else None

        def ppv(flags: np.ndarray) -> float | None:
            return float(truth[flags].mean()) if flags.any() else None

        rows.append((f"NEWS2 >= {trigger}", alerts, _round(rate), _round(share(flagged)), _round(share(model_flagged)),
                     _round(ppv(flagged)), _round(ppv(model_flagged))))
        summary[f"news2_ge_{trigger}"] = {"alert_rate": rate, "news2_sensitivity": share(flagged),
                                          "model_sensitivity_same_alert_rate": share(model_flagged),
                                          "news2_ppv": ppv(flagged), "model_ppv_same_alert_rate": ppv(model_flagged)}
    table = Table("Test windows: NEWS2 triggers and the model at the same alert rate",
                  ("trigger", "alerts", "alert rate", "NEWS2 sensitivity", "model sensitivity", "NEWS2 PPV",
                   "model PPV"), tuple(rows))
    text = ("NEWS2's clinical triggers (RCP 2017: 5 urgent response, 7 emergency response) set an alert rate on the "
            "test windows; the model is read at the same number of alerts (its highest-risk windows), so the two "
            "are compared at equal workload for the ward team. Undefined (None) where the test windows hold no "
            "positive or no alert.")
    return ReportSection("news2_operating_points", "NEWS2 triggers and the model at equal alert rate",
                         "5.3.2 baselines (V5)", summary=summary, tables=(table,), text=text)


def forecast_baselines(frame: pd.DataFrame, y_true: np.ndarray, scores: np.ndarray, train_mean: float
                       ) -> ReportSection:
    """The forecast next to the training mean and the last value carried forward (the value at the window's hour;
    the training mean where the stay has no reading yet, as training fills it), on validation and test."""
    last_value = frame["last_value"].astype(float).fillna(train_mean).to_numpy() if "last_value" in frame else None
    rows = []
    summary: dict[str, Any] = {"train_mean": train_mean}
    for split in ("validation", "test"):
        chosen = (frame["split"] == split).to_numpy()
        if not chosen.any():
            continue
        truth = y_true[chosen]
        candidates = {"model": scores[chosen], "training mean": np.full(int(chosen.sum()), train_mean)}
        if last_value is not None:
            candidates["last value carried forward"] = last_value[chosen]
        for forecast, values in candidates.items():
            metrics = regression_metric_set(truth, values)
            rows.append((split, forecast, int(chosen.sum()),
                         *(_round(metrics[m]) for m in ("mse", "mae", "rmse", "r2"))))
            summary[f"{split}_{forecast.replace(' ', '_')}_rmse"] = metrics["rmse"]
    if last_value is not None and "test_model_rmse" in summary:
        summary["beats_last_value_on_test"] = bool(summary["test_model_rmse"] <
                                                   summary["test_last_value_carried_forward_rmse"])
    table = Table("Forecast, training mean and last value carried forward",
                  ("split", "forecast", "windows", "MSE", "MAE", "RMSE", "R^2"), tuple(rows))
    text = ("The declared baseline is the training mean (the gate compares against it); the last value carried "
            "forward is the naive forecast a chart gives for free, and the one a forecast must beat to be useful. "
            "R^2 is None where the truth is constant.")
    return ReportSection("forecast_baselines", "The forecast next to its naive baselines", "5.3.2 baselines (V2, V5)",
                         summary=summary, tables=(table,), text=text)


__all__ = ["dataset", "outputs", "load_sequence_model", "mask_last_hours", "hourly_table", "readings_at", "news2_of"]
