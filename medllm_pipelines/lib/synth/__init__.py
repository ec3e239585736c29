"""The synthetic hospital: realistic, deterministic, deliberately imperfect source
data for every later stage, with its ground truth on the side.

Three institutions (``hzsf`` transaction Bundles, ``rvic`` Bulk NDJSON, ``jhsq``
collection Bundles) differ in code systems, units, timestamp style and
language; DICOM studies carry synthetic lesions with masks; triage dialogues
carry three annotators' labels; seeded defects are listed in the manifest.
Type 2 diabetes follows a known logistic rule (see ``hospital``), so the best
achievable ROC-AUC is known. Pure library: no Dagster import.

Names are imported on first use (PEP 562): the package's small tables (``catalog``, ``people``) are read by
the de-identifier and the service, which should not pay for importing the generator (pandas, pydicom, ~1 s).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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

_MODULE_OF = {
    **dict.fromkeys(("DEFECT_TYPES", "Defect", "DefectRates"), "defects"),
    **dict.fromkeys(("DIABETES_RULE", "DiabetesRule", "roc_auc"), "ground_truth"),
    **dict.fromkeys(("GENERATOR_VERSION", "generate_hospital"), "hospital"),
    **dict.fromkeys(("INSTITUTION_BY_CODE", "INSTITUTIONS", "Institution"), "institutions"),
    **dict.fromkeys(("IDENTITIES_PATH", "IMAGE_TRUTH_PATH", "MANIFEST_PATH", "PATIENT_TRUTH_PATH", "SynthManifest",
                     "load_manifest"), "manifest"),
    **dict.fromkeys(("REFERENCE_DATE", "is_valid_resident_id", "resident_id_check_digit"), "people"),
}


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


__all__ = sorted(_MODULE_OF)
