"""DICOM header index rows, and damaged files quarantined (pydicom's bundled test files)."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

from medllm_pipelines.lib.ingest.dicom import index_dicom_object

pydicom_data = pytest.importorskip("pydicom.data")


def bundled_file(name: str) -> bytes:
    path = pydicom_data.get_testdata_file(name)
    if path is None:  # pragma: no cover - would need a download
        pytest.skip(f"{name} is not bundled with this pydicom")
    return Path(path).read_bytes()


def index(content: bytes):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about the odd values of cut files
        return index_dicom_object(content, institution="h1", source_object="f" * 64, asset="ingest/dicom")


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("CT_small.dcm", {"modality": "CT", "rows": 128, "columns": 128, "bits_allocated": 16, "patient_id": "1CT1"}),
        ("MR_small.dcm", {"modality": "MR", "rows": 64, "columns": 64, "bits_allocated": 16, "patient_id": "4MR1"}),
    ],
)
def test_complete_files_are_indexed(name, expected):
    row, rejected = index(bundled_file(name))

    assert rejected is None
    assert {k: row[k] for k in expected} == expected
    assert row["sop_instance_uid"] and row["study_uid"] and row["series_uid"]
    assert row["number_of_frames"] == 1


def test_private_tags_are_counted_for_the_deidentify_stage():
    ct_row, _ = index(bundled_file("CT_small.dcm"))
    mr_row, _ = index(bundled_file("MR_small.dcm"))

    assert ct_row["private_tag_count"] > 0  # GE private groups
    assert mr_row["private_tag_count"] == 0


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small.dcm"])
@pytest.mark.parametrize("keep", [0.02, 0.1, 0.5, 0.9, "all_but_one_byte"])
def test_a_truncated_copy_is_quarantined_not_indexed(name, keep):
    content = bundled_file(name)
    cut = len(content) - 1 if keep == "all_but_one_byte" else int(len(content) * keep)

    row, rejected = index(content[:cut])

    assert row is None
    assert rejected.reason_code in {"truncated_file", "unreadable_dicom"}, rejected.reason
    assert (rejected.institution, rejected.source_object, rejected.resource_type) == ("h1", "f" * 64, "DICOM")


def test_pydicoms_own_truncated_sample_is_quarantined():
    row, rejected = index(bundled_file("MR_truncated.dcm"))

    assert row is None
    assert rejected.reason_code == "truncated_file"


@pytest.mark.parametrize(
    ("content", "code"),
    [
        (b"", "empty_file"),
        (b'{"resourceType": "Patient"}', "not_dicom"),
        (b"\x89PNG\r\n\x1a\n" + bytes(400), "not_dicom"),
        (bytes(128) + b"DICX" + bytes(64), "not_dicom"),
    ],
    ids=["zero_bytes", "json", "png", "wrong_prefix"],
)
def test_files_that_are_not_dicom(content, code):
    row, rejected = index(content)

    assert row is None
    assert rejected.reason_code == code
