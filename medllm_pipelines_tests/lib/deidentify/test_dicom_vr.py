"""Values by value representation (``dicom/vr.py``): dates shift exactly or not at all, UIDs remap under a key."""

from __future__ import annotations

import re

import pytest

from medllm_pipelines.lib.deidentify.dicom import remap_uid, shift_da, shift_dt
from medllm_pipelines_tests.lib.deidentify.conftest import keyed_digest

KEY = keyed_digest(b"unit-test-uid-key")
OTHER_KEY = keyed_digest(b"another-uid-key")
UID = re.compile(r"2\.25\.[1-9]\d*")


def test_remap_uid_is_a_keyed_uuid_derived_uid() -> None:
    new = remap_uid("1.2.3", KEY)
    assert UID.fullmatch(new) and len(new) <= 64
    assert remap_uid("1.2.3", KEY) == remap_uid("1.2.3", KEY) != remap_uid("1.2.3", OTHER_KEY)
    assert remap_uid("1.2.3\x00", KEY) == new  # a UI value's padding is no part of the UID


@pytest.mark.parametrize(
    ("value", "days", "expected"),
    [
        ("20240305", 30, "20240404"),
        ("20240301", -1, "20240229"),  # across a leap day
        ("20240101-20240131", -1, "20231231-20240130"),  # a range moves as a whole
        ("-20240131", 1, "-20240201"),  # an open range keeps its open end
        ("202403", 5, None),  # a partial date cannot be shifted exactly
        ("20240230", 1, None),  # nor an impossible one
    ],
)
def test_shift_da(value: str, days: int, expected: str | None) -> None:
    assert shift_da(value, days) == expected


@pytest.mark.parametrize(
    ("value", "days", "expected"),
    [
        ("20240305123000.5+0100", 30, "20240404123000.5+0100"),  # time and offset stay
        ("20241231", 1, "20250101"),
        ("2024", 1, None),
    ],
)
def test_shift_dt(value: str, days: int, expected: str | None) -> None:
    assert shift_dt(value, days) == expected
