"""FHIR R4 resources (as plain dicts) for one patient plan, in an institution's dialect.

Resources are built as JSON-ready dicts rather than ``fhir.resources`` models:
building is then fast enough for thousands of patients, and defects (which
are by definition invalid) can be injected into the same structures. Tests
validate every non-defective resource with ``fhir.resources.R4B``.
"""

from __future__ import annotations

import base64
from datetime import date, datetime, timedelta
from typing import Any

import numpy as np

from medllm_pipelines.lib.common import codes
from medllm_pipelines.lib.synth import catalog
from medllm_pipelines.lib.synth.determinism import random_uuid
from medllm_pipelines.lib.synth.institutions import (
    BULK_NDJSON,
    DATE_ONLY,
    LABORATORY,
    LOCAL_OFFSET,
    UTC_Z,
    Institution,
    ObservationSpec,
)
from medllm_pipelines.lib.synth.notes import NoteFacts, choose_complaint, note_en, note_zh
from medllm_pipelines.lib.synth.people import Fakers, draw_zh_name
from medllm_pipelines.lib.synth.plans import PatientPlan, Visit
from medllm_pipelines.lib.synth.units import from_canonical

# FHIR terminology systems not (yet) in lib/common/codes.py.
ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
ACT_REASON = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
CONDITION_CLINICAL = "http://terminology.hl7.org/CodeSystem/condition-clinical"
CONDITION_VERIFICATION = "http://terminology.hl7.org/CodeSystem/condition-ver-status"
CONDITION_CATEGORY = "http://terminology.hl7.org/CodeSystem/condition-category"
CONSENT_CATEGORY_CODE = "57016-8"  # LOINC: Privacy policy acknowledgment Document
PROGRESS_NOTE_CODE = "11506-3"  # LOINC: Progress note
NOTE_CONTENT_TYPE = "text/plain; charset=utf-8"

Resource = dict[str, Any]


def format_datetime(moment: datetime, style: str) -> str:
    """A local (UTC+8) clock time in the institution's timestamp style."""
    if style == LOCAL_OFFSET:
        return moment.strftime("%Y-%m-%dT%H:%M:%S") + "+08:00"
    if style == UTC_Z:
        return (moment - timedelta(hours=8)).strftime("%Y-%m-%dT%H:%M:%SZ")
    if style == DATE_ONLY:
        return moment.strftime("%Y-%m-%d")
    raise ValueError(f"unknown timestamp style {style}")


def format_quantity(value: float, decimals: int) -> float | int:
    """Round as the site's LIS does; whole numbers are written without a fraction."""
    rounded = round(value, decimals)
    return int(rounded) if decimals == 0 else float(rounded)


def observation_value(spec: ObservationSpec, canonical_value: float) -> float | int:
    return format_quantity(from_canonical(spec.concept, canonical_value, spec.unit), spec.decimals)


class RecordBuilder:
    """Renders patient plans as FHIR resources for one institution."""

    def __init__(self, institution: Institution, rng: np.random.Generator, fakers: Fakers) -> None:
        self.institution = institution
        self.rng = rng
        self.fakers = fakers

    # --- helpers -----------------------------------------------------------
    def _reference(self, resource_type: str, resource_id: str) -> dict[str, str]:
        if self.institution.fhir_format == BULK_NDJSON:
            return {"reference": f"{resource_type}/{resource_id}"}
        return {"reference": f"urn:uuid:{resource_id}"}

    def _when(self, moment: datetime) -> str:
        return format_datetime(moment, self.institution.timestamp_style)

    def _new(self, resource_type: str) -> Resource:
        return {"resourceType": resource_type, "id": random_uuid(self.rng),
                "meta": {"source": self.institution.source_uri}}

    @property
    def _zh(self) -> bool:
        return self.institution.language == "zh"

    def _doctor(self) -> str:
        if self._zh:
            family, given, _, _ = draw_zh_name(self.rng, "male" if self.rng.random() < 0.5 else "female")
            return f"{family}{given}"
        return self.fakers.en.name()

    # --- resources ---------------------------------------------------------
    def patient(self, plan: PatientPlan) -> Resource:
        registration = plan.registration
        person = registration.person
        resource = self._new("Patient")
        resource["id"] = registration.patient_id
        identifiers = [{
            "use": "usual",
            "type": {"coding": [{"system": codes.IDENTIFIER_TYPE, "code": "MR", "display": "Medical record number"}],
                     "text": "病案号" if self._zh else "MRN"},
            "system": codes.mrn_system(self.institution.code),
            "value": registration.mrn,
        }]
        if person.resident_id:
            identifiers.append({
                "use": "official",
                "type": {"coding": [{"system": codes.IDENTIFIER_TYPE, "code": "NNCHN",
                                     "display": "National Person Identifier (China)"}], "text": "居民身份证"},
                "system": codes.PRC_RESIDENT_ID,
                "value": person.resident_id,
            })
        names = []
        if person.name_zh:
            names.append({"use": "official", "text": person.name_zh, "family": person.family_zh,
                          "given": [person.given_zh]})
        if person.name_zh is None or not self._zh:
            names.append({"use": "official" if person.name_zh is None else "usual", "text": person.name_en,
                          "family": person.family_en, "given": [person.given_en]})
        address = person.address
        address_dict: Resource = {"use": "home", "type": "physical", "text": address.text, "line": [address.line],
                                  "city": address.city}
        if address.district:
            address_dict["district"] = address.district
        address_dict["state"] = address.state
        if address.postal_code:
            address_dict["postalCode"] = address.postal_code
        address_dict["country"] = address.country
        resource.update({
            "identifier": identifiers,
            "active": True,
            "name": names,
            "telecom": [{"system": "phone", "value": person.phone, "use": "mobile"},
                        {"system": "email", "value": person.email, "use": "home"}],
            "gender": person.sex,
            "birthDate": person.birth_date.isoformat(),
            "address": [address_dict],
        })
        return resource

    def encounter(self, patient: Resource, visit: Visit) -> Resource:
        resource = self._new("Encounter")
        code, display = ("IMP", "inpatient encounter") if visit.inpatient else ("AMB", "ambulatory")
        if self._zh:
            text = "住院" if visit.inpatient else "门诊"
        else:
            text = "Inpatient stay" if visit.inpatient else "Outpatient visit"
        resource.update({
            "status": "finished",
            "class": {"system": ACT_CODE, "code": code, "display": display},
            "type": [{"text": text}],
            "subject": self._reference("Patient", patient["id"]),
            "period": {"start": self._when(visit.start), "end": self._when(visit.end)},
            "serviceProvider": {"display": self.institution.name},
        })
        return resource

    def condition(self, patient: Resource, encounter: Resource, condition: str, onset: date,
                  recorded: datetime, hba1c: float) -> Resource:
        resource = self._new("Condition")
        coded = catalog.condition_coding(condition, self.institution.diagnosis_system, hba1c)
        acute = condition in (catalog.UPPER_RESPIRATORY_INFECTION,)
        resource.update({
            "clinicalStatus": {"coding": [{"system": CONDITION_CLINICAL, "code": "resolved" if acute else "active"}]},
            "verificationStatus": {"coding": [{"system": CONDITION_VERIFICATION, "code": "confirmed"}]},
            "category": [{"coding": [{"system": CONDITION_CATEGORY, "code": "encounter-diagnosis",
                                      "display": "Encounter Diagnosis"}]}],
            "code": {"coding": [{"system": self.institution.diagnosis_system, "code": coded.code,
                                 "display": coded.display}], "text": coded.display},
            "subject": self._reference("Patient", patient["id"]),
            "encounter": self._reference("Encounter", encounter["id"]),
            "onsetDateTime": onset.isoformat(),
            "recordedDate": self._when(recorded),
        })
        return resource

    def observation(self, patient: Resource, encounter: Resource, spec: ObservationSpec, value: float,
                    moment: datetime) -> Resource:
        resource = self._new("Observation")
        category_display = "Laboratory" if spec.category == LABORATORY else "Vital Signs"
        resource.update({
            "status": "final",
            "category": [{"coding": [{"system": codes.OBSERVATION_CATEGORY, "code": spec.category,
                                      "display": category_display}]}],
            "code": {"coding": [{"system": spec.system, "code": spec.code, "display": spec.display}],
                     "text": spec.text},
            "subject": self._reference("Patient", patient["id"]),
            "encounter": self._reference("Encounter", encounter["id"]),
            "effectiveDateTime": self._when(moment),
            "valueQuantity": {"value": observation_value(spec, value), "unit": spec.unit, "system": codes.UCUM,
                              "code": spec.unit},
        })
        return resource

    def medication_request(self, patient: Resource, encounter: Resource, medication: str,
                           moment: datetime) -> Resource:
        resource = self._new("MedicationRequest")
        coded = catalog.MEDICATIONS[medication][self.institution.medication_system]
        product, dosage = catalog.MEDICATION_TEXT[medication][self.institution.language]
        resource.update({
            "status": "active",
            "intent": "order",
            "medicationCodeableConcept": {"coding": [{"system": self.institution.medication_system,
                                                      "code": coded.code, "display": coded.display}],
                                          "text": product},
            "subject": self._reference("Patient", patient["id"]),
            "encounter": self._reference("Encounter", encounter["id"]),
            "authoredOn": self._when(moment),
            "dosageInstruction": [{"text": dosage}],
        })
        return resource

    def document_reference(self, patient: Resource, encounter: Resource, plan: PatientPlan, visit: Visit) -> Resource:
        resource = self._new("DocumentReference")
        text = self._note_text(plan, visit)
        title = "门诊病历" if self._zh else "Progress note"
        resource.update({
            "status": "current",
            "docStatus": "final",
            "type": {"coding": [{"system": codes.LOINC, "code": PROGRESS_NOTE_CODE, "display": "Progress note"}],
                     "text": title},
            "subject": self._reference("Patient", patient["id"]),
        })
        if self.institution.timestamp_style != DATE_ONLY:  # DocumentReference.date is an instant
            resource["date"] = self._when(visit.end)
        resource.update({
            "description": title,
            "content": [{"attachment": {
                "contentType": NOTE_CONTENT_TYPE,
                "language": "zh-CN" if self._zh else "en-US",
                "data": base64.b64encode(text.encode("utf-8")).decode("ascii"),
                "title": title,
            }}],
            "context": {"encounter": [self._reference("Encounter", encounter["id"])],
                        "period": {"start": self._when(visit.start)}},
        })
        return resource

    def consents(self, patient: Resource, plan: PatientPlan) -> list[Resource]:
        consent = plan.consent
        if consent.signed_at is None:
            return []
        if consent.state == codes.CONSENT_GRANTED:
            return [self._consent(patient, "active", "permit", consent.signed_at)]
        if consent.state == codes.CONSENT_REFUSED:
            status = "rejected" if consent.refusal_style == "rejected" else "active"
            return [self._consent(patient, status, "deny", consent.signed_at)]
        assert consent.withdrawn_at is not None
        original = self._consent(patient, "active", "permit", consent.signed_at)
        withdrawal = self._consent(patient, "inactive", "deny", consent.withdrawn_at)
        withdrawal["sourceReference"] = self._reference("Consent", original["id"])
        return [original, withdrawal]

    def _consent(self, patient: Resource, status: str, provision: str, moment: datetime) -> Resource:
        resource = self._new("Consent")
        resource.update({
            "status": status,
            "scope": {"coding": [{"system": codes.CONSENT_SCOPE, "code": "research", "display": "Research"}]},
            "category": [{"coding": [{"system": codes.CONSENT_CATEGORY, "code": CONSENT_CATEGORY_CODE,
                                      "display": "Privacy policy acknowledgment Document"}]}],
            "patient": self._reference("Patient", patient["id"]),
            "dateTime": self._when(moment),
            "organization": [{"display": self.institution.name}],
            "policyRule": {"coding": [{"system": ACT_CODE, "code": "OPTIN" if provision == "permit" else "OPTOUT"}]},
            "provision": {"type": provision, "period": {"start": self._when(moment)},
                          "purpose": [{"system": ACT_REASON, "code": "HRESCH", "display": "healthcare research"}]},
        })
        return resource

    # --- the note ----------------------------------------------------------
    def _note_text(self, plan: PatientPlan, visit: Visit) -> str:
        registration = plan.registration
        person = registration.person
        inst = self.institution
        conditions = tuple(d.condition for d in plan.diagnoses)
        medications = tuple(p.medication for p in plan.prescriptions)

        def shown(concept: str) -> str:
            spec = inst.spec(concept)
            unit = {"kg/m2": "kg/m²", "mm[Hg]": "mmHg"}.get(spec.unit, spec.unit)
            return f"{observation_value(spec, visit.values[concept])} {unit}"

        if self._zh and person.resident_id and self.rng.random() < 0.7:
            id_label, id_value = "身份证号", person.resident_id
        else:
            id_label, id_value = ("门诊号" if self._zh else "MRN"), registration.mrn
        sbp = observation_value(inst.spec(codes.SYSTOLIC_BP.name), visit.values[codes.SYSTOLIC_BP.name])
        dbp = observation_value(inst.spec(codes.DIASTOLIC_BP.name), visit.values[codes.DIASTOLIC_BP.name])
        facts = NoteFacts(
            name=person.display_name if self._zh else person.name_en,
            sex=person.sex,
            age=int(person.age_years(visit.start.date())),
            id_label=id_label,
            id_value=id_value,
            phone=person.phone,
            address=person.address.text if self.rng.random() < 0.5 else None,
            visit_date=visit.start.strftime("%Y-%m-%d"),
            complaint_key=choose_complaint(conditions, self.rng),
            conditions=conditions,
            medications=medications,
            blood_pressure=f"{sbp}/{dbp} mmHg",
            bmi=str(observation_value(inst.spec(codes.BMI.name), visit.values[codes.BMI.name])),
            hba1c=shown(codes.HBA1C.name),
            glucose=shown(codes.FASTING_GLUCOSE.name),
            cholesterol=shown(codes.TOTAL_CHOLESTEROL.name),
            doctor=self._doctor(),
        )
        return note_zh(facts, self.rng) if self._zh else note_en(facts, self.rng)

    # --- the whole record ----------------------------------------------------
    def record(self, plan: PatientPlan) -> list[Resource]:
        """Every resource of one patient, Patient first, in a stable order."""
        patient = self.patient(plan)
        encounters = [self.encounter(patient, visit) for visit in plan.visits]
        resources: list[Resource] = [patient, *encounters]
        baseline_hba1c = plan.visits[0].values[codes.HBA1C.name]
        for diagnosis in plan.diagnoses:
            visit = plan.visits[diagnosis.visit]
            resources.append(self.condition(patient, encounters[diagnosis.visit], diagnosis.condition,
                                            diagnosis.onset, visit.start + timedelta(minutes=20), baseline_hba1c))
        for number, visit in enumerate(plan.visits):
            vitals_at = visit.start + timedelta(minutes=int(self.rng.integers(3, 15)))
            labs_at = visit.start + timedelta(minutes=int(self.rng.integers(20, 90)))
            for spec in self.institution.observations:
                moment = labs_at if spec.category == LABORATORY else vitals_at
                resources.append(self.observation(patient, encounters[number], spec, visit.values[spec.concept],
                                                  moment))
        for prescription in plan.prescriptions:
            visit = plan.visits[prescription.visit]
            resources.append(self.medication_request(patient, encounters[prescription.visit],
                                                      prescription.medication, visit.start + timedelta(minutes=30)))
        last = len(plan.visits) - 1
        resources.append(self.document_reference(patient, encounters[last], plan, plan.visits[last]))
        if last > 0 and self.rng.random() < 0.25:
            resources.append(self.document_reference(patient, encounters[0], plan, plan.visits[0]))
        resources.extend(self.consents(patient, plan))
        return resources
