"""The synthetic hospital: realistic, deterministic, deliberately imperfect source
data for every later stage, with its ground truth on the side.

Three institutions (``hzsf`` transaction Bundles, ``rvic`` Bulk NDJSON, ``jhsq``
collection Bundles) differ in code systems, units, timestamp style and
language; DICOM studies carry synthetic lesions with masks; triage dialogues
carry three annotators' labels; seeded defects are listed in the manifest.
Type 2 diabetes follows a known logistic rule (see ``hospital``), so the best
achievable ROC-AUC is known. Pure library: no Dagster import.
"""

from __future__ import annotations

from medllm_pipelines.lib.synth.defects import DEFECT_TYPES, Defect, DefectRates
from medllm_pipelines.lib.synth.ground_truth import DIABETES_RULE, DiabetesRule, roc_auc
from medllm_pipelines.lib.synth.hospital import GENERATOR_VERSION, generate_hospital
from medllm_pipelines.lib.synth.institutions import INSTITUTION_BY_CODE, INSTITUTIONS, Institution
from medllm_pipelines.lib.synth.manifest import (
    IDENTITIES_PATH,
    IMAGE_TRUTH_PATH,
    MANIFEST_PATH,
    PATIENT_TRUTH_PATH,
    SynthManifest,
    load_manifest,
)
from medllm_pipelines.lib.synth.people import REFERENCE_DATE, is_valid_resident_id, resident_id_check_digit

__all__ = [
    "DEFECT_TYPES",
    "DIABETES_RULE",
    "GENERATOR_VERSION",
    "IDENTITIES_PATH",
    "IMAGE_TRUTH_PATH",
    "INSTITUTIONS",
    "INSTITUTION_BY_CODE",
    "MANIFEST_PATH",
    "PATIENT_TRUTH_PATH",
    "REFERENCE_DATE",
    "Defect",
    "DefectRates",
    "DiabetesRule",
    "Institution",
    "SynthManifest",
    "generate_hospital",
    "is_valid_resident_id",
    "load_manifest",
    "resident_id_check_digit",
    "roc_auc",
]
