"""Mapping validated FHIR resources to the rows of the parsed tables (``tables.py``).

One function per resource type a table holds (:data:`EXTRACTORS`); each reads
the elements it needs and nothing else, so free text the tables do not hold
(a DiagnosticReport's conclusion, say) stays in the encrypted raw object.
Lineage columns are added by the parser, not here.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from typing import Any

from medllm_pipelines.lib.common import codes

Extractor = Callable[[dict[str, Any], dict[str, str]], dict[str, Any]]


def _reference_key(reference: dict[str, Any] | None, refs: dict[str, str]) -> str | None:
    if not reference or not reference.get("reference"):
        return None
    ref = str(reference["reference"])
    if ref in refs:
        return refs[ref]
    return ref.rstrip("/").rsplit("/", 1)[-1].removeprefix("urn:uuid:")


def _first_coding(concept: dict[str, Any] | None) -> dict[str, Any]:
    for coding in (concept or {}).get("coding") or []:
        return coding
    return {}


def _identifier(resource: dict[str, Any], predicate: Callable[[dict[str, Any]], bool]) -> str | None:
    for ident in resource.get("identifier") or []:
        if predicate(ident):
            return ident.get("value")
    return None


def _is_mrn(ident: dict[str, Any]) -> bool:
    system = str(ident.get("system") or "")
    type_code = _first_coding(ident.get("type")).get("code")
    return type_code == "MR" or system.endswith(":mrn")


def _name_parts(resource: dict[str, Any]) -> dict[str, str | None]:
    zh = en = None
    for name in resource.get("name") or []:
        text = name.get("text") or " ".join([*(name.get("given") or []), name.get("family") or ""]).strip()
        if not text:
            continue
        if any("\u4e00" <= ch <= "\u9fff" for ch in text):
            zh = zh or text
        else:
            en = en or text
    return {"name_zh": zh, "name_en": en}


def _telecom(resource: dict[str, Any], system: str) -> str | None:
    for contact in resource.get("telecom") or []:
        if contact.get("system") == system:
            return contact.get("value")
    return None


def _address(resource: dict[str, Any]) -> str | None:
    for address in resource.get("address") or []:
        if address.get("text"):
            return address["text"]
        parts = [
            address.get("country"),
            address.get("state"),
            address.get("city"),
            address.get("district"),
            *(address.get("line") or []),
        ]
        joined = " ".join(p for p in parts if p)
        if joined:
            return joined
    return None


def _patient(r: dict[str, Any], refs: dict[str, str]) -> dict[str, Any]:
    return {
        "mrn": _identifier(r, _is_mrn),
        "resident_id": _identifier(r, lambda i: i.get("system") == codes.PRC_RESIDENT_ID),
        **_name_parts(r),
        "gender": r.get("gender"),
        "birth_date": r.get("birthDate"),
        "phone": _telecom(r, "phone"),
        "email": _telecom(r, "email"),
        "address": _address(r),
    }


def _encounter(r: dict[str, Any], refs: dict[str, str]) -> dict[str, Any]:
    period = r.get("period") or {}
    return {
        "patient_key": _reference_key(r.get("subject"), refs),
        "status": r.get("status"),
        "encounter_class": (r.get("class") or {}).get("code"),
        "start": period.get("start"),
        "end": period.get("end"),
    }


def _coded(concept: dict[str, Any] | None) -> dict[str, Any]:
    """The first coding of a CodeableConcept as the tables' code_system / code / display columns."""
    coding = _first_coding(concept)
    return {"code_system": coding.get("system"), "code": coding.get("code"), "display": coding.get("display")}


def _condition(r: dict[str, Any], refs: dict[str, str]) -> dict[str, Any]:
    return {
        "patient_key": _reference_key(r.get("subject"), refs),
        **_coded(r.get("code")),
        "clinical_status": _first_coding(r.get("clinicalStatus")).get("code"),
        "onset": r.get("onsetDateTime"),
        "recorded_date": r.get("recordedDate"),
    }


def _measured(quantity: dict[str, Any] | None) -> dict[str, Any]:
    """A Quantity as the value / unit (UCUM code, else the printed unit) / unit_system columns."""
    quantity = quantity or {}
    value = quantity.get("value")
    return {"value": float(value) if value is not None else None,
            "unit": quantity.get("code") or quantity.get("unit"), "unit_system": quantity.get("system")}


def _observation(r: dict[str, Any], refs: dict[str, str]) -> dict[str, Any]:
    return {
        "patient_key": _reference_key(r.get("subject"), refs),
        "status": r.get("status"),
        "category": _first_coding((r.get("category") or [{}])[0]).get("code"),
        **_coded(r.get("code")),
        **_measured(r.get("valueQuantity")),
        "effective": r.get("effectiveDateTime") or (r.get("effectivePeriod") or {}).get("start"),
    }


def observation_components(r: dict[str, Any]) -> list[tuple[int, dict[str, Any]]]:
    """The numeric components of an Observation, each with its index: what a panel measures.

    A blood-pressure panel (LOINC 85354-9, Synthea's 55284-4) has no value of its own; its systolic (8480-6) and
    diastolic (8462-4) readings are components. Each becomes an observations row of its own (the parser keys it
    ``<id>/component/<index>``), coded and valued from the component, everything else from the panel; a
    component without a numeric ``valueQuantity`` (an ECG's sampled data, a coded finding) stays in the raw
    object only.
    """
    parts = []
    for index, component in enumerate(r.get("component") or []):
        quantity = component.get("valueQuantity") if isinstance(component, dict) else None
        if not isinstance(quantity, dict) or quantity.get("value") is None:
            continue
        parts.append((index, {**_coded(component.get("code")), **_measured(quantity)}))
    return parts


def _medication_request(r: dict[str, Any], refs: dict[str, str]) -> dict[str, Any]:
    return {
        "patient_key": _reference_key(r.get("subject"), refs),
        "status": r.get("status"),
        **_coded(r.get("medicationCodeableConcept")),
        "authored_on": r.get("authoredOn"),
    }


def _document_reference(r: dict[str, Any], refs: dict[str, str]) -> dict[str, Any]:
    text = None
    content_type = None
    language = None
    for content in r.get("content") or []:
        attachment = content.get("attachment") or {}
        content_type = attachment.get("contentType")
        language = attachment.get("language")
        if attachment.get("data"):
            try:
                text = base64.b64decode(attachment["data"]).decode("utf-8", errors="replace")
            except (binascii.Error, ValueError):
                text = None
            break
    return {
        "patient_key": _reference_key(r.get("subject"), refs),
        "status": r.get("status"),
        "date": r.get("date"),
        "content_type": content_type,
        "language": language,
        "text": text,
    }


def _consent(r: dict[str, Any], refs: dict[str, str]) -> dict[str, Any]:
    provision = r.get("provision") or {}
    period = provision.get("period") or {}
    return {
        "patient_key": _reference_key(r.get("patient"), refs),
        "status": r.get("status"),
        "scope": _first_coding(r.get("scope")).get("code"),
        "provision_type": provision.get("type"),
        "date_time": r.get("dateTime"),
        "period_start": period.get("start"),
        "period_end": period.get("end"),
        "erasure_identifier_system": None,
        "erasure_identifier_value": None,
    }


def _diagnostic_report(r: dict[str, Any], refs: dict[str, str]) -> dict[str, Any]:
    # No conclusion / presentedForm: free text stays in the raw object until a text pipeline de-identifies it.
    return {
        "patient_key": _reference_key(r.get("subject"), refs),
        "encounter_key": _reference_key(r.get("encounter"), refs),
        "status": r.get("status"),
        "category": _first_coding((r.get("category") or [{}])[0]).get("code"),
        **_coded(r.get("code")),
        "effective": r.get("effectiveDateTime") or (r.get("effectivePeriod") or {}).get("start"),
        "issued": r.get("issued"),
        "result_count": len(r.get("result") or []),
    }


def _procedure(r: dict[str, Any], refs: dict[str, str]) -> dict[str, Any]:
    period = r.get("performedPeriod") or {}
    return {
        "patient_key": _reference_key(r.get("subject"), refs),
        "encounter_key": _reference_key(r.get("encounter"), refs),
        "status": r.get("status"),
        **_coded(r.get("code")),
        "performed_start": r.get("performedDateTime") or period.get("start"),
        "performed_end": period.get("end"),
    }


def _allergy_intolerance(r: dict[str, Any], refs: dict[str, str]) -> dict[str, Any]:
    return {
        "patient_key": _reference_key(r.get("patient"), refs),
        "clinical_status": _first_coding(r.get("clinicalStatus")).get("code"),
        "verification_status": _first_coding(r.get("verificationStatus")).get("code"),
        "allergy_type": r.get("type"),
        "category": (r.get("category") or [None])[0],
        "criticality": r.get("criticality"),
        **_coded(r.get("code")),
        "onset": r.get("onsetDateTime") or (r.get("onsetPeriod") or {}).get("start"),
        "recorded_date": r.get("recordedDate"),
    }


def _immunization(r: dict[str, Any], refs: dict[str, str]) -> dict[str, Any]:
    return {
        "patient_key": _reference_key(r.get("patient"), refs),
        "encounter_key": _reference_key(r.get("encounter"), refs),
        "status": r.get("status"),
        **_coded(r.get("vaccineCode")),
        "occurrence": r.get("occurrenceDateTime"),
    }


# resourceType -> its row (without lineage); ``refs`` maps Bundle fullUrls to resource keys
EXTRACTORS: dict[str, Extractor] = {
    "Patient": _patient,
    "Encounter": _encounter,
    "Condition": _condition,
    "Observation": _observation,
    "MedicationRequest": _medication_request,
    "DocumentReference": _document_reference,
    "Consent": _consent,
    "DiagnosticReport": _diagnostic_report,
    "Procedure": _procedure,
    "AllergyIntolerance": _allergy_intolerance,
    "Immunization": _immunization,
}
