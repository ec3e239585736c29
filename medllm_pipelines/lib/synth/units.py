"""Unit conversions between the canonical units the ground truth is drawn in
and the units each institution reports.

The generator draws every quantity once in the canonical unit of its
``codes.Concept`` and converts on output, so an institution reporting glucose
in mg/dL and one reporting mmol/L describe the same patient.
"""

from __future__ import annotations

from collections.abc import Callable

from medllm_pipelines.lib.common import codes

# mg/dL per mmol/L (molar masses: glucose 180.16 g/mol, cholesterol 386.65 g/mol).
GLUCOSE_MG_DL_PER_MMOL_L = 18.016
CHOLESTEROL_MG_DL_PER_MMOL_L = 38.67
# IFCC (mmol/mol) = (NGSP % - 2.15) * 10.929  (the IFCC-NGSP master equation).
HBA1C_IFCC_SLOPE = 10.929
HBA1C_IFCC_OFFSET = 2.15

_TO_UNIT: dict[tuple[str, str], Callable[[float], float]] = {
    (codes.FASTING_GLUCOSE.name, "mg/dL"): lambda v: v * GLUCOSE_MG_DL_PER_MMOL_L,
    (codes.TOTAL_CHOLESTEROL.name, "mg/dL"): lambda v: v * CHOLESTEROL_MG_DL_PER_MMOL_L,
    (codes.HBA1C.name, "mmol/mol"): lambda v: (v - HBA1C_IFCC_OFFSET) * HBA1C_IFCC_SLOPE,
}

# The "other" unit a mislabelled value is written in (wrong_unit defect).
CONFUSABLE_UNIT: dict[tuple[str, str], str] = {
    (codes.FASTING_GLUCOSE.name, "mg/dL"): "mmol/L",
    (codes.FASTING_GLUCOSE.name, "mmol/L"): "mg/dL",
    (codes.TOTAL_CHOLESTEROL.name, "mg/dL"): "mmol/L",
    (codes.TOTAL_CHOLESTEROL.name, "mmol/L"): "mg/dL",
}


def canonical_unit(concept_name: str) -> str:
    """The UCUM unit a concept is drawn in."""
    for concept in codes.CONCEPTS:
        if concept.name == concept_name:
            return concept.canonical_unit
    raise KeyError(concept_name)


def from_canonical(concept_name: str, value: float, unit: str) -> float:
    """Express a canonical-unit value in ``unit``."""
    if unit == canonical_unit(concept_name):
        return value
    try:
        return _TO_UNIT[(concept_name, unit)](value)
    except KeyError:
        raise ValueError(f"no conversion for {concept_name} to {unit}") from None


def convert_between(concept_name: str, value: float, from_unit: str, to_unit: str) -> float:
    """Re-express a value given in ``from_unit`` in ``to_unit`` (via the canonical unit)."""
    if from_unit == to_unit:
        return value
    canonical = canonical_unit(concept_name)
    if from_unit == canonical:
        return from_canonical(concept_name, value, to_unit)
    # Every non-canonical unit here is a linear map of the canonical one.
    zero = from_canonical(concept_name, 0.0, from_unit)
    slope = from_canonical(concept_name, 1.0, from_unit) - zero
    return from_canonical(concept_name, (value - zero) / slope, to_unit)
