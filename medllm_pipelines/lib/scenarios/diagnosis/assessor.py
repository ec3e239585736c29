"""T2D risk assessment of one patient's FHIR Bundle: probability, explanation, next steps, FHIR RiskAssessment.

Everything costly happens once in ``RiskAssessor.__init__`` (rules, unit converters,
the compiled preprocessing, the coalition plan, the background); a request reads
the bundle, scores one row and, when asked, explains it with exact Shapley values.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from medllm_pipelines.lib.common import codes
from medllm_pipelines.lib.curate.spec import ModelSpec, load_spec
from medllm_pipelines.lib.deidentify.policy import load_policy
from medllm_pipelines.lib.evaluate.robustness import PlausibilityFilter
from medllm_pipelines.lib.ingest.fhir_r4 import normalise_r4_to_r4b
from medllm_pipelines.lib.ingest.fhir_validation import ResourceValidator
from medllm_pipelines.lib.quality.cleaning import load_rules
from medllm_pipelines.lib.quality.crosswalk import load_crosswalk
from medllm_pipelines.lib.scenarios.diagnosis.bundle import BundleReader, FeatureExtraction
from medllm_pipelines.lib.scenarios.diagnosis.guidelines import Guidelines, load_guidelines
from medllm_pipelines.lib.scenarios.diagnosis.scoring import CompiledPredictor, RawRow, ShapleyExplainer
from medllm_pipelines.lib.train.predictor import TabularPredictor

__all__ = ["RISK_PROBABILITY_SYSTEM", "SPEC_ID", "RiskAssessor"]

SPEC_ID = "t2d_risk"
RISK_PROBABILITY_SYSTEM = "http://terminology.hl7.org/CodeSystem/risk-probability"
OUTCOME_DISPLAY = {"E11": "Type 2 diabetes mellitus"}
PROBABILITY_DECIMALS = 4


class RiskAssessor:
    """Type 2 diabetes risk from a FHIR Bundle with the trained ``t2d_risk`` TabularPredictor."""

    def __init__(self, predictor: TabularPredictor, *, model: dict[str, Any] | None = None,
                 background: pd.DataFrame | None = None, spec: ModelSpec | None = None,
                 guidelines: Guidelines | None = None, max_background: int = 64) -> None:
        """``background``: raw feature rows (model input columns) for the Shapley baseline, at most
        ``max_background`` of them used (a seeded sample); None: the preprocessing's fitted medians."""
        self.predictor = predictor
        self.spec = spec or load_spec(SPEC_ID)
        self.model = self._model_info(model, predictor)
        self.guidelines = guidelines or load_guidelines()
        rules = load_rules()
        self.reader = BundleReader(self.spec, predictor.feature_columns, rules=rules,
                                   plausibility=PlausibilityFilter.from_rules(rules), crosswalk=load_crosswalk(),
                                   policy=load_policy())
        self.compiled = CompiledPredictor(predictor)
        self.explainer = ShapleyExplainer(self.compiled, background, max_background=max_background)
        self.output_validator = ResourceValidator()
        self.outcome_code = self.spec.target_icd10_category or "E11"

    @staticmethod
    def _model_info(model: dict[str, Any] | None, predictor: TabularPredictor) -> dict[str, str]:
        if model is None:
            fingerprint = str(predictor.spec.get("preprocessing_fingerprint") or "")
            return {"name": SPEC_ID, "version": fingerprint[:12] or "unversioned"}
        if not all(isinstance(model.get(k), str) and model.get(k) for k in ("name", "version")):
            raise ValueError("model must be {'name': str, 'version': str}")
        return {"name": str(model["name"]), "version": str(model["version"])}

    @property
    def threshold(self) -> float:
        return self.predictor.threshold

    def features_from_bundle(self, bundle: Mapping[str, Any]) -> FeatureExtraction:
        """The harmonised feature row (raises ScenarioInputError with a machine-readable reason)."""
        return self.reader.read(bundle)

    def _explanation(self, row: RawRow, probability: float) -> tuple[list[dict[str, Any]], float]:
        contributions, full, baseline = self.explainer.explain(row)
        values = [*(float(v) for v in row.numeric), *row.categorical]
        explanation = [
            {"feature": name, "value": round(value, 4) if isinstance(value, float) else value,
             "contribution": float(phi), **({"imputed": True} if name in row.imputed else {})}
            for name, value, phi in zip(self.explainer.players, values, contributions, strict=True)
        ]
        explanation.sort(key=lambda item: -abs(item["contribution"]))
        return explanation, baseline

    def assess(self, bundle: Mapping[str, Any], *, explain: bool = True) -> dict[str, Any]:
        extraction = self.features_from_bundle(bundle)
        row = self.compiled.raw_row(extraction.features)
        probability = self.compiled.probability(row)
        level = self.guidelines.risk_level(probability, self.threshold)
        warnings = list(extraction.warnings)
        if row.imputed:
            warnings.append({"code": "imputed_inputs",
                             "detail": "not measured, imputed by the model's preprocessing: " + ", ".join(row.imputed)})
        result: dict[str, Any] = {
            "probability": round(probability, PROBABILITY_DECIMALS),
            "threshold": self.threshold,
            "risk_level": level,
            "features": {name: (round(v, 4) if isinstance(v, float) else v) for name, v in extraction.features.items()},
        }
        if explain:
            explanation, baseline = self._explanation(row, probability)
            result["explanation"] = explanation
            result["baseline_probability"] = round(baseline, 6)
            result["explanation_method"] = f"exact Shapley values over all coalitions ({self.explainer.background_kind})"
        result["next_steps"] = self.guidelines.next_steps(extraction.features, extraction.conditions, level)
        result["risk_assessment"] = self.risk_assessment(extraction, probability, level)
        result["warnings"] = warnings
        result["model"] = dict(self.model)
        result["rules_version"] = self.guidelines.version
        return result

    def risk_assessment(self, extraction: FeatureExtraction, probability: float, level: str) -> dict[str, Any]:
        """A FHIR R4 RiskAssessment, validated as ingest validates (fhir.resources R4B, shape-cached)."""
        outcome = {"coding": [{"system": codes.ICD10_WHO, "code": self.outcome_code,
                               "display": OUTCOME_DISPLAY.get(self.outcome_code, self.outcome_code)}]}
        resource: dict[str, Any] = {
            "resourceType": "RiskAssessment",
            "status": "final",
            "subject": ({"reference": extraction.patient_reference} if extraction.patient_reference
                        else {"display": "the Patient of the submitted Bundle"}),
            "occurrenceDateTime": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "method": {"text": f"{self.model['name']} {self.model['version']}: "
                               f"{self.spec.description.strip()}"},
            "prediction": [{
                "outcome": outcome,
                "probabilityDecimal": round(probability, PROBABILITY_DECIMALS),
                "qualitativeRisk": {"coding": [{"system": RISK_PROBABILITY_SYSTEM, "code": level}]},
            }],
            "note": [{"text": f"model {self.model['name']} version {self.model['version']}; decision threshold "
                              f"{self.threshold}; guideline rules {self.guidelines.version}. "
                              "Decision support, not a diagnosis."}],
        }
        basis = extraction.basis
        if basis:
            resource["basis"] = [{"reference": reference} for reference in basis]
        error = self.output_validator.validate(normalise_r4_to_r4b(resource)[0])
        if error is not None:  # our construction, not the caller's input: a defect to surface loudly
            raise RuntimeError(f"built an invalid RiskAssessment: {type(error).__name__}")
        return resource

    def probabilities(self, frame: pd.DataFrame) -> np.ndarray:
        """The fast path on a frame of raw rows (benchmarks and equivalence checks against predict_proba)."""
        rows = [self.compiled.raw_row(record) for record in frame[self.predictor.feature_columns].to_dict("records")]
        return np.array([self.compiled.probability(row) for row in rows])
