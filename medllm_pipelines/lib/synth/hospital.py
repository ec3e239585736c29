"""``generate_hospital``: a deterministic synthetic multi-institution hospital.

It writes, under ``out_dir``, what three institutions would send (FHIR R4
Bundles or Bulk NDJSON, DICOM studies, triage dialogues and their labels, recorded
consultations and ward rounds with the doctor's signed note (``lib/synth/consultations.py``),
bedside vital signs of a share of inpatient stays: ``lib/synth/vitals.py``) plus
the ground truth under ``_truth/`` (ignored by ingestion). Same arguments give
byte-identical files: every draw comes from a seed-derived stream, dates are
relative to the fixed reference date 2026-01-01, and DICOM UIDs are name-based.

Ground truth for type 2 diabetes (the demo target), per person::

    logit = -1.25 + 1.3 (HbA1c% - 5.7)/0.8 + 0.7 (FPG mmol/L - 5.6)/1.2
                  + 0.3 (BMI - 25)/4 + 0.3 (age - 55)/15
    P(T2D) = sigmoid(logit),  T2D ~ Bernoulli(P(T2D))

with age at 2026-01-01 and HbA1c, fasting glucose and BMI as written in the
patient's earliest Observations at their home institution. The label appears
as a Condition E11.x. Prevalence is ~30% and the Bayes-optimal ROC-AUC (that
of P(T2D) itself) ~0.89; the exact values of each run are in the manifest.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from medllm_pipelines.lib.common import codes
from medllm_pipelines.lib.synth import dialogues as dialogue_module
from medllm_pipelines.lib.synth.annotation_files import write_annotation_files
from medllm_pipelines.lib.synth.consultations import CONSULTATIONS_TRUTH_PATH, build_visit_records
from medllm_pipelines.lib.synth.defects import DefectRates
from medllm_pipelines.lib.synth.determinism import stream
from medllm_pipelines.lib.synth.dicom import (
    LESION_RATE,
    PRIVATE_ADDRESS_ELEMENT,
    PRIVATE_CREATOR,
    PRIVATE_GROUP,
    PRIVATE_PHONE_ELEMENT,
    ImagingOutput,
    write_imaging,
)
from medllm_pipelines.lib.synth.feeds import FeedOutput, write_fhir_feed
from medllm_pipelines.lib.synth.fhir import RecordBuilder
from medllm_pipelines.lib.synth.files import OutputTree, atomic_write_bytes, jsonl_bytes
from medllm_pipelines.lib.synth.hl7 import write_hl7_feed
from medllm_pipelines.lib.synth.ground_truth import (
    DIABETES_RULE,
    ClinicalProfile,
    draw_profiles,
    expected_roc_auc,
    roc_auc,
)
from medllm_pipelines.lib.synth.institutions import INSTITUTIONS, Institution
from medllm_pipelines.lib.synth.manifest import (
    IDENTITIES_PATH,
    IMAGE_TRUTH_PATH,
    MANIFEST_PATH,
    PATIENT_TRUTH_PATH,
    SynthManifest,
    previous_files,
)
from medllm_pipelines.lib.synth.people import (
    REFERENCE_DATE,
    Fakers,
    Registration,
    choose_cross_registered,
    draw_persons,
    register,
)
from medllm_pipelines.lib.synth.plans import (
    CONSENT_NONE_RATE,
    CONSENT_SHARES,
    DIALOGUE_RATE,
    IMAGING_RATE,
    PatientPlan,
    plan_patients,
)
from medllm_pipelines.lib.synth.vitals import VITALS_TRUTH_PATH, VitalsOutput, write_vitals, write_vitals_truth

GENERATOR = "medllm-synth"
GENERATOR_VERSION = "1.0.0"
CROSS_REGISTRATION_RATE = 0.02

Progress = Callable[[int, int], None]


def generate_hospital(
    out_dir: Path,
    patients: int = 1000,
    seed: int = 0,
    defect_rates: DefectRates | None = None,
    write_identities: bool = False,
    progress: Progress | None = None,
) -> SynthManifest:
    """Generate the synthetic hospital into ``out_dir`` and return its manifest.

    Args:
        out_dir: output folder (created if missing). Files an earlier run listed
            in its manifest and this run did not write are removed; nothing else is.
        patients: number of persons; ~2% of them get a second registration, so
            the number of patient records is slightly higher.
        seed: non-negative seed; same arguments give byte-identical output.
        defect_rates: seeded defect rates (``DefectRates.none()`` for a clean hospital).
        write_identities: also write ``_truth/identities.jsonl`` (direct
            identifiers per patient record) for leak-scan tests.
        progress: called as ``progress(done, total)`` after each patient record.
    """
    if patients < 1:
        raise ValueError("patients must be at least 1")
    if seed < 0:
        raise ValueError("seed must be a non-negative integer")
    rates = defect_rates if defect_rates is not None else DefectRates()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    earlier = previous_files(out_dir)
    tree = OutputTree(out_dir)

    persons = draw_persons(patients, stream(seed, "people"), Fakers(stream(seed, "faker", "people")))
    second = choose_cross_registered(persons, stream(seed, "cross-registration"), CROSS_REGISTRATION_RATE)
    registrations = register(persons, second, stream(seed, "registration"))
    profiles = draw_profiles(persons, stream(seed, "ground-truth"))
    profile_of = {profile.person_index: profile for profile in profiles}
    total = sum(len(found) for found in registrations.values())
    done = 0

    counts: dict[str, dict[str, Any]] = {}
    all_defects = []
    patient_rows: list[dict[str, Any]] = []
    image_rows: list[dict[str, Any]] = []
    identity_rows: list[dict[str, Any]] = []
    imaging_summary: dict[str, Any] = {}
    dialogue_summary: dict[str, Any] = {}
    consent_counts: dict[str, dict[str, int]] = {}
    all_annotations: list[dict[str, Any]] = []
    all_gold: dict[str, str] = {}
    vitals: list[VitalsOutput] = []
    consultation_truth: list[dict[str, Any]] = []

    for institution in INSTITUTIONS:
        code = institution.code
        plans = plan_patients(registrations[code], profile_of, stream(seed, "plans", code))
        builder = RecordBuilder(institution, stream(seed, "fhir", code), Fakers(stream(seed, "faker", "fhir", code)))
        records = []
        for plan in plans:
            records.append(builder.record(plan))
            done += 1
            if progress is not None:
                progress(done, total)
        vitals.append(write_vitals(tree, institution, plans, records, seed))  # own files and streams
        feed = write_fhir_feed(tree, institution, records, rates, stream(seed, "defects", code),
                               stream(seed, "bundle-ids", code))
        imaging = write_imaging(tree, institution, plans, seed, stream(seed, "dicom", code),
                                stream(seed, "dicom-defects", code), rates,
                                Fakers(stream(seed, "faker", "dicom", code)))
        talk = dialogue_module.build_dialogues(code, institution.language, plans, stream(seed, "dialogues", code))
        tree.write(f"{code}/dialogues/dialogues.jsonl", jsonl_bytes(talk.dialogues))
        tree.write(f"{code}/annotations/annotations.jsonl", jsonl_bytes(talk.annotations))
        write_annotation_files(tree, institution, plans, talk, imaging, seed, rates)  # brat, masks, SEG, COCO
        visits = build_visit_records(code, institution.language, plans, stream(seed, "consultations", code))
        tree.write(f"{code}/consultations/consultations.jsonl", jsonl_bytes(visits.visits))
        consultation_truth.extend(visits.truth)

        all_defects.extend(feed.defects + imaging.defects)
        counts[code] = {**_institution_counts(plans, feed, imaging, talk), "consultations": len(visits.visits)}
        consent_counts[code] = _consent_counts(plans)
        imaging_summary[code] = _imaging_counts(imaging)
        dialogue_summary[code] = {"dialogues": len(talk.dialogues), "annotations": len(talk.annotations)}
        all_annotations.extend(talk.annotations)
        all_gold.update(talk.gold)
        study_of = _study_folders(imaging)
        dialogue_of = {row["patient_mrn"]: row["dialogue_id"] for row in talk.dialogues}
        for plan in plans:
            patient_rows.append(_patient_truth(plan, study_of, dialogue_of))
            if write_identities:
                identity_rows.append(_identity(plan.registration, imaging))
        image_rows.extend(image.as_dict() for image in imaging.images)

    write_hl7_feed(tree, persons, profile_of, seed, rates, counts=counts, defects=all_defects)  # whsy: HL7 v2
    tree.write(PATIENT_TRUTH_PATH, jsonl_bytes(patient_rows))
    tree.write(IMAGE_TRUTH_PATH, jsonl_bytes(image_rows))
    write_vitals_truth(tree, vitals)
    tree.write(CONSULTATIONS_TRUTH_PATH, jsonl_bytes(consultation_truth))
    if write_identities:
        tree.write(IDENTITIES_PATH, jsonl_bytes(identity_rows))
    tree.remove_stale(earlier)

    manifest = SynthManifest(
        generator=GENERATOR,
        generator_version=GENERATOR_VERSION,
        seed=seed,
        patients=patients,
        patient_records=total,
        reference_date=REFERENCE_DATE.isoformat(),
        institutions=[_describe(institution) for institution in INSTITUTIONS],
        defect_rates=rates.as_dict(),
        counts=counts,
        defects=all_defects,
        cross_institution_persons=[
            {"person_index": index,
             "institutions": [persons[index].home_institution, second[index]]}
            for index in sorted(second)
        ],
        diabetes=_diabetes_summary(profiles, patient_rows),
        consent=_consent_summary(consent_counts),
        imaging=_imaging_summary(imaging_summary),
        dialogues=_dialogue_summary(dialogue_summary, all_annotations, all_gold),
        truth_files={
            "patients": PATIENT_TRUTH_PATH,
            "images": IMAGE_TRUTH_PATH,
            "masks": "_truth/masks/<institution>/<study>/<image>.npy",
            "identities": IDENTITIES_PATH if write_identities else None,
            "vitals": VITALS_TRUTH_PATH,
            "consultations": CONSULTATIONS_TRUTH_PATH,
        },
        files=dict(sorted(tree.written.items())),
    )
    atomic_write_bytes(out_dir / MANIFEST_PATH, manifest.to_json())
    return manifest


# --- manifest sections --------------------------------------------------------
def _describe(institution: Institution) -> dict[str, Any]:
    description = institution.describe()
    description["formats"] = {
        "fhir": institution.fhir_format,
        "dicom": "DICOM Part-10, explicit VR little endian, ISO_IR 192",
        "dialogues": "jsonl",
        "consultations": "jsonl (transcript + signed record)",
        "annotations": "jsonl",
    }
    description["units"] = {spec.concept: spec.unit for spec in institution.observations}
    return description


def _institution_counts(plans: list[PatientPlan], feed: FeedOutput, imaging: ImagingOutput,
                        talk: dialogue_module.DialogueOutput) -> dict[str, Any]:
    return {
        "patient_records": len(plans),
        "resources": dict(sorted(feed.resource_counts.items())),
        "non_fhir_json": feed.non_fhir_objects,
        "fhir_files": len(feed.files),
        "dicom_studies": imaging.studies,
        "dicom_files": len(imaging.images),
        "dialogues": len(talk.dialogues),
        "annotations": len(talk.annotations),
    }


def _consent_counts(plans: list[PatientPlan]) -> dict[str, int]:
    states = [codes.CONSENT_GRANTED, codes.CONSENT_REFUSED, codes.CONSENT_WITHDRAWN, codes.CONSENT_UNKNOWN]
    found = {state: 0 for state in states}
    for plan in plans:
        found[plan.consent.state] += 1
    return found


def _consent_summary(per_institution: dict[str, dict[str, int]]) -> dict[str, Any]:
    return {
        "intended": {"no_consent_rate": CONSENT_NONE_RATE, "shares_among_consented": CONSENT_SHARES},
        "per_institution": per_institution,
        "encoding": {
            codes.CONSENT_GRANTED: "one Consent: status active, provision.type permit, policyRule OPTIN",
            codes.CONSENT_REFUSED: "one Consent: status rejected (provision deny) or status active with "
            "provision.type deny (policyRule OPTOUT)",
            codes.CONSENT_WITHDRAWN: "an active/permit Consent plus a later Consent (later dateTime) with status "
            "inactive, provision.type deny, policyRule OPTOUT and sourceReference to the first",
            codes.CONSENT_UNKNOWN: "no Consent resource at all",
            "rule": "take the patient's latest Consent by dateTime: inactive -> withdrawn; rejected or deny -> "
            "refused; active+permit -> granted; none -> unknown",
        },
        "scope": "research (consentscope), category LOINC 57016-8",
    }


def _study_folders(imaging: ImagingOutput) -> dict[str, str]:
    return {image.patient_resource_id: f"{image.institution}/dicom/{image.study}" for image in imaging.images}


def _imaging_counts(imaging: ImagingOutput) -> dict[str, int]:
    return {
        "studies": imaging.studies,
        "images": len(imaging.images),
        "lesion_positive": sum(image.lesion for image in imaging.images),
        "truncated": sum(image.defect is not None for image in imaging.images),
    }


def _imaging_summary(per_institution: dict[str, dict[str, int]]) -> dict[str, Any]:
    totals = {key: sum(found[key] for found in per_institution.values())
              for key in ("studies", "images", "lesion_positive", "truncated")}
    return {
        **totals,
        "per_institution": per_institution,
        "intended": {"study_rate": IMAGING_RATE, "images_per_study": [1, 3], "lesion_rate": LESION_RATE},
        "image": {"rows": 64, "columns": 64, "dtype": "uint16", "bits_stored": 12, "modalities": ["CT", "MR"]},
        "masks": "uint8 .npy (1 = lesion) for every image, all zeros when lesion is false",
        "private_block": {"group": f"0x{PRIVATE_GROUP:04X}", "creator": PRIVATE_CREATOR,
                          "elements": {f"0x{PRIVATE_PHONE_ELEMENT:02X}": "phone (LO)",
                                       f"0x{PRIVATE_ADDRESS_ELEMENT:02X}": "address (LT)"}},
    }


def _dialogue_summary(per_institution: dict[str, dict[str, int]], annotations: list[dict[str, Any]],
                      gold: dict[str, str]) -> dict[str, Any]:
    return {
        "dialogues": sum(found["dialogues"] for found in per_institution.values()),
        "annotations": sum(found["annotations"] for found in per_institution.values()),
        "per_institution": per_institution,
        "intended_dialogue_rate": DIALOGUE_RATE,
        "departments": dict(dialogue_module.DEPARTMENTS),
        "annotators": list(dialogue_module.ANNOTATOR_ERROR_RATES),
        "tool": dialogue_module.ANNOTATION_TOOL,
        "guideline_version": dialogue_module.GUIDELINE_VERSION,
        "intended_agreement": dialogue_module.intended_agreement(),
        "realised_agreement": dialogue_module.realised_agreement(annotations, gold),
    }


def _diabetes_summary(profiles: list[ClinicalProfile], patient_rows: list[dict[str, Any]]) -> dict[str, Any]:
    probabilities = np.array([profile.p_t2d for profile in profiles])
    labels = np.array([profile.t2d for profile in profiles])
    per_institution: dict[str, dict[str, Any]] = {}
    for row in patient_rows:
        found = per_institution.setdefault(row["institution"], {"patient_records": 0, "t2d": 0})
        found["patient_records"] += 1
        found["t2d"] += int(row["t2d"])
    for found in per_institution.values():
        found["prevalence"] = round(found["t2d"] / found["patient_records"], 4) if found["patient_records"] else None
    return {
        "rule": DIABETES_RULE.describe(),
        "persons": len(profiles),
        "positives": int(labels.sum()),
        "prevalence": round(float(labels.mean()), 4),
        "mean_probability": round(float(probabilities.mean()), 4),
        "optimal_roc_auc": _rounded(roc_auc(probabilities, labels)),
        "expected_optimal_roc_auc": _rounded(expected_roc_auc(probabilities)),
        "optimal_roc_auc_note": "ROC-AUC of the true P(T2D) against the drawn labels over all persons; no "
        "classifier can do better on this population in expectation",
        "per_institution": per_institution,
    }


def _rounded(value: float) -> float | None:
    """Four decimals, or None where undefined (a population with one class only)."""
    return None if math.isnan(value) else round(value, 4)


# --- per-patient truth ----------------------------------------------------------
def _patient_truth(plan: PatientPlan, study_of: dict[str, str], dialogue_of: dict[str, str]) -> dict[str, Any]:
    registration = plan.registration
    profile = plan.profile
    return {
        "person_index": registration.person.index,
        "institution": registration.institution.code,
        "patient_resource_id": registration.patient_id,
        "primary_registration": registration.primary,
        "t2d": profile.t2d,
        "p_t2d": round(profile.p_t2d, 6),
        "rule_inputs": {
            "age_years": round(profile.age_years, 4),
            "bmi": profile.bmi,
            "hba1c_percent": profile.hba1c_percent,
            "fasting_glucose_mmol_l": profile.fasting_glucose_mmol_l,
        },
        "conditions": [diagnosis.condition for diagnosis in plan.diagnoses],
        "medications": [prescription.medication for prescription in plan.prescriptions],
        "consent_state": plan.consent.state,
        "encounters": len(plan.visits),
        "imaging_study": study_of.get(registration.patient_id),
        "dialogue_id": dialogue_of.get(registration.mrn),
    }


def _identity(registration: Registration, imaging: ImagingOutput) -> dict[str, Any]:
    person = registration.person
    return {
        "person_index": person.index,
        "institution": registration.institution.code,
        "mrn": registration.mrn,
        "name_zh": person.name_zh,
        "name_en": person.name_en,
        "resident_id": person.resident_id,
        "birth_date": person.birth_date.isoformat(),
        "phone": person.phone,
        "email": person.email,
        "address": person.address.text,
        "accession_numbers": imaging.accession_numbers.get(registration.patient_id, []),
    }
