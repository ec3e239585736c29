"""The analysis as a FHIR R4 DiagnosticReport with its Observations contained, validated with ``fhir.resources``.

R4 is validated with the R4B models, as ``lib/ingest/fhir_r4`` explains (DiagnosticReport and Observation did
not change between R4 and R4B). The report is ``preliminary``: an AI reading awaits a radiologist's sign-off.
It names the study and each instance by de-identified DICOM UID (``urn:oid:``) and holds numbers and codes
only, no header text. Per instance: the lesion probability (interpreted POS/NEG at the model's threshold), the
lesion area (mm2, or pixels when the instance has no PixelSpacing) and the mean modality value inside the lesion.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

SNOMED = "http://snomed.info/sct"
UCUM = "http://unitsofmeasure.org"
DICOM_UID_SYSTEM = "urn:dicom:uid"
INTERPRETATION = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
DATA_ABSENT = "http://terminology.hl7.org/CodeSystem/data-absent-reason"
LESION = {"system": SNOMED, "code": "52988006", "display": "Lesion"}
AREA = {"system": SNOMED, "code": "42798000", "display": "Area"}
MEAN = {"system": SNOMED, "code": "373098007", "display": "Mean value of population"}
REPORT_CODE = {"system": "http://loinc.org", "code": "18748-4", "display": "Diagnostic imaging study"}
RADIOLOGY = {"system": "http://terminology.hl7.org/CodeSystem/v2-0074", "code": "RAD", "display": "Radiology"}
# intensity_unit (instances.intensity_unit) -> UCUM
INTENSITY_UCUM = {"HU": ("HU", "[hnsf'U]")}


def _uid_reference(uid: str, kind: str, display: str | None = None) -> dict[str, Any]:
    reference: dict[str, Any] = {"type": kind, "identifier": {"system": DICOM_UID_SYSTEM, "value": f"urn:oid:{uid}"}}
    if display:
        reference["display"] = display
    return reference


def _quantity(value: float, unit: str, code: str) -> dict[str, Any]:
    return {"value": round(float(value), 4), "unit": unit, "system": UCUM, "code": code}


def _observation(ident: str, code: Mapping[str, str], text: str, study_uid: str, sop_uid: str, method: str,
                 value: dict[str, Any] | None, **extra: Any) -> dict[str, Any]:
    observation: dict[str, Any] = {
        "resourceType": "Observation", "id": ident, "status": "preliminary",
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                  "code": "imaging", "display": "Imaging"}]}],
        "code": {"coding": [dict(code)], "text": text},
        "method": {"text": method},
        "derivedFrom": [_uid_reference(study_uid, "ImagingStudy", f"SOP Instance urn:oid:{sop_uid}")],
        **extra,
    }
    if value is None:
        observation["dataAbsentReason"] = {"coding": [{"system": DATA_ABSENT, "code": "not-applicable"}]}
    else:
        observation["valueQuantity"] = value
    return observation


def diagnostic_report(study_uid: str, instances: Sequence[Mapping[str, Any]], *, method: str,
                      issued: datetime | None = None) -> dict[str, Any]:
    """A DiagnosticReport dict, validated once with fhir.resources (R4B) before it is returned."""
    from fhir.resources.R4B.diagnosticreport import DiagnosticReport

    contained, results = [], []
    lesion_count = 0
    for k, item in enumerate(instances, start=1):
        sop = str(item["sop_instance_uid"])
        flag = "POS" if item["lesion"] else "NEG"
        lesion_count += bool(item["lesion"])
        probability = _observation(
            f"instance-{k}-lesion-probability", LESION, "Lesion probability (AI)", study_uid, sop, method,
            _quantity(item["lesion_probability"], "probability", "1"),
            interpretation=[{"coding": [{"system": INTERPRETATION, "code": flag}]}],
            referenceRange=[{"high": _quantity(item["threshold"], "probability", "1"),
                             "text": "lesion reported at or above this probability"}])
        observations = [probability]
        if item.get("lesion_area_pixels") is not None:
            area = (_quantity(item["lesion_area_mm2"], "mm2", "mm2") if item.get("lesion_area_mm2") is not None
                    else _quantity(item["lesion_area_pixels"], "pixels", "{pixels}"))
            observations.append(_observation(f"instance-{k}-lesion-area", AREA, "Lesion area (AI segmentation)",
                                             study_uid, sop, method, area))
            mean = item.get("mean_intensity_in_lesion")
            unit, code = INTENSITY_UCUM.get(str(item.get("intensity_unit")), (str(item.get("intensity_unit")), "1"))
            observations.append(_observation(f"instance-{k}-lesion-mean-intensity", MEAN,
                                             "Mean intensity in lesion (AI segmentation)", study_uid, sop, method,
                                             None if mean is None else _quantity(mean, unit, code)))
        contained += observations
        results += [{"reference": f"#{o['id']}"} for o in observations]
    n = len(instances)
    conclusion = (f"AI analysis of {n} image{'s' if n != 1 else ''}: a lesion is suspected on {lesion_count}. "
                  "Preliminary, not reviewed by a radiologist.")
    report = {
        "resourceType": "DiagnosticReport", "status": "preliminary",
        "category": [{"coding": [RADIOLOGY]}],
        "code": {"coding": [REPORT_CODE], "text": "AI lesion analysis"},
        "issued": (issued or datetime.now(UTC)).isoformat(timespec="seconds"),
        "imagingStudy": [_uid_reference(study_uid, "ImagingStudy")],
        "contained": contained, "result": results, "conclusion": conclusion,
        "conclusionCode": [{"coding": [LESION], "text": "lesion suspected"}] if lesion_count else [],
    }
    if not report["conclusionCode"]:
        del report["conclusionCode"]
    DiagnosticReport.model_validate(report)
    return report
