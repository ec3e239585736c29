"""Hourly vital signs of inpatient stays, from a written deterioration process (docs/synthetic_vitals.md).

For a share of patient records (the first inpatient stay of a record, kept with
probability :data:`STAY_SHARE_OF_INPATIENT`) the generator draws a latent
severity path and renders it as hourly vital-sign Observations (FHIR R4 Bulk
NDJSON, ``<institution>/vitals/Observation.ndjson``) linked to the stay's
inpatient Encounter, plus a Procedure "admission to intensive care unit" when
the patient deteriorates (``<institution>/vitals/Procedure.ndjson``). The files
are separate from the institution's main feed and every draw comes from its own
stream (``stream(seed, "vitals", code)``), so nothing else the generator writes
changes.

The process (:class:`VitalsProcess`), hour ``t = 0, 1, ...`` since admission; a hidden Markov chain::

    c ~ Bernoulli(p_chronic_hypoxaemia)     a COPD-like patient whose SpO2 runs 6 points lower
    s_0 ~ N(0, sd_stationary^2), regime stable
    each hour t >= 1: a stable patient starts deteriorating with probability onset_hazard, at a slope
    kappa drawn from slopes; then
        stable:        s_t = (1 - theta) s_{t-1} + sigma e_t                 (Ornstein-Uhlenbeck around 0)
        deteriorating: s_t = s_{t-1} + kappa + sigma_deteriorating e_t       (drift up)
    event hour t_e = first t >= 1 with s_t >= threshold (ICU admission)
    monitored hours T ~ U{hours_min..hours_max}; readings at t < min(t_e, T); the event is recorded
    when t_e < T
    HR = 78 + 14 s + N(0, 10^2), RR = 16 + 3 s + N(0, 2.5^2), SpO2 = min(100, 96 - 6 c - 1.6 s + N(0, 1.5^2)),
    temperature = 37.0 + 0.4 s + N(0, 0.35^2), SBP = 122 - 10 s + N(0, 12^2)  (rounded as charted)
    ACVPU = A, C, V, P, U as s + N(0, 0.5^2) crosses 2.0, 2.6, 3.2, 3.8
    each reading missing independently with probability p_missing

The label of the window ending at hour ``t`` is "ICU admission within the next
``horizon`` hours" (``t < t_e <= t + horizon``); a window is kept when its
future is observed (the event falls in the horizon, or readings go on through
``t + horizon``): ``lib/curate/sequences.window_labels``. Because the process
is known and Markov in (c, regime, s), the Bayes-optimal risk of each window
given everything observable (readings up to ``t``, ``t`` itself, no event
yet, the window kept) is computable: :func:`bayes_optimal_risk` runs the exact
forward algorithm on a severity grid.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import orjson
import pandas as pd
from scipy.special import ndtr

from medllm_pipelines.lib.common import codes
from medllm_pipelines.lib.synth.determinism import random_uuid, stream
from medllm_pipelines.lib.synth.fhir import format_datetime
from medllm_pipelines.lib.synth.files import OutputTree, jsonl_bytes
from medllm_pipelines.lib.synth.institutions import DATE_ONLY, LOCAL_OFFSET, Institution
from medllm_pipelines.lib.synth.plans import PatientPlan

VITALS_TRUTH_PATH = "_truth/vitals.jsonl"
STAY_SHARE_OF_INPATIENT = 0.65  # of the records with an inpatient stay (~21%): ~14% of records
ACVPU_SYSTEM = "urn:medllm:codesystem:acvpu"
ACVPU_LEVELS = ("A", "C", "V", "P", "U")
ACVPU_DISPLAY = {"A": "Alert", "C": "New confusion", "V": "Responds to voice", "P": "Responds to pain",
                 "U": "Unresponsive"}
ICU_ADMISSION = ("305351004", "Admission to intensive care unit")  # SNOMED CT procedure

# Numeric vital signs: name, LOINC, display, UCUM unit, decimals, (intercept, slope on s, noise sd).
NUMERIC_VITALS: tuple[tuple[str, str, str, str, int, tuple[float, float, float]], ...] = (
    ("heart_rate", "8867-4", "Heart rate", "/min", 0, (78.0, 14.0, 10.0)),
    ("respiratory_rate", "9279-1", "Respiratory rate", "/min", 0, (16.0, 3.0, 2.5)),
    ("spo2", "59408-5", "Oxygen saturation in Arterial blood by Pulse oximetry", "%", 0, (96.0, -1.6, 1.5)),
    ("temperature", "8310-5", "Body temperature", "Cel", 1, (37.0, 0.4, 0.35)),
    ("systolic_bp", "8480-6", "Systolic blood pressure", "mm[Hg]", 0, (122.0, -10.0, 12.0)),
)
ACVPU_LOINC = ("67775-7", "Level of responsiveness")
VITAL_NAMES = tuple(v[0] for v in NUMERIC_VITALS) + ("acvpu",)
LOINC_OF_VITAL = {**{v[0]: v[1] for v in NUMERIC_VITALS}, "acvpu": ACVPU_LOINC[0]}


@dataclass(frozen=True)
class VitalsProcess:
    """The parameters of the deterioration process; the docstring of this module writes it down."""

    theta: float = 0.2
    sigma: float = 0.3
    onset_hazard: float = 0.009
    slopes: tuple[float, ...] = (0.1, 0.2, 0.3)
    sigma_deteriorating: float = 0.2
    threshold: float = 3.0
    hours_min: int = 24
    hours_max: int = 72
    acvpu_cuts: tuple[float, ...] = (2.0, 2.6, 3.2, 3.8)
    acvpu_noise: float = 0.5
    p_missing: float = 0.15
    p_chronic_hypoxaemia: float = 0.15
    chronic_spo2_shift: float = -6.0

    @property
    def sd_stationary(self) -> float:
        return self.sigma / float(np.sqrt(1.0 - (1.0 - self.theta) ** 2))

    def describe(self) -> dict[str, Any]:
        return {**asdict(self), "vitals": {name: {"loinc": loinc, "unit": unit, "mean": f"{a} + {b} s",
                                                  "noise_sd": sd}
                                           for name, loinc, _, unit, _, (a, b, sd) in NUMERIC_VITALS}}


PROCESS = VitalsProcess()


@dataclass
class StayPath:
    """One simulated stay: the latent draws and what was observed (``readings`` rows are hours)."""

    chronic_hypoxaemia: bool
    onset: int | None  # hour the deteriorating regime began, None if the stay stayed stable
    slope: float | None
    planned_hours: int
    severity: np.ndarray  # s_t for t = 0 .. min(event, planned) (latent, for the truth file)
    event_hour: int | None  # recorded ICU admission hour (< planned_hours), else None
    readings: np.ndarray  # (hours, 5) numeric vitals, NaN where missing
    acvpu: np.ndarray  # (hours,) index into ACVPU_LEVELS, -1 where missing

    @property
    def hours(self) -> int:
        return int(self.readings.shape[0])


def simulate_stay(rng: np.random.Generator, process: VitalsProcess = PROCESS) -> StayPath:
    """Draw one stay from the process (latent path, event, readings with missing values)."""
    chronic = bool(rng.random() < process.p_chronic_hypoxaemia)
    planned = int(rng.integers(process.hours_min, process.hours_max + 1))
    s = float(rng.normal(0.0, process.sd_stationary))
    onset, slope = None, None
    severity = []
    event = None
    for t in range(planned):
        if t > 0:
            if slope is None and rng.random() < process.onset_hazard:
                onset, slope = t, float(process.slopes[int(rng.integers(len(process.slopes)))])
            if slope is None:
                s = (1.0 - process.theta) * s + process.sigma * float(rng.normal())
            else:
                s = s + slope + process.sigma_deteriorating * float(rng.normal())
            if s >= process.threshold:
                event = t
                break
        severity.append(s)
    path = np.array(severity)
    hours = len(path)
    readings = np.empty((hours, len(NUMERIC_VITALS)))
    for k, (_, _, _, _, decimals, (a, b, sd)) in enumerate(NUMERIC_VITALS):
        readings[:, k] = np.round(a + b * path + rng.normal(0.0, sd, hours), decimals)
    readings[:, 2] = np.minimum(readings[:, 2] + (process.chronic_spo2_shift if chronic else 0.0), 100.0)  # SpO2
    latent_level = path + rng.normal(0.0, process.acvpu_noise, hours)
    acvpu = np.searchsorted(np.array(process.acvpu_cuts), latent_level).astype(int)
    readings[rng.random(readings.shape) < process.p_missing] = np.nan
    acvpu[rng.random(hours) < process.p_missing] = -1
    return StayPath(chronic, onset, slope, planned, path, event, readings, acvpu)


# --- the Bayes-optimal risk --------------------------------------------------------
def _log_likelihood(s: np.ndarray, chronic: np.ndarray, readings: np.ndarray, acvpu: np.ndarray,
                    process: VitalsProcess) -> np.ndarray:
    """log p(readings at one hour | s, chronic) per stay and particle; ``readings`` (stays, 5), ``acvpu`` (stays,)."""
    out = np.zeros_like(s)
    for k, (name, _, _, _, decimals, (a, b, sd)) in enumerate(NUMERIC_VITALS):
        value = readings[:, k][:, None]
        seen = ~np.isnan(value)
        rounding = (10.0 ** -decimals) ** 2 / 12.0
        var = sd * sd + rounding
        mean = a + b * s + (np.where(chronic, process.chronic_spo2_shift, 0.0) if name == "spo2" else 0.0)
        z = np.where(seen, value - mean, 0.0)
        out += np.where(seen, -0.5 * z * z / var, 0.0)
    cuts = np.array([-np.inf, *process.acvpu_cuts, np.inf])
    level = acvpu[:, None]
    seen = level >= 0
    index = np.where(seen, level, 0)
    upper = ndtr((cuts[index + 1] - s) / process.acvpu_noise)
    lower = ndtr((cuts[index] - s) / process.acvpu_noise)
    out += np.where(seen, np.log(np.maximum(upper - lower, 1e-300)), 0.0)
    return out


def _grid(process: VitalsProcess, step: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cell centres of the severity grid below the threshold, and per regime the transition matrices
    (grid -> grid) and the probabilities of crossing the threshold (grid -> event)."""
    edges = np.arange(-3.0, process.threshold + step / 2, step)
    edges[-1] = process.threshold
    centres = (edges[:-1] + edges[1:]) / 2
    kernels, crossing = [], []
    for regime in range(len(process.slopes) + 1):
        if regime == 0:
            mean, sd = (1.0 - process.theta) * centres, process.sigma
        else:
            mean, sd = centres + process.slopes[regime - 1], process.sigma_deteriorating
        cdf = ndtr((edges[None, :] - mean[:, None]) / sd)
        kernel = np.diff(cdf, axis=1)
        kernel[:, 0] += cdf[:, 0]  # below the grid: kept in its lowest cell
        kernels.append(kernel)
        crossing.append(1.0 - cdf[:, -1])
    return centres, np.stack(kernels), np.stack(crossing)


def bayes_optimal_risk(stays: list[tuple[np.ndarray, np.ndarray]], horizon: int, *, step: float = 0.1,
                       process: VitalsProcess = PROCESS) -> list[np.ndarray]:
    """P(label = 1 | everything observable at hour t) per stay and hour: the exact forward algorithm.

    ``stays`` holds (readings (hours, 5), acvpu (hours,)) per stay, as :class:`StayPath` or the
    de-identified table gives them. The latent state (chronic flag, regime, severity on a grid of
    ``step``) is a hidden Markov chain, so the posterior given the readings up to ``t`` and "no
    event through t" is computed exactly up to the grid; the risk conditions as well on the window
    being kept (its future observed), with the monitored length T ~ U{hours_min..hours_max}
    independent of the path. All stays run in parallel.
    """
    if not stays:
        return []
    n = len(stays)
    length = max(r.shape[0] for r, _ in stays)
    readings = np.full((n, length, len(NUMERIC_VITALS)), np.nan)
    levels = np.full((n, length), -1, dtype=int)
    for i, (r, a) in enumerate(stays):
        readings[i, : r.shape[0]] = r
        levels[i, : len(a)] = a
    centres, kernels, crossing = _grid(process, step)
    regimes, size = kernels.shape[0], len(centres)
    hazard = process.onset_hazard
    chronic = np.array([False, True])
    # alpha: (stays, chronic, regime, grid); the prior at admission: stable, s ~ N(0, sd_stationary^2)
    prior = np.diff(ndtr((np.append(centres - step / 2, process.threshold) - 0.0) / process.sd_stationary))
    alpha = np.zeros((n, 2, regimes, size))
    alpha[:, 0, 0] = (1 - process.p_chronic_hypoxaemia) * prior
    alpha[:, 1, 0] = process.p_chronic_hypoxaemia * prior
    risk = np.full((n, length), np.nan)

    def advance(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        stable = a[..., 0, :]
        moved = [(1 - hazard) * stable @ kernels[0]]
        crossed = (1 - hazard) * stable @ crossing[0]
        for regime in range(1, regimes):
            source = a[..., regime, :] + hazard / (regimes - 1) * stable
            moved.append(source @ kernels[regime])
            crossed = crossed + source @ crossing[regime]
        return np.stack(moved, axis=-2), crossed

    for t in range(length):
        if t > 0:
            alpha, _ = advance(alpha)  # the mass that crossed is an event, which did not happen
        s = np.broadcast_to(centres, (n, 2, size)).reshape(n, 2 * size)
        flags = np.repeat(chronic, size)[None, :].repeat(n, axis=0)
        like = np.exp(_log_likelihood(s, flags, readings[:, t], levels[:, t], process)).reshape(n, 2, 1, size)
        alpha = alpha * like
        total = alpha.sum(axis=(1, 2, 3), keepdims=True)
        alpha = np.where(total > 0, alpha / np.maximum(total, 1e-300), alpha)
        beta = alpha.sum(axis=1)  # the chronic flag does not move the severity
        recorded = np.zeros(n)
        for h in range(1, horizon + 1):
            beta, crossed = advance(beta)
            recorded += crossed * _still_monitored(t + h, t, process)
        future_seen = beta.sum(axis=(1, 2)) * _still_monitored(t + horizon, t, process)
        kept = recorded + future_seen
        risk[:, t] = np.where(kept > 0, recorded / np.maximum(kept, 1e-300), np.nan)
    return [risk[i, : r.shape[0]] for i, (r, _) in enumerate(stays)]


def _still_monitored(last_hour: np.ndarray | int, t: int, process: VitalsProcess) -> np.ndarray:
    """P(T > last_hour | T > t) for T ~ U{hours_min..hours_max}."""
    low = max(t + 1, process.hours_min)
    total = max(process.hours_max - low + 1, 1)
    first = np.maximum(np.asarray(last_hour) + 1, low)
    return np.clip(process.hours_max - first + 1, 0, None) / total


def _normalised(logw: np.ndarray) -> np.ndarray:
    top = np.max(logw, axis=1, keepdims=True)
    top = np.where(np.isfinite(top), top, 0.0)
    w = np.exp(logw - top)
    total = w.sum(axis=1, keepdims=True)
    return np.where(total > 0, w / np.maximum(total, 1e-300), 0.0)


# --- FHIR rendering -------------------------------------------------------------------
@dataclass
class VitalsOutput:
    """What was written for one institution: files, resource counts and the truth rows."""

    files: list[str] = field(default_factory=list)
    stays: int = 0
    observations: int = 0
    events: int = 0
    truth: list[dict[str, Any]] = field(default_factory=list)


def _timestamp(moment: datetime, institution: Institution) -> str:
    """Monitors stamp readings to the second: a date-only site still sends instants here."""
    style = LOCAL_OFFSET if institution.timestamp_style == DATE_ONLY else institution.timestamp_style
    return format_datetime(moment, style)


def _observation(rng: np.random.Generator, institution: Institution, patient_id: str, encounter_id: str,
                 loinc: str, display: str, moment: datetime) -> dict[str, Any]:
    return {
        "resourceType": "Observation", "id": random_uuid(rng), "meta": {"source": institution.source_uri},
        "status": "final",
        "category": [{"coding": [{"system": codes.OBSERVATION_CATEGORY, "code": "vital-signs",
                                  "display": "Vital Signs"}]}],
        "code": {"coding": [{"system": codes.LOINC, "code": loinc, "display": display}], "text": display},
        "subject": {"reference": f"Patient/{patient_id}"},
        "encounter": {"reference": f"Encounter/{encounter_id}"},
        "effectiveDateTime": _timestamp(moment, institution),
    }


def choose_stays(plans: list[PatientPlan], rng: np.random.Generator) -> list[tuple[int, int]]:
    """(plan index, visit index) of the monitored stays: a record's first inpatient visit, with a share."""
    chosen = []
    for number, plan in enumerate(plans):
        inpatient = [v for v, visit in enumerate(plan.visits) if visit.inpatient]
        if inpatient and rng.random() < STAY_SHARE_OF_INPATIENT:
            chosen.append((number, inpatient[0]))
    return chosen


def write_vitals(tree: OutputTree, institution: Institution, plans: list[PatientPlan],
                 records: list[list[dict[str, Any]]], seed: int) -> VitalsOutput:
    """Write the institution's vitals NDJSON files; ``records`` are the FHIR resources of ``plans``."""
    rng = stream(seed, "vitals", institution.code)
    ids = stream(seed, "vitals-ids", institution.code)
    output = VitalsOutput()
    observations: list[bytes] = []
    procedures: list[bytes] = []
    for plan_number, visit_number in choose_stays(plans, rng):
        plan, resources = plans[plan_number], records[plan_number]
        encounter_id = resources[1 + visit_number]["id"]  # record(): Patient, then one Encounter per visit
        patient_id = plan.registration.patient_id
        admitted = plan.visits[visit_number].start
        path = simulate_stay(rng, PROCESS)
        for hour in range(path.hours):
            moment = admitted + timedelta(hours=hour, minutes=int(rng.integers(0, 10)))
            for k, (_, loinc, display, unit, decimals, _) in enumerate(NUMERIC_VITALS):
                value = path.readings[hour, k]
                if np.isnan(value):
                    continue
                resource = _observation(ids, institution, patient_id, encounter_id, loinc, display, moment)
                number = int(value) if decimals == 0 else round(float(value), decimals)
                resource["valueQuantity"] = {"value": number, "unit": unit, "system": codes.UCUM, "code": unit}
                observations.append(orjson.dumps(resource) + b"\n")
            if path.acvpu[hour] >= 0:
                level = ACVPU_LEVELS[path.acvpu[hour]]
                resource = _observation(ids, institution, patient_id, encounter_id, *ACVPU_LOINC, moment)
                resource["valueCodeableConcept"] = {"coding": [{"system": ACVPU_SYSTEM, "code": level,
                                                                "display": ACVPU_DISPLAY[level]}],
                                                    "text": ACVPU_DISPLAY[level]}
                observations.append(orjson.dumps(resource) + b"\n")
        if path.event_hour is not None:
            procedures.append(orjson.dumps(_icu_admission(ids, institution, patient_id, encounter_id,
                                                          admitted + timedelta(hours=path.event_hour))) + b"\n")
        output.stays += 1
        output.events += path.event_hour is not None
        output.truth.append({
            "institution": institution.code, "patient_resource_id": patient_id, "encounter_id": encounter_id,
            "chronic_hypoxaemia": path.chronic_hypoxaemia, "onset_hour": path.onset, "slope": path.slope,
            "planned_hours": path.planned_hours, "hours_observed": path.hours, "event_hour": path.event_hour,
        })
    output.observations = len(observations)
    folder = f"{institution.code}/vitals"
    for name, lines in (("Observation", observations), ("Procedure", procedures)):
        if lines:
            tree.write(f"{folder}/{name}.ndjson", b"".join(lines))
            output.files.append(f"{folder}/{name}.ndjson")
    return output


def _icu_admission(rng: np.random.Generator, institution: Institution, patient_id: str, encounter_id: str,
                   moment: datetime) -> dict[str, Any]:
    code, display = ICU_ADMISSION
    return {
        "resourceType": "Procedure", "id": random_uuid(rng), "meta": {"source": institution.source_uri},
        "status": "completed",
        "code": {"coding": [{"system": codes.SNOMED_CT, "code": code, "display": display}], "text": display},
        "subject": {"reference": f"Patient/{patient_id}"},
        "encounter": {"reference": f"Encounter/{encounter_id}"},
        "performedDateTime": _timestamp(moment, institution),
    }


def write_vitals_truth(tree: OutputTree, outputs: list[VitalsOutput]) -> dict[str, Any]:
    """The per-stay truth file and the summary the manifest's ``truth_files`` points to."""
    rows = [row for output in outputs for row in output.truth]
    tree.write(VITALS_TRUTH_PATH, jsonl_bytes(rows))
    return {"stays": len(rows), "icu_admissions": sum(row["event_hour"] is not None for row in rows)}


def stays_as_table(paths: list[StayPath]) -> pd.DataFrame:
    """Simulated stays laid out as ``deidentify/vital_signs`` releases them (for tests and benchmarks)."""
    rows = []
    for number, path in enumerate(paths):
        for hour in range(path.hours):
            values = path.readings[hour]
            if np.isnan(values).all() and path.acvpu[hour] < 0:
                continue
            rows.append({"patient_pseudonym": f"p_{number:06d}", "institution": "sim", "stay_number": 1,
                         "hours_since_admission": hour,
                         **{name: float(values[k]) for k, name in enumerate(v[0] for v in NUMERIC_VITALS)},
                         "acvpu": ACVPU_LEVELS[path.acvpu[hour]] if path.acvpu[hour] >= 0 else None,
                         "icu_admission_hour": float(path.event_hour) if path.event_hour is not None else np.nan})
    return pd.DataFrame(rows)
