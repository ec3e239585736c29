"""ICD-10 (WHO / CM / 国家临床版) and LOINC validation; problems name the system, not the code."""

from __future__ import annotations

import pytest

from medllm_pipelines.lib.common import codes
from medllm_pipelines.lib.quality.code_validation import (
    loinc_check_digit,
    loinc_is_valid,
    validate_icd10,
)
from medllm_pipelines.lib.synth import catalog


@pytest.mark.parametrize("code", sorted(set(codes.LOINC_VARIANTS) | set(codes.LOCAL_LAB_TO_LOINC.values())
                                        | {"2345-7", "1554-5", "57016-8", "11506-3"}))
def test_the_platforms_loinc_codes_have_valid_check_digits(code):
    assert loinc_is_valid(code)


@pytest.mark.parametrize("code", ["4548-5", "99999-9", "4548", "4548-44", "A548-4", "", None, " 4548-4x"])
def test_invalid_loinc_codes(code):
    assert not loinc_is_valid(code)


def test_the_check_digit_follows_the_loinc_manuals_worked_example():
    assert loinc_check_digit("12345") == 5


@pytest.mark.parametrize(
    ("system", "code", "who"),
    [
        (codes.ICD10_WHO, "E11.9", "E11.9"),
        (codes.ICD10_WHO, "I10", "I10"),
        (codes.ICD10_CM, "E11.65", "E11.6"),
        (codes.ICD10_CM, "E11.A", "E11"),  # CM-only subdivision: WHO category
        (codes.ICD10_CM, "M54.50", "M54.5"),
        (codes.ICD10_CN, "E11.900", "E11.9"),
        (codes.ICD10_CN, "I10.x00", "I10"),  # x: no WHO subcategory
        (codes.ICD10_CN, "K29.700", "K29.7"),
    ],
)
def test_valid_codes_map_to_who(system, code, who):
    result = validate_icd10(system, code)

    assert (result.who_code, result.problem) == (who, None)


@pytest.mark.parametrize(
    ("system", "code", "named"),
    [
        (codes.ICD10_WHO, "E11.95", "ICD-10 (WHO)"),  # not in WHO
        (codes.ICD10_WHO, "E11.A", "ICD-10 (WHO)"),  # CM-only in a WHO feed
        (codes.ICD10_CM, "E11.99", "ICD-10-CM"),
        (codes.ICD10_CM, "Q99.999", "ICD-10-CM"),
        (codes.ICD10_CN, "U99.900", "国家临床版"),  # no WHO stem
        (codes.ICD10_CN, "E11/900", "国家临床版"),
        (codes.SNOMED_CT, "44054006", "not an ICD-10 system"),
    ],
)
def test_invalid_codes_name_the_system_not_the_value(system, code, named):
    result = validate_icd10(system, code)

    assert result.who_code is None and named in result.problem
    assert code not in result.problem


@pytest.mark.parametrize("system", [codes.ICD10_WHO, codes.ICD10_CM, codes.ICD10_CN])
def test_every_code_the_synthetic_hospital_writes_is_valid(system):
    coded = [by_system[system].code for by_system in catalog.CONDITIONS.values()]
    if system == codes.ICD10_CM:
        coded.append(catalog.T2D_HYPERGLYCEMIA_CM.code)

    assert [c for c in coded if validate_icd10(system, c).problem] == []
