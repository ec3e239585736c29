"""Code systems, identifier systems and concept codes shared by the synthetic
hospital (which writes them) and the parsers (which read them).

Keeping them in one module is what lets a test say "the generator and the
ingester agree" without string copies drifting apart.
"""

from __future__ import annotations

from dataclasses import dataclass

# --- code systems -----------------------------------------------------------
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
ICD10_WHO = "http://hl7.org/fhir/sid/icd-10"
ICD10_CM = "http://hl7.org/fhir/sid/icd-10-cm"
# ICD-10 国家临床版 2.0 (China's national clinical edition): six-character
# codes such as E11.900. No canonical FHIR URI exists; this is ours.
ICD10_CN = "urn:medllm:codesystem:icd-10-cn-clinical-2.0"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
ATC = "http://www.whocc.no/atc"
SNOMED_CT = "http://snomed.info/sct"
CONSENT_SCOPE = "http://terminology.hl7.org/CodeSystem/consentscope"
CONSENT_CATEGORY = "http://loinc.org"  # 57016-8 Privacy policy acknowledgment
OBSERVATION_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
IDENTIFIER_TYPE = "http://terminology.hl7.org/CodeSystem/v2-0203"

# --- identifier systems -----------------------------------------------------
# 居民身份证号 (PRC resident identity card number, GB 11643-1999).
PRC_RESIDENT_ID = "urn:oid:2.16.156.10011.1.5"
# Per-institution MRN systems are "urn:medllm:institution:<code>:mrn".


def mrn_system(institution_code: str) -> str:
    """Identifier system of an institution's medical record numbers."""
    return f"urn:medllm:institution:{institution_code}:mrn"


# Local lab code system of an institution that does not code labs in LOINC.
def local_lab_system(institution_code: str) -> str:
    return f"urn:medllm:institution:{institution_code}:lab-codes"


@dataclass(frozen=True)
class Concept:
    """A clinical quantity the platform understands, with its canonical unit."""

    name: str
    canonical_loinc: str
    canonical_unit: str  # UCUM


# Canonical concepts used by features. Several LOINC codes may map to one
# concept (mass vs molar glucose, NGSP vs IFCC HbA1c).
HBA1C = Concept("hba1c", "4548-4", "%")
FASTING_GLUCOSE = Concept("fasting_glucose", "14771-0", "mmol/L")
BMI = Concept("bmi", "39156-5", "kg/m2")
BODY_WEIGHT = Concept("body_weight", "29463-7", "kg")
BODY_HEIGHT = Concept("body_height", "8302-2", "cm")
SYSTOLIC_BP = Concept("systolic_bp", "8480-6", "mm[Hg]")
DIASTOLIC_BP = Concept("diastolic_bp", "8462-4", "mm[Hg]")
HEART_RATE = Concept("heart_rate", "8867-4", "/min")
TOTAL_CHOLESTEROL = Concept("total_cholesterol", "14647-2", "mmol/L")

CONCEPTS: tuple[Concept, ...] = (
    HBA1C,
    FASTING_GLUCOSE,
    BMI,
    BODY_WEIGHT,
    BODY_HEIGHT,
    SYSTOLIC_BP,
    DIASTOLIC_BP,
    HEART_RATE,
    TOTAL_CHOLESTEROL,
)

# LOINC codes the synthetic hospital may emit, with the concept they measure.
# (LOINC code, UCUM unit it is reported in) -> concept name
LOINC_VARIANTS: dict[str, str] = {
    "4548-4": "hba1c",  # Hemoglobin A1c/Hemoglobin.total in Blood (%), NGSP
    "59261-8": "hba1c",  # Hemoglobin A1c/Hemoglobin.total in Blood (mmol/mol), IFCC
    "1558-6": "fasting_glucose",  # Fasting glucose [Mass/volume] in Serum or Plasma (mg/dL)
    "14771-0": "fasting_glucose",  # Fasting glucose [Moles/volume] in Serum or Plasma (mmol/L)
    "39156-5": "bmi",
    "29463-7": "body_weight",
    "8302-2": "body_height",
    "8480-6": "systolic_bp",
    "8462-4": "diastolic_bp",
    "8867-4": "heart_rate",
    "2093-3": "total_cholesterol",  # mg/dL
    "14647-2": "total_cholesterol",  # mmol/L
}

# Type 2 diabetes, the demo target, in each diagnosis code system.
T2D_CODE_PREFIXES: dict[str, str] = {
    ICD10_WHO: "E11",
    ICD10_CM: "E11",
    ICD10_CN: "E11",
}

# Consent states after reading a patient's Consent history.
CONSENT_GRANTED = "granted"
CONSENT_REFUSED = "refused"
CONSENT_WITHDRAWN = "withdrawn"
CONSENT_UNKNOWN = "unknown"
# Consent.provision.type of the consent row an erasure request (FHIR DELETE of a Patient) becomes:
# the person's consent ends for good (a later grant does not restore it).
ERASURE_REQUEST = "erasure_request"

# A community hospital that codes its labs locally ships this mapping with its
# feed (as real sites do with their LIS dictionary). local code -> LOINC code.
LOCAL_LAB_TO_LOINC: dict[str, str] = {
    "GLU-F": "14771-0",
    "HBA1C": "4548-4",
    "TC": "14647-2",
    "BMI": "39156-5",
    "WT": "29463-7",
    "HT": "8302-2",
    "SBP": "8480-6",
    "DBP": "8462-4",
    "HR": "8867-4",
}
