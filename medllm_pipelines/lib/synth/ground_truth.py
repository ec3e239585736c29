"""The clinical ground truth: what each synthetic person really has.

Type 2 diabetes follows a *direct logistic rule* on four quantities that are
all present in the data (age from ``birthDate``, and the baseline BMI, HbA1c
and fasting glucose Observations)::

    z(x)  = (x - centre) / scale                      # fixed centres/scales below
    logit = -1.25 + 1.3 z(HbA1c %) + 0.7 z(FPG mmol/L) + 0.3 z(BMI) + 0.3 z(age)
    P(T2D) = 1 / (1 + exp(-logit));  T2D ~ Bernoulli(P(T2D))

"Baseline" is the patient's earliest measurement at their home institution,
written exactly (to the reported precision) from the values the rule saw;
age is in years at the reference date 2026-01-01. Because the label is drawn
from the probability, no model can beat the ROC-AUC of the true probability
itself; that *Bayes-optimal* AUC is computed on each generated population and
written to the manifest. With these coefficients prevalence is about 30% and
the optimal AUC about 0.89.

Glycaemia is drawn from a shared latent factor that rises with age and BMI,
right-skewed as in a hospital population, so the four inputs are correlated
as they are in life.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from medllm_pipelines.lib.synth.people import Person


@dataclass(frozen=True)
class RuleTerm:
    feature: str
    centre: float
    scale: float
    coefficient: float


@dataclass(frozen=True)
class DiabetesRule:
    """A logistic rule whose coefficients are the truth a model can recover."""

    intercept: float
    terms: tuple[RuleTerm, ...]

    def logit(self, features: dict[str, np.ndarray]) -> np.ndarray:
        total = np.full_like(np.asarray(features[self.terms[0].feature], dtype=float), self.intercept)
        for term in self.terms:
            value = np.asarray(features[term.feature], dtype=float)
            total = total + term.coefficient * (value - term.centre) / term.scale
        return total

    def probability(self, features: dict[str, np.ndarray]) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-self.logit(features)))

    def describe(self) -> dict[str, object]:
        return {
            "kind": "logistic",
            "formula": "P(T2D) = 1 / (1 + exp(-(intercept + sum_i coefficient_i * (x_i - centre_i) / scale_i)))",
            "label": "T2D ~ Bernoulli(P(T2D)); recorded as a Condition E11.x in the institution's ICD system",
            "intercept": self.intercept,
            "terms": [
                {"feature": t.feature, "centre": t.centre, "scale": t.scale, "coefficient": t.coefficient}
                for t in self.terms
            ],
            "feature_definitions": {
                "age_years": "(2026-01-01 - birthDate) in days / 365.25",
                "bmi": "earliest BMI Observation at the home institution, kg/m2",
                "hba1c_percent": "earliest HbA1c Observation at the home institution, NGSP % "
                "(IFCC mmol/mol = (% - 2.15) * 10.929)",
                "fasting_glucose_mmol_l": "earliest fasting glucose Observation at the home institution, "
                "mmol/L (mg/dL = mmol/L * 18.016)",
            },
        }


DIABETES_RULE = DiabetesRule(
    intercept=-1.25,
    terms=(
        RuleTerm("hba1c_percent", 5.7, 0.8, 1.3),
        RuleTerm("fasting_glucose_mmol_l", 5.6, 1.2, 0.7),
        RuleTerm("bmi", 25.0, 4.0, 0.3),
        RuleTerm("age_years", 55.0, 15.0, 0.3),
    ),
)


@dataclass(frozen=True)
class ClinicalProfile:
    """A person's true baseline state, in canonical units (see ``codes.CONCEPTS``)."""

    person_index: int
    age_years: float
    height_cm: float
    bmi: float
    hba1c_percent: float
    fasting_glucose_mmol_l: float
    total_cholesterol_mmol_l: float
    systolic_bp: float
    diastolic_bp: float
    heart_rate: float
    p_t2d: float
    t2d: bool
    hypertension: bool
    hyperlipidemia: bool
    obesity: bool

    @property
    def weight_kg(self) -> float:
        return round(self.bmi * (self.height_cm / 100.0) ** 2, 1)


def draw_profiles(persons: list[Person], rng: np.random.Generator) -> list[ClinicalProfile]:
    """Baseline values and labels for every person (vectorised, one pass)."""
    n = len(persons)
    if n == 0:
        return []
    zh = np.array([p.language == "zh" for p in persons])
    male = np.array([p.sex == "male" for p in persons])
    age = np.array([p.age_years() for p in persons])

    bmi = np.clip(rng.normal(np.where(zh, 24.3, 27.0), np.where(zh, 3.6, 4.8)), 16.0, 48.0).round(1)
    height_mean = np.where(zh, np.where(male, 170.0, 158.0), np.where(male, 177.0, 163.0))
    height = np.clip(rng.normal(height_mean, 6.5), 140.0, 205.0).round(1)

    z_age = (age - 55.0) / 15.0
    z_bmi = (bmi - 25.0) / 4.0
    glycaemic = 0.35 * z_age + 0.3 * z_bmi + np.sqrt(1 - 0.35**2 - 0.3**2) * rng.standard_normal(n)
    hba1c = (3.9 + np.exp(np.log(1.7) + 0.5 * glycaemic + 0.08 * rng.standard_normal(n))).clip(4.0, 14.5).round(1)
    fpg_factor = 0.85 * glycaemic + 0.53 * rng.standard_normal(n)
    fpg = (3.3 + np.exp(np.log(2.0) + 0.5 * fpg_factor)).clip(3.5, 22.0).round(1)

    cholesterol = np.clip(rng.normal(4.9 + 0.08 * z_age + 0.1 * z_bmi, 0.95), 2.6, 9.5).round(2)
    sbp = np.clip(rng.normal(122.0 + 7.0 * z_age + 4.0 * z_bmi, 15.0), 88.0, 210.0).round(0)
    dbp = np.clip(0.55 * sbp + 10.0 + rng.normal(0.0, 7.0, n), 50.0, 130.0).round(0)
    heart_rate = np.clip(rng.normal(76.0, 10.0, n), 48.0, 130.0).round(0)

    features = {"hba1c_percent": hba1c, "fasting_glucose_mmol_l": fpg, "bmi": bmi, "age_years": age}
    p_t2d = DIABETES_RULE.probability(features)
    t2d = rng.random(n) < p_t2d
    hypertension = np.where(sbp >= 140, rng.random(n) < 0.85, rng.random(n) < 0.07)
    hyperlipidemia = np.where(cholesterol >= 6.2, rng.random(n) < 0.8, rng.random(n) < 0.04)
    obesity = (bmi >= np.where(zh, 28.0, 30.0)) & (rng.random(n) < 0.6)

    return [
        ClinicalProfile(
            person_index=persons[i].index,
            age_years=float(age[i]),
            height_cm=float(height[i]),
            bmi=float(bmi[i]),
            hba1c_percent=float(hba1c[i]),
            fasting_glucose_mmol_l=float(fpg[i]),
            total_cholesterol_mmol_l=float(cholesterol[i]),
            systolic_bp=float(sbp[i]),
            diastolic_bp=float(dbp[i]),
            heart_rate=float(heart_rate[i]),
            p_t2d=float(p_t2d[i]),
            t2d=bool(t2d[i]),
            hypertension=bool(hypertension[i]),
            hyperlipidemia=bool(hyperlipidemia[i]),
            obesity=bool(obesity[i]),
        )
        for i in range(n)
    ]


def _average_ranks(values: np.ndarray) -> np.ndarray:
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    ranks = np.empty(len(values), dtype=float)
    start = 0
    while start < len(values):
        end = start
        while end + 1 < len(values) and sorted_values[end + 1] == sorted_values[start]:
            end += 1
        ranks[order[start : end + 1]] = (start + end) / 2.0 + 1.0
        start = end + 1
    return ranks


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """ROC-AUC by the rank (Mann-Whitney) formula, ties counted half."""
    labels = np.asarray(labels, dtype=bool)
    positives = int(labels.sum())
    negatives = len(labels) - positives
    if positives == 0 or negatives == 0:
        return float("nan")
    ranks = _average_ranks(np.asarray(scores, dtype=float))
    return float((ranks[labels].sum() - positives * (positives + 1) / 2.0) / (positives * negatives))


def expected_roc_auc(probabilities: np.ndarray) -> float:
    """AUC of the true probability averaged over label draws (less noisy than one draw).

    E[AUC] ~= sum_{i,j: p_i > p_j} p_i (1 - p_j) / sum_{i != j} p_i (1 - p_j).
    """
    p = np.sort(np.asarray(probabilities, dtype=float))
    if len(p) < 2:
        return float("nan")
    negative_weight_below = np.concatenate([[0.0], np.cumsum(1.0 - p)[:-1]])
    numerator = float(np.sum(p * negative_weight_below))
    denominator = float(p.sum() * (1.0 - p).sum() - np.sum(p * (1.0 - p)))
    return numerator / denominator if denominator > 0 else float("nan")
