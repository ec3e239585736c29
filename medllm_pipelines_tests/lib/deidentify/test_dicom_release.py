"""Releasing a batch of DICOM instances: keyed digests batched, every file self-checked, held back with a reason."""

from __future__ import annotations

import io
from collections.abc import Sequence
from datetime import date

import pydicom
import pytest
from pydicom.dataset import Dataset

from medllm_pipelines.lib.deidentify.dicom_release import (
    WITHHELD_FAILED,
    WITHHELD_RESIDUAL,
    InstanceToRelease,
    ReleaseSummary,
    release_instances,
)
from medllm_pipelines.lib.deidentify.text import patient_date_shift
from medllm_pipelines_tests.lib.deidentify.conftest import DeidHospital, keyed_digest

KEY = keyed_digest(b"unit-test-release-key")


class CountingHmac:
    """``hmac_many`` as Vault answers it, counting requests."""

    def __init__(self) -> None:
        self.requests = 0
        self.values = 0

    def __call__(self, values: Sequence[str]) -> list[str]:
        self.requests += 1
        self.values += len(values)
        return [KEY(v) for v in values]


def _bytes(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer)
    return buffer.getvalue()


def _instance(image_id: str, data: bytes, pseudonym: str, needles: set[str] | frozenset[str] = frozenset()):
    return InstanceToRelease(image_id, pseudonym, frozenset(needles), lambda: data, context=image_id)


@pytest.fixture(scope="module")
def identities(deid_hospital: DeidHospital) -> dict[str, dict]:
    return {row["mrn"]: row for row in deid_hospital.identities}


def _needles(row: dict) -> set[str]:
    return {row[k] for k in ("mrn", "resident_id", "phone", "email", "address", "name_en", "name_zh") if row.get(k)}


def test_a_study_stays_one_study_across_chunks_with_one_request_per_chunk(deid_hospital: DeidHospital,
                                                                          identities: dict[str, dict]) -> None:
    files = deid_hospital.dicom_files[:12]
    originals = [pydicom.dcmread(path) for path in files]
    instances = [_instance(f"img{n}", path.read_bytes(), _pseudonym(ds), _needles(identities[str(ds.PatientID)]))
                 for n, (path, ds) in enumerate(zip(files, originals, strict=True))]
    hmac = CountingHmac()
    decisions = list(release_instances(instances, hmac, chunk_size=5))
    assert [d.instance.image_id for d in decisions] == [i.image_id for i in instances]
    assert all(d.released and d.data for d in decisions)
    assert hmac.requests == 3  # 12 instances in chunks of 5: one keyed-digest request each
    new_study: dict[str, set[str]] = {}
    for original, decision in zip(originals, decisions, strict=True):
        result = pydicom.dcmread(io.BytesIO(decision.data))
        assert result.StudyInstanceUID != original.StudyInstanceUID
        new_study.setdefault(str(original.StudyInstanceUID), set()).add(str(result.StudyInstanceUID))
        # the date shift is the patient's own, the one the notes of this patient get too
        shift = patient_date_shift(KEY, _pseudonym(original))
        assert decision.date_shift_days == shift != 0
        moved = date.fromisoformat(_iso(result.StudyDate)) - date.fromisoformat(_iso(original.StudyDate))
        assert moved.days == shift
    assert all(len(uids) == 1 for uids in new_study.values())
    assert len({uid for uids in new_study.values() for uid in uids}) == len(new_study)


def _pseudonym(ds: Dataset) -> str:
    return "p_" + KEY(str(ds.PatientID))[:16]


def _iso(da: str) -> str:
    return f"{da[:4]}-{da[4:6]}-{da[6:8]}"


def test_burned_in_residual_and_unreadable_files_are_withheld_with_a_reason(deid_hospital: DeidHospital,
                                                                          identities: dict[str, dict]) -> None:
    path = deid_hospital.dicom_files[0]
    base = pydicom.dcmread(path)
    row = identities[str(base.PatientID)]
    burned = pydicom.dcmread(path)
    burned.BurnedInAnnotation = "YES"
    ultrasound = pydicom.dcmread(path)
    ultrasound.Modality = "US"
    del ultrasound.BurnedInAnnotation
    # bad input: the patient's name typed into StudyDescription, the ID number split by spaces in a comment
    rid, name = row["resident_id"], row["name_zh"] or row["name_en"]
    spaced_id = f"{rid[:6]} {rid[6:14]} {rid[14:]}"
    typed = pydicom.dcmread(path)
    typed.StudyDescription = f"{typed.StudyDescription} {name}"
    typed.ImageComments = f"ID {spaced_id} checked"
    needles = _needles(row)
    decisions = {d.instance.image_id: d for d in release_instances([
        _instance("burned", _bytes(burned), "p_a", needles),
        _instance("ultrasound", _bytes(ultrasound), "p_a", needles),
        _instance("typed", _bytes(typed), "p_a", needles),
        # Manufacturer is kept by the profile: a needle there must stop the release
        _instance("residual", path.read_bytes(), "p_a", needles | {str(base.Manufacturer)}),
        _instance("unreadable", b"\x00" * 200 + rid.encode(), "p_a", needles),
    ], CountingHmac())}
    assert decisions["burned"].withheld_reason_code == "burned_in_annotation"
    assert decisions["ultrasound"].withheld_reason_code == "burned_in_annotation_unknown"
    assert decisions["residual"].withheld_reason_code == WITHHELD_RESIDUAL
    assert decisions["residual"].residual_attributes == ["Manufacturer"]
    assert decisions["unreadable"].withheld_reason_code == WITHHELD_FAILED
    for code in ("burned", "ultrasound", "residual", "unreadable"):
        decision = decisions[code]
        assert decision.data is None and not decision.released
        assert len(decision.withheld_reason) > 20
        assert not any(n in decision.withheld_reason for n in needles | {str(base.Manufacturer)})
    typed_out = decisions["typed"]
    assert typed_out.released
    assert not any(value.encode("utf-8") in typed_out.data for value in (name, rid, spaced_id, rid[6:14]))

    summary = ReleaseSummary()
    for decision in decisions.values():
        summary.add(decision)
    counts = summary.as_dict()
    assert counts["instances"] == counts["released"] + counts["withheld"] == 5
    assert counts["withheld_by_reason"] == {"burned_in_annotation": 1, "burned_in_annotation_unknown": 1,
                                            WITHHELD_FAILED: 1, WITHHELD_RESIDUAL: 1}
    assert counts["uids_remapped"] >= 4 * 4 and counts["attributes_removed"] > 0
    assert counts["private_tags_removed"] >= 4 and counts["patient_identity_removed_yes"] == 1
