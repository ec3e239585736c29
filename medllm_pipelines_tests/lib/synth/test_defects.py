"""Each defect the manifest lists is really there, and only where it says."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path
from typing import Any

import pydicom
import pytest
from fhir.resources.R4B import get_fhir_model_class

from medllm_pipelines.lib.synth import DEFECT_TYPES, Defect, DefectRates
from medllm_pipelines_tests.lib.synth.conftest import Hospital

REFERENCE = date(2026, 1, 1)


def _raw_unit(hospital: Hospital, defect: Defect) -> str:
    """The text of the file, or of the listed line of an NDJSON file."""
    text = (hospital.root / defect.file).read_text("utf-8")
    if defect.file.endswith(".ndjson") and defect.position is not None:
        return text.splitlines()[defect.position]
    return text


def _resource_at(hospital: Hospital, defect: Defect) -> dict[str, Any]:
    text = _raw_unit(hospital, defect)
    if defect.file.endswith(".ndjson"):
        return json.loads(text)
    assert defect.position is not None
    return json.loads(text)["entry"][defect.position]["resource"]


def _validates(resource: dict[str, Any]) -> bool:
    try:
        get_fhir_model_class(resource["resourceType"]).model_validate(resource)
    except Exception:  # noqa: BLE001 - pydantic and fhir.resources raise several types
        return False
    return True


def _by_type(hospital: Hospital, defect_type: str) -> list[Defect]:
    # HL7 v2 defects are not JSON; test_hl7_feed.py checks them against the HL7 parser.
    found = [d for d in hospital.manifest.defects_of(defect_type) if not d.file.endswith(".hl7")]
    assert found, f"the heavy-defect hospital should contain {defect_type}"
    return found


def test_every_defect_type_is_seeded_at_high_rates(defective_hospital: Hospital) -> None:
    assert {d.defect_type for d in defective_hospital.manifest.defects} == set(DEFECT_TYPES)


def test_a_clean_hospital_lists_no_defects(clean_hospital: Hospital) -> None:
    assert clean_hospital.manifest.defects == []


@pytest.mark.parametrize("defect_type", ["malformed_file", "truncated_file"])
def test_broken_json_does_not_parse(defective_hospital: Hospital, defect_type: str) -> None:
    for defect in _by_type(defective_hospital, defect_type):
        if defect.file.endswith(".dcm"):
            continue
        with pytest.raises(json.JSONDecodeError):
            json.loads(_raw_unit(defective_hospital, defect))


def test_truncated_dicom_files_cannot_be_read_in_full(defective_hospital: Hospital) -> None:
    truncated = [d for d in _by_type(defective_hospital, "truncated_file") if d.file.endswith(".dcm")]
    assert truncated
    for defect in truncated:
        with pytest.raises(Exception):  # noqa: B017 - pydicom raises several types for short streams
            pydicom.dcmread(defective_hospital.root / defect.file).pixel_array


def test_non_fhir_json_parses_but_is_not_a_resource(defective_hospital: Hospital) -> None:
    for defect in _by_type(defective_hospital, "non_fhir_json"):
        document = json.loads(_raw_unit(defective_hospital, defect))
        assert isinstance(document, dict) and "resourceType" not in document


@pytest.mark.parametrize("defect_type", ["unparseable_date", "missing_required_field"])
def test_invalidating_record_defects_fail_r4_validation(defective_hospital: Hospital, defect_type: str) -> None:
    for defect in _by_type(defective_hospital, defect_type):
        resource = _resource_at(defective_hospital, defect)
        assert (resource["resourceType"], resource["id"]) == (defect.resource_type, defect.resource_id)
        assert not _validates(resource)


def test_impossible_dates_are_valid_fhir_but_impossible(defective_hospital: Hospital) -> None:
    for defect in _by_type(defective_hospital, "impossible_date"):
        resource = _resource_at(defective_hospital, defect)
        assert _validates(resource)
        if resource["resourceType"] == "Patient":
            born = date.fromisoformat(resource["birthDate"])
            assert born > REFERENCE or born.year < 1900
        else:
            patients = {r["id"]: r for _, _, r in defective_hospital.readable_resources(defect.institution)
                        if r["resourceType"] == "Patient"}
            subject = resource["subject"]["reference"].rsplit("/", 1)[-1].removeprefix("urn:uuid:")
            assert resource["effectiveDateTime"][:10] < patients[subject]["birthDate"]


def test_impossible_values_are_outside_physiology(defective_hospital: Hospital) -> None:
    for defect in _by_type(defective_hospital, "impossible_value"):
        resource = _resource_at(defective_hospital, defect)
        assert _validates(resource)
        quantity = resource["valueQuantity"]
        impossible = (quantity["value"] < 0
                      or (quantity["code"] == "kg/m2" and quantity["value"] > 100)
                      or (quantity["code"] == "%" and quantity["value"] > 25)
                      or (quantity["code"] == "mmol/mol" and quantity["value"] > 250))
        assert impossible, quantity


def test_wrong_unit_values_have_the_other_units_magnitude(defective_hospital: Hospital) -> None:
    for defect in _by_type(defective_hospital, "wrong_unit"):
        quantity = _resource_at(defective_hospital, defect)["valueQuantity"]
        if quantity["code"] == "mg/dL":
            assert quantity["value"] < 15  # a mmol/L number under a mg/dL label
        else:
            assert quantity["code"] == "mmol/L" and quantity["value"] > 50


def test_duplicates_repeat_an_identical_resource_elsewhere(defective_hospital: Hospital) -> None:
    for defect in _by_type(defective_hospital, "duplicate_record"):
        copy = _resource_at(defective_hospital, defect)
        twins = [
            (relpath, position)
            for relpath, position, resource in defective_hospital.readable_resources(defect.institution)
            if resource == copy and (relpath, position) != (defect.file, defect.position)
        ]
        assert twins, defect


def test_record_defects_never_sit_inside_a_file_broken_as_a_whole(defective_hospital: Hospital) -> None:
    whole = defective_hospital.whole_file_defects()
    assert whole
    assert not [d for d in defective_hospital.manifest.defects if d.position is not None and d.file in whole]


def test_defects_name_real_files_and_no_identifier_fields(defective_hospital: Hospital) -> None:
    for defect in defective_hospital.manifest.defects:
        assert (defective_hospital.root / defect.file).is_file()
        assert set(defect.as_dict()) == {"defect_type", "institution", "file", "position", "resource_type",
                                         "resource_id"}


@pytest.mark.parametrize("bad", [-0.1, 1.5])
def test_defect_rates_must_be_probabilities(bad: float) -> None:
    with pytest.raises(ValueError):
        DefectRates(wrong_unit=bad)


def test_defects_do_not_change_the_clinical_content(tmp_path: Path) -> None:
    from medllm_pipelines.lib.synth import generate_hospital

    clean = generate_hospital(tmp_path / "clean", patients=20, seed=8, defect_rates=DefectRates.none())
    noisy = generate_hospital(tmp_path / "noisy", patients=20, seed=8)
    assert clean.diabetes == noisy.diabetes
    truth = "_truth/patients.jsonl"
    assert (tmp_path / "clean" / truth).read_bytes() == (tmp_path / "noisy" / truth).read_bytes()
