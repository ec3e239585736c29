"""The three synthetic institutions and the ways their feeds differ.

They differ as real sites do: transport format (transaction Bundles, Bulk Data
NDJSON, collection Bundles), diagnosis code system (ICD-10 WHO, ICD-10-CM,
ICD-10 国家临床版), lab coding (LOINC vs a local LIS dictionary), units
(mg/dL vs mmol/L, NGSP % vs IFCC mmol/mol), timestamp style (+08:00, UTC "Z",
date only) and language of names and notes. The ingester has to reconcile
exactly these differences.
"""

from __future__ import annotations

from dataclasses import dataclass

from medllm_pipelines.lib.common import codes

TRANSACTION_BUNDLES = "transaction_bundles"
BULK_NDJSON = "bulk_ndjson"
COLLECTION_BUNDLES = "collection_bundles"

# Timestamp styles.
LOCAL_OFFSET = "local_+08:00"
UTC_Z = "utc_z"
DATE_ONLY = "date_only"

VITAL_SIGNS = "vital-signs"
LABORATORY = "laboratory"


@dataclass(frozen=True)
class ObservationSpec:
    """How one institution codes and reports one concept."""

    concept: str  # codes.Concept.name
    system: str
    code: str
    display: str
    text: str  # label in the institution's language
    unit: str  # UCUM code, also used as the human unit
    decimals: int
    category: str


@dataclass(frozen=True)
class Institution:
    """A source site: who it is and the dialect its feed speaks."""

    code: str
    name: str
    language: str  # "zh" | "en": names, notes, dialogues
    fhir_format: str
    diagnosis_system: str
    medication_system: str
    timestamp_style: str
    share: float  # fraction of persons whose home institution this is
    zh_patient_share: float  # fraction of its own patients who are Chinese
    mrn_prefix: str
    mrn_base: int
    mrn_width: int
    patients_per_bundle: int
    observations: tuple[ObservationSpec, ...]

    @property
    def source_uri(self) -> str:
        """``meta.source`` of every resource this institution sends."""
        return f"urn:medllm:institution:{self.code}"

    def spec(self, concept: str) -> ObservationSpec:
        for spec in self.observations:
            if spec.concept == concept:
                return spec
        raise KeyError(concept)

    def describe(self) -> dict[str, object]:
        """The manifest's description of this institution (no patient data)."""
        return {
            "code": self.code,
            "name": self.name,
            "language": self.language,
            "fhir_format": self.fhir_format,
            "bundle_type": {
                TRANSACTION_BUNDLES: "transaction",
                COLLECTION_BUNDLES: "collection",
            }.get(self.fhir_format),
            "patients_per_bundle": self.patients_per_bundle if self.fhir_format != BULK_NDJSON else None,
            "timestamp_style": self.timestamp_style,
            "diagnosis_system": self.diagnosis_system,
            "medication_system": self.medication_system,
            "mrn_system": codes.mrn_system(self.code),
            "observations": [
                {
                    "concept": s.concept,
                    "system": s.system,
                    "code": s.code,
                    "unit": s.unit,
                    "category": s.category,
                    "loinc": _loinc_of(s),
                }
                for s in self.observations
            ],
        }


def _loinc_of(spec: ObservationSpec) -> str:
    if spec.system == codes.LOINC:
        return spec.code
    return codes.LOCAL_LAB_TO_LOINC[spec.code]


def _loinc_vitals(language: str) -> tuple[ObservationSpec, ...]:
    zh = language == "zh"
    return (
        ObservationSpec(codes.BMI.name, codes.LOINC, "39156-5", "Body mass index (BMI) [Ratio]",
                        "体重指数" if zh else "BMI", "kg/m2", 1, VITAL_SIGNS),
        ObservationSpec(codes.BODY_WEIGHT.name, codes.LOINC, "29463-7", "Body weight",
                        "体重" if zh else "Body weight", "kg", 1, VITAL_SIGNS),
        ObservationSpec(codes.BODY_HEIGHT.name, codes.LOINC, "8302-2", "Body height",
                        "身高" if zh else "Body height", "cm", 1, VITAL_SIGNS),
        ObservationSpec(codes.SYSTOLIC_BP.name, codes.LOINC, "8480-6", "Systolic blood pressure",
                        "收缩压" if zh else "Systolic blood pressure", "mm[Hg]", 0, VITAL_SIGNS),
        ObservationSpec(codes.DIASTOLIC_BP.name, codes.LOINC, "8462-4", "Diastolic blood pressure",
                        "舒张压" if zh else "Diastolic blood pressure", "mm[Hg]", 0, VITAL_SIGNS),
        ObservationSpec(codes.HEART_RATE.name, codes.LOINC, "8867-4", "Heart rate",
                        "心率" if zh else "Heart rate", "/min", 0, VITAL_SIGNS),
    )


HZSF = Institution(
    code="hzsf",
    name="华中示范医院",
    language="zh",
    fhir_format=TRANSACTION_BUNDLES,
    diagnosis_system=codes.ICD10_WHO,
    medication_system=codes.ATC,
    timestamp_style=LOCAL_OFFSET,
    share=0.45,
    zh_patient_share=1.0,
    mrn_prefix="",
    mrn_base=20_000_000,
    mrn_width=8,
    patients_per_bundle=1,
    observations=_loinc_vitals("zh") + (
        ObservationSpec(codes.HBA1C.name, codes.LOINC, "4548-4",
                        "Hemoglobin A1c/Hemoglobin.total in Blood", "糖化血红蛋白", "%", 1, LABORATORY),
        ObservationSpec(codes.FASTING_GLUCOSE.name, codes.LOINC, "1558-6",
                        "Fasting glucose [Mass/volume] in Serum or Plasma", "空腹血糖", "mg/dL", 0, LABORATORY),
        ObservationSpec(codes.TOTAL_CHOLESTEROL.name, codes.LOINC, "2093-3",
                        "Cholesterol [Mass/volume] in Serum or Plasma", "总胆固醇", "mg/dL", 0, LABORATORY),
    ),
)

RVIC = Institution(
    code="rvic",
    name="Riverside International Clinic",
    language="en",
    fhir_format=BULK_NDJSON,
    diagnosis_system=codes.ICD10_CM,
    medication_system=codes.RXNORM,
    timestamp_style=UTC_Z,
    share=0.30,
    zh_patient_share=0.30,
    mrn_prefix="RV",
    mrn_base=1_000_000,
    mrn_width=7,
    patients_per_bundle=0,
    observations=_loinc_vitals("en") + (
        ObservationSpec(codes.HBA1C.name, codes.LOINC, "59261-8",
                        "Hemoglobin A1c/Hemoglobin.total in Blood by IFCC protocol", "HbA1c (IFCC)",
                        "mmol/mol", 0, LABORATORY),
        ObservationSpec(codes.FASTING_GLUCOSE.name, codes.LOINC, "14771-0",
                        "Fasting glucose [Moles/volume] in Serum or Plasma", "Fasting glucose", "mmol/L", 1,
                        LABORATORY),
        ObservationSpec(codes.TOTAL_CHOLESTEROL.name, codes.LOINC, "14647-2",
                        "Cholesterol [Moles/volume] in Serum or Plasma", "Total cholesterol", "mmol/L", 2,
                        LABORATORY),
    ),
)

_JHSQ_LAB = codes.local_lab_system("jhsq")

JHSQ = Institution(
    code="jhsq",
    name="江汉社区卫生服务中心",
    language="zh",
    fhir_format=COLLECTION_BUNDLES,
    diagnosis_system=codes.ICD10_CN,
    medication_system=codes.ATC,
    timestamp_style=DATE_ONLY,
    share=0.25,
    zh_patient_share=1.0,
    mrn_prefix="JH",
    mrn_base=600_000,
    mrn_width=7,
    patients_per_bundle=50,
    observations=(
        ObservationSpec(codes.BMI.name, _JHSQ_LAB, "BMI", "体重指数", "体重指数", "kg/m2", 1, VITAL_SIGNS),
        ObservationSpec(codes.BODY_WEIGHT.name, _JHSQ_LAB, "WT", "体重", "体重", "kg", 1, VITAL_SIGNS),
        ObservationSpec(codes.BODY_HEIGHT.name, _JHSQ_LAB, "HT", "身高", "身高", "cm", 0, VITAL_SIGNS),
        ObservationSpec(codes.SYSTOLIC_BP.name, _JHSQ_LAB, "SBP", "收缩压", "收缩压", "mm[Hg]", 0, VITAL_SIGNS),
        ObservationSpec(codes.DIASTOLIC_BP.name, _JHSQ_LAB, "DBP", "舒张压", "舒张压", "mm[Hg]", 0, VITAL_SIGNS),
        ObservationSpec(codes.HEART_RATE.name, _JHSQ_LAB, "HR", "心率", "心率", "/min", 0, VITAL_SIGNS),
        ObservationSpec(codes.HBA1C.name, _JHSQ_LAB, "HBA1C", "糖化血红蛋白", "糖化血红蛋白", "%", 1, LABORATORY),
        ObservationSpec(codes.FASTING_GLUCOSE.name, _JHSQ_LAB, "GLU-F", "空腹血糖", "空腹血糖", "mmol/L", 2,
                        LABORATORY),
        ObservationSpec(codes.TOTAL_CHOLESTEROL.name, _JHSQ_LAB, "TC", "总胆固醇", "总胆固醇", "mmol/L", 2,
                        LABORATORY),
    ),
)

INSTITUTIONS: tuple[Institution, ...] = (HZSF, RVIC, JHSQ)
INSTITUTION_BY_CODE: dict[str, Institution] = {inst.code: inst for inst in INSTITUTIONS}
