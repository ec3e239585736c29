"""Identifiers look and check like real ones, so de-identification meets realistic input."""

from __future__ import annotations

import re
from collections import Counter
from datetime import date

import pytest

from medllm_pipelines.lib.common import codes
from medllm_pipelines.lib.synth import is_valid_resident_id, resident_id_check_digit
from medllm_pipelines.lib.synth.people import REGIONS, make_resident_id
from medllm_pipelines_tests.lib.synth.conftest import Hospital


@pytest.mark.parametrize(
    ("value", "valid"),
    [
        ("11010519491231002X", True),  # the GB 11643-1999 worked example
        ("110105194912310021", False),  # wrong check character
        ("11010519491231002", False),  # too short
        ("1101051949123100AX", False),  # letters in the body
    ],
)
def test_resident_id_check_character(value: str, valid: bool) -> None:
    assert is_valid_resident_id(value) is valid


def test_make_resident_id_encodes_region_birth_date_and_sex() -> None:
    value = make_resident_id("420106", date(1970, 3, 9), 123)
    assert value.startswith("42010619700309123")
    assert value[-1] == resident_id_check_digit(value[:17])


def test_every_resident_id_is_valid_and_consistent_with_the_patient(clean_hospital: Hospital) -> None:
    region_of_district = {(province, district): code for province, _, district, code in REGIONS}
    checked = 0
    for institution in ("hzsf", "rvic", "jhsq"):
        for _, _, patient in clean_hospital.readable_resources(institution):
            if patient["resourceType"] != "Patient":
                continue
            ids = [i["value"] for i in patient["identifier"] if i["system"] == codes.PRC_RESIDENT_ID]
            if not ids:
                assert institution == "rvic", "only the international clinic has patients without a 身份证号"
                continue
            (resident_id,) = ids
            assert is_valid_resident_id(resident_id)
            assert resident_id[6:14] == patient["birthDate"].replace("-", "")
            assert (int(resident_id[16]) % 2 == 1) == (patient["gender"] == "male")
            address = patient["address"][0]
            assert region_of_district[(address["state"], address["district"])] == resident_id[:6]
            checked += 1
    assert checked > 40


def test_mrns_are_unique_per_institution_and_use_its_system(clean_hospital: Hospital) -> None:
    for institution in ("hzsf", "rvic", "jhsq"):
        mrns = []
        for _, _, patient in clean_hospital.readable_resources(institution):
            if patient["resourceType"] == "Patient":
                (mrn,) = [i for i in patient["identifier"] if i["type"]["coding"][0]["code"] == "MR"]
                assert mrn["system"] == codes.mrn_system(institution)
                mrns.append(mrn["value"])
        assert len(mrns) == len(set(mrns)) > 0


def test_chinese_patients_have_chinese_mobile_numbers_and_names(clean_hospital: Hospital) -> None:
    for identity in clean_hospital.identities:
        if identity["resident_id"]:
            assert re.fullmatch(r"1[3-9]\d{9}", identity["phone"])
            assert identity["name_zh"] and all("\u4e00" <= ch <= "\u9fff" for ch in identity["name_zh"])


def test_about_two_percent_of_persons_are_registered_twice(clean_hospital: Hospital) -> None:
    manifest = clean_hospital.manifest
    linked = manifest.cross_institution_persons
    assert 1 <= len(linked) <= max(2, round(0.04 * manifest.patients))
    assert manifest.patient_records == manifest.patients + len(linked)
    rows = Counter(row["person_index"] for row in clean_hospital.identities)
    for person in linked:
        index = person["person_index"]
        assert rows[index] == 2
        first, second = [row for row in clean_hospital.identities if row["person_index"] == index]
        assert first["resident_id"] == second["resident_id"] and first["name_zh"] == second["name_zh"]
        assert first["mrn"] != second["mrn"]
        assert {first["institution"], second["institution"]} == set(person["institutions"])
