"""Identifiers written in prose (``text/identifiers.py``): US and Taiwanese IDs, phones, record numbers in a header."""

from __future__ import annotations

import pytest

from medllm_pipelines.lib.deidentify.text import build_detector
from medllm_pipelines.lib.deidentify.text.detector import Detector
from medllm_pipelines.lib.deidentify.text.identifiers import is_valid_taiwan_id
from medllm_pipelines_tests.lib.deidentify.text_spans import found, labelled


@pytest.fixture(scope="module")
def detector() -> Detector:
    return build_detector()


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("SILVER RIDGE EMERGENCY DEPT VISIT\n\nOROZCO,KYLE   560-40-78-5          VISIT DATE: 07/20/83", "560-40-78-5"),
        ("______________________                    XW277/90683 \n\nFILBERT BRIGHT, M.D.", "XW277/90683"),
        ("683424141 | SH | 12345678 | | 1234567 | 01/02/2003 12:00:00 AM | Discharge Summary |", "683424141"),
        ("683424141 | SH | 12345678 | | 1234567 | 01/02/2003 12:00:00 AM | Discharge Summary |", "12345678"),
        ("BAYSIDE MEDICAL CENTER\nA1234567\nDischarge summary", "A1234567"),
    ],
)
def test_record_numbers_standing_alone_in_a_header(detector: Detector, text: str, value: str) -> None:
    assert value in labelled(detector, text, "MRN"), found(detector, text)


@pytest.mark.parametrize(
    "text",
    [
        "Shift 0700-1900   vitals stable",  # a time range
        "PLT   125000   WBC  7.5",  # a lab value in a column
        "Seen 07/20/83   follow up 2 wks",
        "Call 617-555-1212   if worse",
    ],
)
def test_column_numbers_that_are_no_record_numbers(detector: Detector, text: str) -> None:
    assert labelled(detector, text, "MRN") == [], found(detector, text)


@pytest.mark.parametrize(
    ("text", "value", "label"),
    [
        ("SSN 123-45-6789 on file", "123-45-6789", "ID_NUMBER"),
        ("social security number 123456789", "123456789", "ID_NUMBER"),
        ("SS# 123 45 6789", "123 45 6789", "ID_NUMBER"),
        ("driver's license D1234567 expired", "D1234567", "ID_NUMBER"),
        ("acct #998877665 billed", "998877665", "ID_NUMBER"),
        ("pager 4-5567 overnight", "4-5567", "PHONE"),
        ("身分證字號A123456789", "A123456789", "ID_NUMBER"),
        ("病歷號：A2023-5567", "A2023-5567", "MRN"),
        ("電話0912-345-678", "0912-345-678", "PHONE"),
        ("住院号ZY2023001234", "ZY2023001234", "MRN"),
        ("门诊号SK-20230045", "SK-20230045", "MRN"),
    ],
)
def test_us_and_taiwan_identifiers(detector: Detector, text: str, value: str, label: str) -> None:
    assert (value, label) in found(detector, text), found(detector, text)


def test_invalid_ssn_and_taiwan_ids_are_not_taken(detector: Detector) -> None:
    assert labelled(detector, "code 000-12-3456 and 666-12-3456", "ID_NUMBER") == []
    assert is_valid_taiwan_id("A123456789")
    assert not is_valid_taiwan_id("A123456788")
