"""What happens to each patient at one institution: visits, measurements,
diagnoses, prescriptions, research consent, imaging.

A plan is format-free; the FHIR, DICOM and dialogue writers all render the
same plan, which is what makes the outputs agree with each other and with
the ground truth.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time, timedelta

import numpy as np

from medllm_pipelines.lib.common import codes
from medllm_pipelines.lib.synth import catalog
from medllm_pipelines.lib.synth.ground_truth import ClinicalProfile
from medllm_pipelines.lib.synth.people import Registration

FIRST_VISIT_FROM = date(2021, 1, 4)
FIRST_VISIT_TO = date(2025, 6, 30)
LAST_VISIT = date(2025, 12, 19)  # an inpatient stay (<= 9 days) still ends in 2025
LAST_EVENT = date(2025, 12, 30)

# Consent states: target shares among patients who have any Consent.
CONSENT_NONE_RATE = 0.02
CONSENT_SHARES = {codes.CONSENT_GRANTED: 0.85, codes.CONSENT_REFUSED: 0.07, codes.CONSENT_WITHDRAWN: 0.08}
IMAGING_RATE = 0.30
DIALOGUE_RATE = 0.40

# Visit-to-visit variation around the baseline (canonical units).
_VISIT_NOISE = {
    codes.HBA1C.name: 0.25,
    codes.FASTING_GLUCOSE.name: 0.5,
    codes.TOTAL_CHOLESTEROL.name: 0.3,
    codes.BMI.name: 0.4,
    codes.SYSTOLIC_BP.name: 8.0,
    codes.DIASTOLIC_BP.name: 5.0,
    codes.HEART_RATE.name: 6.0,
}
_LIMITS = {
    codes.HBA1C.name: (4.0, 15.0),
    codes.FASTING_GLUCOSE.name: (3.3, 25.0),
    codes.TOTAL_CHOLESTEROL.name: (2.5, 10.0),
    codes.BMI.name: (15.5, 50.0),
    codes.SYSTOLIC_BP.name: (85.0, 220.0),
    codes.DIASTOLIC_BP.name: (45.0, 135.0),
    codes.HEART_RATE.name: (45.0, 140.0),
}
_DECIMALS = {codes.HBA1C.name: 1, codes.FASTING_GLUCOSE.name: 1, codes.TOTAL_CHOLESTEROL.name: 2, codes.BMI.name: 1}


@dataclass(frozen=True)
class Visit:
    """One encounter; times are local clock times in China (UTC+8)."""

    start: datetime
    end: datetime
    inpatient: bool
    values: dict[str, float]  # concept name -> value in the concept's canonical unit


@dataclass(frozen=True)
class Diagnosis:
    condition: str  # catalog key
    visit: int
    onset: date


@dataclass(frozen=True)
class Prescription:
    medication: str  # catalog key
    visit: int


@dataclass(frozen=True)
class ConsentPlan:
    state: str  # codes.CONSENT_GRANTED | _REFUSED | _WITHDRAWN | _UNKNOWN (no Consent at all)
    signed_at: datetime | None
    withdrawn_at: datetime | None
    refusal_style: str | None  # "rejected" (status rejected) | "active_deny" (active + deny)


@dataclass(frozen=True)
class PatientPlan:
    registration: Registration
    profile: ClinicalProfile
    visits: tuple[Visit, ...]
    diagnoses: tuple[Diagnosis, ...]
    prescriptions: tuple[Prescription, ...]
    consent: ConsentPlan
    imaging_visit: int | None
    has_dialogue: bool


def _visit_dates(rng: np.random.Generator) -> list[date]:
    span = (FIRST_VISIT_TO - FIRST_VISIT_FROM).days
    first = FIRST_VISIT_FROM + timedelta(days=int(rng.integers(span + 1)))
    wanted = int(rng.choice([1, 2, 3], p=[0.4, 0.35, 0.25]))
    dates = [first]
    while len(dates) < wanted:
        following = dates[-1] + timedelta(days=int(rng.integers(30, 240)))
        if following > LAST_VISIT:
            break
        dates.append(following)
    return dates


def _baseline_values(profile: ClinicalProfile) -> dict[str, float]:
    return {
        codes.HBA1C.name: profile.hba1c_percent,
        codes.FASTING_GLUCOSE.name: profile.fasting_glucose_mmol_l,
        codes.TOTAL_CHOLESTEROL.name: profile.total_cholesterol_mmol_l,
        codes.BMI.name: profile.bmi,
        codes.BODY_HEIGHT.name: profile.height_cm,
        codes.BODY_WEIGHT.name: profile.weight_kg,
        codes.SYSTOLIC_BP.name: profile.systolic_bp,
        codes.DIASTOLIC_BP.name: profile.diastolic_bp,
        codes.HEART_RATE.name: profile.heart_rate,
    }


def _varied(baseline: dict[str, float], rng: np.random.Generator) -> dict[str, float]:
    values = dict(baseline)
    for concept, sd in _VISIT_NOISE.items():
        low, high = _LIMITS[concept]
        value = float(np.clip(baseline[concept] + rng.normal(0.0, sd), low, high))
        values[concept] = round(value, _DECIMALS.get(concept, 0))
    values[codes.BODY_WEIGHT.name] = round(values[codes.BMI.name] * (values[codes.BODY_HEIGHT.name] / 100) ** 2, 1)
    return values


def _visits(registration: Registration, profile: ClinicalProfile, rng: np.random.Generator) -> tuple[Visit, ...]:
    visits = []
    baseline = _baseline_values(profile)
    for number, day in enumerate(_visit_dates(rng)):
        start = datetime.combine(day, time(int(rng.integers(8, 17)), int(rng.integers(0, 60))))
        inpatient = bool(rng.random() < 0.12)
        end = start + (timedelta(days=int(rng.integers(2, 10))) if inpatient
                       else timedelta(minutes=int(rng.integers(10, 50))))
        # The rule's inputs are exactly the home institution's first measurement.
        exact = number == 0 and registration.primary
        values = dict(baseline) if exact else _varied(baseline, rng)
        visits.append(Visit(start, end, inpatient, values))
    return tuple(visits)


def _diagnoses(profile: ClinicalProfile, visits: tuple[Visit, ...], rng: np.random.Generator) -> tuple[Diagnosis, ...]:
    chronic = [
        (catalog.T2D, profile.t2d),
        (catalog.HYPERTENSION, profile.hypertension),
        (catalog.HYPERLIPIDEMIA, profile.hyperlipidemia),
        (catalog.OBESITY, profile.obesity),
    ]
    found: list[Diagnosis] = []
    first_day = visits[0].start.date()
    for condition, present in chronic:
        if present:
            onset = first_day - timedelta(days=int(rng.integers(0, 5 * 365)))
            found.append(Diagnosis(condition, 0, onset))
    for condition, rate in ((catalog.UPPER_RESPIRATORY_INFECTION, 0.12), (catalog.GASTRITIS, 0.10),
                            (catalog.LOW_BACK_PAIN, 0.08)):
        if rng.random() < rate:
            visit = int(rng.integers(len(visits)))
            onset = visits[visit].start.date() - timedelta(days=int(rng.integers(1, 10)))
            found.append(Diagnosis(condition, visit, onset))
    return tuple(found)


def _prescriptions(diagnoses: tuple[Diagnosis, ...], rng: np.random.Generator) -> tuple[Prescription, ...]:
    treats = {catalog.T2D: (catalog.METFORMIN, 0.7), catalog.HYPERTENSION: (catalog.AMLODIPINE, 0.6),
              catalog.HYPERLIPIDEMIA: (catalog.ATORVASTATIN, 0.5)}
    found = []
    for diagnosis in diagnoses:
        if diagnosis.condition in treats:
            medication, rate = treats[diagnosis.condition]
            if rng.random() < rate:
                found.append(Prescription(medication, diagnosis.visit))
    return tuple(found)


def _consent(visits: tuple[Visit, ...], rng: np.random.Generator) -> ConsentPlan:
    if rng.random() < CONSENT_NONE_RATE:
        return ConsentPlan(codes.CONSENT_UNKNOWN, None, None, None)
    states = list(CONSENT_SHARES)
    state = states[int(rng.choice(len(states), p=list(CONSENT_SHARES.values())))]
    signed = visits[0].start + timedelta(minutes=int(rng.integers(1, 10)))
    if state == codes.CONSENT_GRANTED:
        return ConsentPlan(state, signed, None, None)
    if state == codes.CONSENT_REFUSED:
        return ConsentPlan(state, signed, None, "rejected" if rng.random() < 0.5 else "active_deny")
    latest = datetime.combine(LAST_EVENT, time(17, 0))
    withdrawn = min(signed + timedelta(days=int(rng.integers(20, 400)), hours=int(rng.integers(0, 6))), latest)
    return ConsentPlan(state, signed, withdrawn, None)


def plan_patients(registrations: list[Registration], profiles: dict[int, ClinicalProfile],
                  rng: np.random.Generator) -> list[PatientPlan]:
    """A plan per registration of one institution, in registration order."""
    plans = []
    for registration in registrations:
        profile = profiles[registration.person.index]
        visits = _visits(registration, profile, rng)
        diagnoses = _diagnoses(profile, visits, rng)
        prescriptions = _prescriptions(diagnoses, rng)
        consent = _consent(visits, rng)
        imaging_visit = int(rng.integers(len(visits))) if rng.random() < IMAGING_RATE else None
        has_dialogue = bool(rng.random() < DIALOGUE_RATE)
        plans.append(PatientPlan(registration, profile, visits, diagnoses, prescriptions, consent,
                                 imaging_visit, has_dialogue))
    return plans
