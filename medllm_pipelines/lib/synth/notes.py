"""Free-text clinical notes with direct identifiers embedded in prose.

Real notes repeat the patient's name, ID number, phone and sometimes address
inside sentences; that is exactly what free-text de-identification must find,
so every note here carries them (which ones is recorded in the identities file
only, never in the manifest).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from medllm_pipelines.lib.synth import catalog


@dataclass(frozen=True)
class NoteFacts:
    """What a note says; formatted values already carry the site's units."""

    name: str
    sex: str
    age: int
    id_label: str  # "身份证号" / "MRN"
    id_value: str
    phone: str
    address: str | None
    visit_date: str
    complaint_key: str
    conditions: tuple[str, ...]  # catalog keys
    medications: tuple[str, ...]  # catalog keys
    blood_pressure: str
    bmi: str
    hba1c: str
    glucose: str
    cholesterol: str
    doctor: str


_COMPLAINTS_ZH = {
    "polyuria": "口干、多饮、多尿{n}个月，体重下降约{w}kg",
    "checkup": "体检发现血糖升高{n}个月",
    "dizziness": "反复头晕{n}周",
    "fatigue": "乏力、食欲减退{n}周",
    "cough": "咳嗽、咳痰{n}天",
    "epigastric": "上腹部隐痛{n}周",
    "backpain": "腰痛{n}周，久坐后加重",
    "followup": "慢病随访，自诉无明显不适",
}
_COMPLAINTS_EN = {
    "polyuria": "increased thirst and frequent urination for {n} months with about {w} kg weight loss",
    "checkup": "elevated blood glucose found at a routine check-up {n} months ago",
    "dizziness": "recurrent dizziness for {n} weeks",
    "fatigue": "fatigue and reduced appetite for {n} weeks",
    "cough": "productive cough for {n} days",
    "epigastric": "dull epigastric pain for {n} weeks",
    "backpain": "low back pain for {n} weeks, worse after sitting",
    "followup": "routine chronic-disease follow-up, no new complaints",
}


def choose_complaint(conditions: tuple[str, ...], rng: np.random.Generator) -> str:
    """A chief complaint consistent with the patient's diagnoses."""
    options = ["followup", "fatigue", "dizziness"]
    if catalog.T2D in conditions:
        options += ["polyuria", "polyuria", "checkup"]
    if catalog.UPPER_RESPIRATORY_INFECTION in conditions:
        options += ["cough", "cough"]
    if catalog.GASTRITIS in conditions:
        options += ["epigastric", "epigastric"]
    if catalog.LOW_BACK_PAIN in conditions:
        options += ["backpain", "backpain"]
    return options[int(rng.integers(len(options)))]


def _fill(template: str, rng: np.random.Generator) -> str:
    return template.format(n=int(rng.integers(2, 12)), w=int(rng.integers(2, 8)))


def note_zh(facts: NoteFacts, rng: np.random.Generator) -> str:
    """An outpatient note (门诊病历) in Chinese."""
    sex = "男" if facts.sex == "male" else "女"
    diagnoses = "；".join(catalog.CONDITION_TEXT_ZH[c] for c in facts.conditions) or "健康查体"
    drugs = "、".join(catalog.MEDICATION_TEXT[m]["zh"][0] for m in facts.medications)
    contact = f"联系电话{facts.phone}"
    if facts.address:
        contact += f"，现住{facts.address}"
    lines = [
        f"门诊病历（{facts.visit_date}）",
        f"患者{facts.name}，{sex}，{facts.age}岁，{facts.id_label}{facts.id_value}，{contact}。",
        f"主诉：{_fill(_COMPLAINTS_ZH[facts.complaint_key], rng)}。",
        f"现病史：{facts.name}自述近期{'睡眠欠佳' if rng.random() < 0.5 else '饮食规律'}，否认发热。",
        f"查体：血压{facts.blood_pressure}，BMI {facts.bmi}。",
        f"辅助检查：糖化血红蛋白 {facts.hba1c}，空腹血糖 {facts.glucose}，总胆固醇 {facts.cholesterol}。",
        f"诊断：{diagnoses}。",
        f"处理：{drugs + '，' if drugs else ''}嘱低盐低脂饮食、适量运动，定期复查。如有不适请拨打{facts.phone}联系家属或及时就诊。",
        f"医师：{facts.doctor}",
    ]
    return "\n".join(lines)


def note_en(facts: NoteFacts, rng: np.random.Generator) -> str:
    """An outpatient progress note in English."""
    sex = "male" if facts.sex == "male" else "female"
    diagnoses = "; ".join(catalog.CONDITION_TEXT_EN[c] for c in facts.conditions) or "health check"
    drugs = ", ".join(catalog.MEDICATION_TEXT[m]["en"][0] for m in facts.medications)
    where = f" The patient lives at {facts.address}." if facts.address else ""
    lines = [
        f"Progress note, {facts.visit_date}",
        f"{facts.name} ({facts.id_label} {facts.id_value}) is a {facts.age}-year-old {sex} "
        f"who can be reached at {facts.phone}.{where}",
        f"Chief complaint: {_fill(_COMPLAINTS_EN[facts.complaint_key], rng)}.",
        f"Exam: BP {facts.blood_pressure}, BMI {facts.bmi}.",
        f"Labs: HbA1c {facts.hba1c}, fasting glucose {facts.glucose}, total cholesterol {facts.cholesterol}.",
        f"Assessment: {diagnoses}.",
        f"Plan: {drugs + '; ' if drugs else ''}diet and exercise counselling; follow up in 3 months. "
        f"Discussed results with {facts.name.split()[0]} by phone.",
        f"Signed: {facts.doctor}, MD",
    ]
    return "\n".join(lines)
