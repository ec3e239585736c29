"""Scenario A4 (clause 6.2.4): type 2 diabetes risk from a patient's FHIR Bundle, explained, with next steps.

``RiskAssessor`` reads the Bundle with the platform's own code, unit and feature
harmonisation, scores it with the trained ``t2d_risk`` TabularPredictor, explains
the probability with exact Shapley values, proposes guideline-based next steps
(``guidelines.yaml``) and returns a FHIR R4 RiskAssessment; ``feedback_record``
validates a clinician's feedback on any scenario's result.
"""

from __future__ import annotations

from medllm_pipelines.lib.scenarios.diagnosis.assessor import RiskAssessor
from medllm_pipelines.lib.scenarios.diagnosis.bundle import FeatureExtraction
from medllm_pipelines.lib.scenarios.diagnosis.feedback import feedback_record

__all__ = ["FeatureExtraction", "RiskAssessor", "feedback_record"]
