"""DICOM as modalities write it: pydicom-data's external files (../shared/conformance/dicom/), pydicom's
own DICOMDIR, and mutated files that must give an index row or a quarantine record, never an exception."""

from __future__ import annotations

import hashlib
import io
import warnings
from pathlib import Path

import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.data import get_testdata_file

from medllm_pipelines.lib.deidentify.dicom_release import InstanceToRelease, release_instances
from medllm_pipelines.lib.ingest.dicom import DICOM_FRAME_COLUMNS, DICOM_INDEX_COLUMNS, decoded_pixels, index_dicom
from medllm_pipelines.lib.ingest.dicom_partition import DicomPartition

CONFORMANCE = Path(__file__).resolve().parents[3].parent / "shared" / "conformance" / "dicom"
needs_corpus = pytest.mark.skipif(not CONFORMANCE.is_dir(), reason="../shared/conformance is not present")

# file -> (outcome, frames or reason code, pixels decodable here); README: what each file exercises
EXPECTED = {
    "pdd_JLSL_08_07_0_1F.dcm": ("indexed", 1, True),  # JPEG-LS; no Study/Series UID (type 1, recorded as warnings)
    "pdd_MR-SIEMENS-DICOM-WithOverlays.dcm": ("indexed", 1, True),  # Siemens CSA private tags, overlays
    "pdd_OBXXXX1A_rle.dcm": ("indexed", 1, True),  # RLE Lossless ultrasound
    "pdd_bad_sequence.dcm": ("indexed", 1, True),  # JPEG Lossless SV1; sequences parse with pydicom 3.0.2, UIDs invalid
    "pdd_eCT_Supplemental.dcm": ("indexed", 2, True),  # enhanced CT, per-frame functional groups
    "pdd_emri_small_jpeg_2k_lossless.dcm": ("indexed", 10, True),  # enhanced MR, JPEG 2000
    "pdd_explicit_VR-UN.dcm": ("indexed", 1, True),  # UN elements, JPEG 2000
    "pdd_liver_deflate.dcm": ("quarantined", "unknown_transfer_syntax", None),  # 1.2.840.10008.1.2.8.1
}


def _index(content, source_object: str = "f" * 64):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about invalid values; the index records them
        return index_dicom(content, institution="h1", source_object=source_object, asset="ingest/dicom_instances")


@needs_corpus
def test_every_corpus_file_has_its_expected_outcome() -> None:
    assert sorted(p.name for p in CONFORMANCE.glob("*.dcm")) == sorted(EXPECTED)
    for name, (outcome, detail, decodable) in EXPECTED.items():
        indexed = _index(CONFORMANCE / name)
        if outcome == "quarantined":
            assert indexed.instance is None and indexed.quarantine is not None, name
            assert indexed.quarantine.reason_code == detail, (name, indexed.quarantine.reason)
            continue
        assert indexed.quarantine is None, (name, indexed.quarantine)
        assert set(indexed.instance) == set(DICOM_INDEX_COLUMNS)
        assert indexed.instance["number_of_frames"] == detail == len(indexed.frames), name
        assert indexed.instance["pixel_decodable"] is decodable, name
        assert [f["frame_number"] for f in indexed.frames] == list(range(1, detail + 1))
        assert all(set(f) == set(DICOM_FRAME_COLUMNS) for f in indexed.frames)


@needs_corpus
def test_decodable_pixels_really_decode_with_the_installed_plugins() -> None:
    for name, (outcome, frames, decodable) in EXPECTED.items():
        if outcome != "indexed":
            continue
        pixels, reason = decoded_pixels((CONFORMANCE / name).read_bytes())
        assert reason is None, (name, reason)
        assert pixels.shape[0] == frames if frames > 1 else pixels.ndim >= 2


@needs_corpus
def test_enhanced_multiframe_objects_are_indexed_per_frame_from_their_functional_groups() -> None:
    indexed = _index(CONFORMANCE / "pdd_eCT_Supplemental.dcm")
    positions = [f["image_position_patient"] for f in indexed.frames]
    assert all(positions) and len(set(positions)) == 2  # two slices, two positions
    assert all(f["pixel_spacing"] and f["slice_thickness"] for f in indexed.frames)
    assert all(f["dimension_index_values"] for f in indexed.frames)


@needs_corpus
def test_missing_and_invalid_uids_are_warnings_not_rejections() -> None:
    assert _index(CONFORMANCE / "pdd_JLSL_08_07_0_1F.dcm").instance["header_warnings"] == (
        "StudyInstanceUID_missing;SeriesInstanceUID_missing"
    )
    assert "SOPInstanceUID_invalid" in _index(CONFORMANCE / "pdd_bad_sequence.dcm").instance["header_warnings"]


def test_a_missing_sop_instance_uid_is_quarantined() -> None:
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    del ds.SOPInstanceUID
    buffer = io.BytesIO()
    ds.save_as(buffer)
    indexed = _index(buffer.getvalue())
    assert indexed.quarantine.reason_code == "missing_sop_instance_uid"


def test_a_transfer_syntax_without_a_decoder_is_indexed_with_its_pixels_marked_undecodable() -> None:
    ds = pydicom.dcmread(get_testdata_file("MR_small_jp2klossless.dcm"))
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"  # MPEG2: pydicom has no decoder for video
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    indexed = _index(buffer.getvalue())
    assert indexed.quarantine is None
    assert indexed.instance["pixel_decodable"] is False
    assert "MPEG2" in indexed.instance["pixel_undecodable_reason"]
    assert decoded_pixels(buffer.getvalue(), indexed.instance["pixel_undecodable_reason"]) == (None, "pixels_undecodable")


def test_a_dicomdir_is_read_as_the_index_of_its_folder_and_missing_files_are_counted() -> None:
    path = Path(get_testdata_file("DICOMDIR"))
    folder = path.parent
    partition = DicomPartition("ingest/dicom_instances")
    partition.add("d" * 64, "h1", _index(path, "d" * 64))
    referenced = partition.directories[0].references
    delivered = [folder / file_id for file_id, _ in referenced][:-3]  # three referenced files never arrive
    for index, file in enumerate(delivered):
        digest = hashlib.sha256(str(index).encode()).hexdigest()
        partition.add(digest, "h1", _index(file, digest))
    summary = partition.directory_summary()
    assert summary["dicomdirs"] == 1
    assert summary["records_by_type"] == {"IMAGE": 31, "PATIENT": 2, "SERIES": 13, "STUDY": 6}
    assert summary["referenced_files"] == 31
    assert summary["referenced_files_delivered"] == len(delivered) == 28
    assert summary["referenced_files_missing"] == 3
    assert partition.outcomes.unbalanced() == []
    assert partition.records_in == 29 == len(partition.instances) + len(partition.directories)


@needs_corpus
def test_every_indexed_corpus_file_is_deidentified_or_withheld_with_a_reason() -> None:
    import functools

    def hmac_many(messages):
        return [hashlib.sha256(m.encode()).hexdigest() for m in messages]

    names = [n for n, (outcome, _, _) in EXPECTED.items() if outcome == "indexed"]
    instances = [
        InstanceToRelease(image_id=n, patient_pseudonym="p1", needles=frozenset(),
                          read=functools.partial((CONFORMANCE / n).read_bytes), context=None)
        for n in names
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        decisions = {d.instance.image_id: d for d in release_instances(instances, hmac_many)}
    assert set(decisions) == set(names)
    # ultrasound without BurnedInAnnotation may show the patient's name in the pixels: held back
    assert decisions["pdd_OBXXXX1A_rle.dcm"].withheld_reason_code == "burned_in_annotation_unknown"
    for name, decision in decisions.items():
        if name == "pdd_OBXXXX1A_rle.dcm":
            continue
        assert decision.released, (name, decision.withheld_reason_code, decision.withheld_reason)
        out = pydicom.dcmread(io.BytesIO(decision.data))
        assert out.PatientIdentityRemoved == "YES"
        assert not any(tag.is_private for tag in out.keys()) or name == "pdd_MR-SIEMENS-DICOM-WithOverlays.dcm"
        assert decoded_pixels(decision.data)[1] is None, name  # compressed pixel data survive de-identification


def _seed_files() -> list[bytes]:
    names = ["CT_small.dcm", "MR_small.dcm", "MR_small_jp2klossless.dcm", "SC_rgb_rle_2frame.dcm", "image_dfl.dcm",
             "nested_priv_SQ.dcm", "DICOMDIR"]
    files = [Path(get_testdata_file(n)).read_bytes() for n in names]
    if CONFORMANCE.is_dir():
        files += [p.read_bytes() for p in sorted(CONFORMANCE.glob("*.dcm"))]
    return files


SEEDS = _seed_files()


@st.composite
def mutated_dicom(draw) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(0, 6))):
        position = draw(st.integers(0, len(data) - 1))
        data[position] = draw(st.integers(0, 255))
    if draw(st.booleans()):
        data = data[: draw(st.integers(0, len(data)))]
    if draw(st.booleans()):  # a run of bytes overwritten inside the header, where lengths and VRs live
        start = draw(st.integers(128, min(len(data), 2048))) if len(data) > 128 else 0
        data[start : start + 8] = draw(st.binary(min_size=0, max_size=8))
    return bytes(data)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(mutated_dicom())
def test_a_mutated_or_truncated_file_gives_an_index_row_a_directory_or_a_quarantine_record(data: bytes) -> None:
    indexed = _index(data)
    outcomes = [indexed.instance is not None, indexed.directory is not None, indexed.quarantine is not None]
    assert sum(outcomes) == 1
    if indexed.quarantine is not None:
        assert indexed.quarantine.reason_code and indexed.quarantine.source_object == "f" * 64
    if indexed.instance is not None:
        assert len(indexed.frames) == indexed.instance["number_of_frames"]
