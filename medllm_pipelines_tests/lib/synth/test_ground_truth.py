"""The diabetes rule is known, learnable from the data as written, and well calibrated in size."""

from __future__ import annotations

import math
from collections import defaultdict
from datetime import date

import numpy as np
import pytest

from medllm_pipelines.lib.synth import DIABETES_RULE, roc_auc
from medllm_pipelines.lib.synth.determinism import stream
from medllm_pipelines.lib.synth.ground_truth import draw_profiles, expected_roc_auc
from medllm_pipelines.lib.synth.people import Fakers, draw_persons
from medllm_pipelines.lib.synth.units import convert_between
from medllm_pipelines_tests.lib.synth.conftest import Hospital

REFERENCE = date(2026, 1, 1)
RULE_CODES = {  # Observation code -> (rule feature, concept, reported unit handled by convert_between)
    "4548-4": ("hba1c_percent", "hba1c"), "59261-8": ("hba1c_percent", "hba1c"), "HBA1C": ("hba1c_percent", "hba1c"),
    "1558-6": ("fasting_glucose_mmol_l", "fasting_glucose"), "14771-0": ("fasting_glucose_mmol_l", "fasting_glucose"),
    "GLU-F": ("fasting_glucose_mmol_l", "fasting_glucose"),
    "39156-5": ("bmi", "bmi"), "BMI": ("bmi", "bmi"),
}
CANONICAL = {"hba1c": "%", "fasting_glucose": "mmol/L", "bmi": "kg/m2"}


@pytest.fixture(scope="module")
def population() -> tuple[np.ndarray, np.ndarray]:
    persons = draw_persons(3000, stream(21, "people"), Fakers(stream(21, "faker")))
    profiles = draw_profiles(persons, stream(21, "truth"))
    return np.array([p.p_t2d for p in profiles]), np.array([p.t2d for p in profiles])


def test_prevalence_is_in_the_target_range(population: tuple[np.ndarray, np.ndarray]) -> None:
    _, labels = population
    assert 0.25 <= labels.mean() <= 0.35


def test_bayes_optimal_auc_is_in_the_target_range(population: tuple[np.ndarray, np.ndarray]) -> None:
    probabilities, labels = population
    assert 0.85 <= roc_auc(probabilities, labels) <= 0.93
    assert 0.85 <= expected_roc_auc(probabilities) <= 0.93


@pytest.mark.parametrize(("scores", "labels", "expected"), [
    ([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1], 1.0),
    ([0.9, 0.8, 0.2, 0.1], [0, 0, 1, 1], 0.0),
    ([0.5, 0.5, 0.5, 0.5], [0, 1, 0, 1], 0.5),
    ([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1], 0.75),
])
def test_roc_auc_matches_hand_computed_values(scores: list[float], labels: list[int], expected: float) -> None:
    assert roc_auc(np.array(scores), np.array(labels)) == pytest.approx(expected)


def test_manifest_reports_the_rule_and_its_numbers(clean_hospital: Hospital) -> None:
    diabetes = clean_hospital.manifest.diabetes
    assert diabetes["rule"]["intercept"] == DIABETES_RULE.intercept
    assert [t["feature"] for t in diabetes["rule"]["terms"]] == [t.feature for t in DIABETES_RULE.terms]
    primary = [row for row in clean_hospital.patient_truth if row["primary_registration"]]
    assert diabetes["positives"] == sum(row["t2d"] for row in primary)
    assert diabetes["prevalence"] == pytest.approx(diabetes["positives"] / clean_hospital.manifest.patients, abs=1e-4)
    probabilities = np.array([row["p_t2d"] for row in primary])
    labels = np.array([row["t2d"] for row in primary])
    assert diabetes["optimal_roc_auc"] == pytest.approx(roc_auc(probabilities, labels), abs=1e-3)


def test_the_rule_can_be_recomputed_from_the_written_data(clean_hospital: Hospital) -> None:
    """Age from birthDate plus the earliest home-institution labs reproduce P(T2D)."""
    truth = {(row["institution"], row["patient_resource_id"]): row
             for row in clean_hospital.patient_truth if row["primary_registration"]}
    checked = 0
    for institution in ("hzsf", "rvic", "jhsq"):
        birth: dict[str, date] = {}
        earliest: dict[str, dict[str, tuple[str, float]]] = defaultdict(dict)
        for _, _, resource in clean_hospital.readable_resources(institution):
            if resource["resourceType"] == "Patient":
                birth[resource["id"]] = date.fromisoformat(resource["birthDate"])
            elif resource["resourceType"] == "Observation" and resource["code"]["coding"][0]["code"] in RULE_CODES:
                feature, concept = RULE_CODES[resource["code"]["coding"][0]["code"]]
                patient = resource["subject"]["reference"].rsplit("/", 1)[-1].removeprefix("urn:uuid:")
                quantity = resource["valueQuantity"]
                value = convert_between(concept, float(quantity["value"]), quantity["code"], CANONICAL[concept])
                when = resource["effectiveDateTime"]
                if feature not in earliest[patient] or when < earliest[patient][feature][0]:
                    earliest[patient][feature] = (when, value)
        for patient, features in earliest.items():
            row = truth.get((institution, patient))
            if row is None:
                continue
            inputs = {name: np.array([value]) for name, (_, value) in features.items()}
            inputs["age_years"] = np.array([(REFERENCE - birth[patient]).days / 365.25])
            recomputed = float(DIABETES_RULE.probability(inputs)[0])
            assert math.isclose(recomputed, row["p_t2d"], abs_tol=0.03), (institution, recomputed, row["p_t2d"])
            checked += 1
    assert checked == len(truth)
