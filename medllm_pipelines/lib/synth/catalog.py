"""Diagnosis and medication codes in each institution's code system.

One clinical idea (say, type 2 diabetes) has a different code and display in
ICD-10 WHO, ICD-10-CM and ICD-10 国家临床版; keeping the table here lets the
generator say "this patient has T2D" once and emit the right coding per site.
"""

from __future__ import annotations

from dataclasses import dataclass

from medllm_pipelines.lib.common import codes

T2D = "type2_diabetes"
HYPERTENSION = "hypertension"
HYPERLIPIDEMIA = "hyperlipidemia"
OBESITY = "obesity"
UPPER_RESPIRATORY_INFECTION = "upper_respiratory_infection"
GASTRITIS = "gastritis"
LOW_BACK_PAIN = "low_back_pain"

METFORMIN = "metformin"
AMLODIPINE = "amlodipine"
ATORVASTATIN = "atorvastatin"


@dataclass(frozen=True)
class Coded:
    code: str
    display: str


# condition -> code system -> (code, display); displays in the site's language.
CONDITIONS: dict[str, dict[str, Coded]] = {
    T2D: {
        codes.ICD10_WHO: Coded("E11.9", "2型糖尿病，不伴有并发症"),
        codes.ICD10_CM: Coded("E11.9", "Type 2 diabetes mellitus without complications"),
        codes.ICD10_CN: Coded("E11.900", "2型糖尿病"),
    },
    HYPERTENSION: {
        codes.ICD10_WHO: Coded("I10", "特发性（原发性）高血压"),
        codes.ICD10_CM: Coded("I10", "Essential (primary) hypertension"),
        codes.ICD10_CN: Coded("I10.x00", "高血压"),
    },
    HYPERLIPIDEMIA: {
        codes.ICD10_WHO: Coded("E78.5", "高脂血症"),
        codes.ICD10_CM: Coded("E78.5", "Hyperlipidemia, unspecified"),
        codes.ICD10_CN: Coded("E78.500", "高脂血症"),
    },
    OBESITY: {
        codes.ICD10_WHO: Coded("E66.9", "肥胖症"),
        codes.ICD10_CM: Coded("E66.9", "Obesity, unspecified"),
        codes.ICD10_CN: Coded("E66.900", "肥胖"),
    },
    UPPER_RESPIRATORY_INFECTION: {
        codes.ICD10_WHO: Coded("J06.9", "急性上呼吸道感染"),
        codes.ICD10_CM: Coded("J06.9", "Acute upper respiratory infection, unspecified"),
        codes.ICD10_CN: Coded("J06.900", "急性上呼吸道感染"),
    },
    GASTRITIS: {
        codes.ICD10_WHO: Coded("K29.7", "胃炎"),
        codes.ICD10_CM: Coded("K29.70", "Gastritis, unspecified, without bleeding"),
        codes.ICD10_CN: Coded("K29.700", "胃炎"),
    },
    LOW_BACK_PAIN: {
        codes.ICD10_WHO: Coded("M54.5", "下背痛"),
        codes.ICD10_CM: Coded("M54.50", "Low back pain, unspecified"),
        codes.ICD10_CN: Coded("M54.500", "腰痛"),
    },
}

# ICD-10-CM has a code for T2D with hyperglycaemia; the CM site uses it for
# poorly controlled patients, as coders do.
T2D_HYPERGLYCEMIA_CM = Coded("E11.65", "Type 2 diabetes mellitus with hyperglycemia")

MEDICATIONS: dict[str, dict[str, Coded]] = {
    METFORMIN: {
        codes.ATC: Coded("A10BA02", "metformin"),
        codes.RXNORM: Coded("6809", "metformin"),
    },
    AMLODIPINE: {
        codes.ATC: Coded("C08CA01", "amlodipine"),
        codes.RXNORM: Coded("17767", "amlodipine"),
    },
    ATORVASTATIN: {
        codes.ATC: Coded("C10AA05", "atorvastatin"),
        codes.RXNORM: Coded("83367", "atorvastatin"),
    },
}

MEDICATION_TEXT: dict[str, dict[str, tuple[str, str]]] = {
    # medication -> language -> (product text, dosage instruction)
    METFORMIN: {"zh": ("盐酸二甲双胍片 0.5g", "0.5g 口服 每日2次 餐后"),
                "en": ("Metformin 500 mg tablet", "500 mg by mouth twice daily with meals")},
    AMLODIPINE: {"zh": ("苯磺酸氨氯地平片 5mg", "5mg 口服 每日1次"),
                 "en": ("Amlodipine 5 mg tablet", "5 mg by mouth once daily")},
    ATORVASTATIN: {"zh": ("阿托伐他汀钙片 20mg", "20mg 口服 每晚1次"),
                   "en": ("Atorvastatin 20 mg tablet", "20 mg by mouth at bedtime")},
}

CONDITION_TEXT_EN: dict[str, str] = {
    T2D: "type 2 diabetes",
    HYPERTENSION: "hypertension",
    HYPERLIPIDEMIA: "hyperlipidemia",
    OBESITY: "obesity",
    UPPER_RESPIRATORY_INFECTION: "upper respiratory infection",
    GASTRITIS: "gastritis",
    LOW_BACK_PAIN: "low back pain",
}

CONDITION_TEXT_ZH: dict[str, str] = {
    T2D: "2型糖尿病",
    HYPERTENSION: "高血压",
    HYPERLIPIDEMIA: "高脂血症",
    OBESITY: "肥胖",
    UPPER_RESPIRATORY_INFECTION: "急性上呼吸道感染",
    GASTRITIS: "慢性胃炎",
    LOW_BACK_PAIN: "腰痛",
}


def condition_coding(condition: str, system: str, hba1c_percent: float | None = None) -> Coded:
    """The code a site using ``system`` records for ``condition``."""
    if condition == T2D and system == codes.ICD10_CM and hba1c_percent is not None and hba1c_percent >= 9.0:
        return T2D_HYPERGLYCEMIA_CM
    return CONDITIONS[condition][system]
