"""DICOM header index rows, and damaged files quarantined (pydicom's bundled test files)."""

from __future__ import annotations

import io
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


# --- lazy pixel data, offsets, study/series summaries ----------------------------------
class CountingReader(io.BytesIO):
    """A file that counts the bytes read from it."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.bytes_read = 0

    def read(self, size: int | None = -1) -> bytes:
        chunk = super().read(size)
        self.bytes_read += len(chunk)
        return chunk


def test_a_path_an_open_file_and_bytes_index_alike(tmp_path):
    content = bundled_file("CT_small.dcm")
    path = tmp_path / "ct.dcm"
    path.write_bytes(content)

    from_bytes, _ = index(content)
    from_path, _ = index_dicom_object(path, institution="h1", source_object="f" * 64, asset="ingest/dicom")
    with path.open("rb") as handle:
        from_file, _ = index_dicom_object(handle, institution="h1", source_object="f" * 64, asset="ingest/dicom")

    assert from_bytes == from_path == from_file
    assert from_bytes["pixel_data_bytes"] == 128 * 128 * 2
    assert from_bytes["file_bytes"] == len(content)


def test_pixel_data_are_not_read_to_index_a_file():
    content = bundled_file("CT_small.dcm")
    reader = CountingReader(content)

    row, _ = index_dicom_object(reader, institution="h1", source_object="f" * 64, asset="ingest/dicom")

    assert row["pixel_data_offset"] + row["pixel_data_bytes"] <= len(content)
    assert reader.bytes_read < row["pixel_data_offset"] + 64  # the header and the PixelData element header only


@pytest.mark.parametrize("name", ["JPEG2000.dcm", "693_J2KI.dcm"])
def test_encapsulated_pixel_data_are_checked_by_their_fragment_items(name):
    content = bundled_file(name)

    row, rejected = index(content)
    cut_row, cut = index(content[:-9])  # inside the last fragment / before the sequence delimiter

    assert rejected is None and row["pixel_data_bytes"] is None
    assert cut_row is None and cut.reason_code == "truncated_file"


def test_elements_after_the_pixel_data_must_be_whole():
    padding = bytes.fromhex("fcfffcff") + b"OB" + b"\x00\x00" + (8).to_bytes(4, "little") + bytes(8)
    whole = bundled_file("MR_small.dcm") + padding

    assert index(whole)[1] is None
    assert index(whole[:-3])[1].reason_code == "truncated_file"


@pytest.mark.parametrize(
    ("date", "time", "offset", "iso_date", "iso_datetime"),
    [
        ("20240305", "093015.123", "+0800", "2024-03-05", "2024-03-05T09:30:15+08:00"),
        ("20240305", "0930", None, "2024-03-05", "2024-03-05T09:30:00"),
        ("2024.03.05", None, None, "2024-03-05", None),
        ("20241305", "0930", None, None, None),
        ("", "0930", None, None, None),
    ],
)
def test_dicom_dates_become_iso_8601(date, time, offset, iso_date, iso_datetime):
    from medllm_pipelines.lib.ingest.dicom import dicom_date, dicom_datetime

    assert (dicom_date(date), dicom_datetime(date, time, offset)) == (iso_date, iso_datetime)


def test_indexed_dates_are_iso():
    row, _ = index(bundled_file("CT_small.dcm"))

    assert row["study_date"] == "2004-01-19" and row["study_datetime"].startswith("2004-01-19T")
