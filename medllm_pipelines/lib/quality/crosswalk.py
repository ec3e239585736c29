"""Diagnosis codes from any sender's system to WHO ICD-10, through a versioned crosswalk file.

Senders code conditions in SNOMED CT (Synthea, most FHIR servers), ICD-10-CM,
ICD-10 国家临床版 2.0, WHO ICD-10 or a local dictionary. The models and cohorts
use WHO ICD-10 categories, so :func:`map_condition_code` gives each code one
of three verdicts:

* ``mapped``: a WHO ICD-10 code (ICD-10 family by validation and truncation,
  SNOMED CT and local codes through ``code_crosswalk.yaml``);
* ``invalid``: the code cannot be a code of its system (ICD-10 not in its
  edition, a SNOMED identifier failing its Verhoeff check digit, no code) -
  a data error, quarantined;
* ``unmapped``: a well-formed code the crosswalk does not map - not an error;
  cleaning counts it under ``unmapped_code`` and the row stays in the raw zone.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import yaml

from medllm_pipelines.lib.common import codes
from medllm_pipelines.lib.quality.code_validation import validate_icd10

CROSSWALK_PATH = Path(__file__).with_name("code_crosswalk.yaml")
ICD10_SYSTEMS = (codes.ICD10_WHO, codes.ICD10_CM, codes.ICD10_CN)

MAPPED, INVALID, UNMAPPED = "mapped", "invalid", "unmapped"
VIA_ICD10 = "icd10_truncation"
VIA_SNOMED = "snomed_ct_crosswalk"
VIA_LOCAL = "local_crosswalk"

_SCTID = re.compile(r"^[1-9]\d{5,17}$")
_VERHOEFF_D = (
    (0, 1, 2, 3, 4, 5, 6, 7, 8, 9), (1, 2, 3, 4, 0, 6, 7, 8, 9, 5), (2, 3, 4, 0, 1, 7, 8, 9, 5, 6),
    (3, 4, 0, 1, 2, 8, 9, 5, 6, 7), (4, 0, 1, 2, 3, 9, 5, 6, 7, 8), (5, 9, 8, 7, 6, 0, 4, 3, 2, 1),
    (6, 5, 9, 8, 7, 1, 0, 4, 3, 2), (7, 6, 5, 9, 8, 2, 1, 0, 4, 3), (8, 7, 6, 5, 9, 3, 2, 1, 0, 4),
    (9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
)
_VERHOEFF_P = (
    (0, 1, 2, 3, 4, 5, 6, 7, 8, 9), (1, 5, 7, 6, 2, 8, 3, 0, 9, 4), (5, 8, 0, 3, 7, 9, 6, 1, 4, 2),
    (8, 9, 1, 6, 0, 4, 3, 5, 2, 7), (9, 4, 5, 3, 1, 2, 6, 8, 7, 0), (4, 2, 8, 6, 5, 7, 3, 9, 0, 1),
    (2, 7, 9, 3, 8, 0, 6, 4, 1, 5), (7, 0, 4, 6, 9, 1, 3, 2, 5, 8),
)


def sctid_is_valid(value: str | None) -> bool:
    """A SNOMED CT identifier: 6-18 digits, no leading zero, Verhoeff check digit correct."""
    if not value or not _SCTID.match(value):
        return False
    check = 0
    for index, digit in enumerate(reversed(value)):
        check = _VERHOEFF_D[check][_VERHOEFF_P[index % 8][int(digit)]]
    return check == 0


@dataclass(frozen=True)
class Crosswalk:
    version: str
    snomed: dict[str, str]  # SNOMED CT concept id -> WHO ICD-10 code
    local: dict[str, dict[str, str]]  # local system URI -> code -> WHO ICD-10 code


@lru_cache(maxsize=4)
def load_crosswalk(path: Path = CROSSWALK_PATH) -> Crosswalk:
    raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    snomed = {str(k): str(v["icd10"]) for k, v in (raw.get("snomed_ct_to_icd10") or {}).items()}
    local = {
        str(system): {str(code): str(target) for code, target in (mapping or {}).items()}
        for system, mapping in (raw.get("local") or {}).items()
    }
    return Crosswalk(str(raw["version"]), snomed, local)


@dataclass(frozen=True)
class MappedCode:
    verdict: str  # MAPPED | INVALID | UNMAPPED
    icd10: str | None = None
    via: str | None = None
    problem: str | None = None  # names the system, never the code value


def map_condition_code(code_system: str | None, code: str | None, crosswalk: Crosswalk | None = None) -> MappedCode:
    """The WHO ICD-10 code of a diagnosis in any system, or why there is none."""
    crosswalk = crosswalk or load_crosswalk()
    missing = code is None or (isinstance(code, float) and code != code)  # None or NaN
    text = "" if missing else str(code).strip()
    if not text:
        return MappedCode(INVALID, problem="diagnosis code is missing")
    if code_system in ICD10_SYSTEMS:
        validated = validate_icd10(code_system, text)
        if validated.who_code is None:
            return MappedCode(INVALID, problem=validated.problem)
        return MappedCode(MAPPED, validated.who_code, VIA_ICD10)
    if code_system == codes.SNOMED_CT:
        if not sctid_is_valid(text):
            return MappedCode(INVALID, problem="code is not a valid SNOMED CT identifier (format/check digit)")
        target = crosswalk.snomed.get(text)
        if target is None:
            return MappedCode(UNMAPPED, problem="SNOMED CT concept not in the crosswalk")
        return MappedCode(MAPPED, target, VIA_SNOMED)
    target = crosswalk.local.get(code_system or "", {}).get(text)
    if target is None:
        return MappedCode(UNMAPPED, problem="code system has no crosswalk to WHO ICD-10")
    return MappedCode(MAPPED, target, VIA_LOCAL)
