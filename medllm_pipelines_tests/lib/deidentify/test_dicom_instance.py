"""One DICOM instance end to end (``dicom/instance.py``): nothing identifying survives, studies stay studies."""

from __future__ import annotations

import io
import re
import subprocess
import sys
from collections import defaultdict
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset

from medllm_pipelines.lib.deidentify.dicom import (
    deidentify_dataset,
    deidentify_file,
    load_profile,
    residual_identifiers,
)
from medllm_pipelines.lib.deidentify.text import SurrogateFactory
from medllm_pipelines_tests.lib.deidentify.conftest import DeidHospital, keyed_digest

KEY = keyed_digest(b"unit-test-uid-key")
OTHER_KEY = keyed_digest(b"another-uid-key")
SHIFT = -37
UID = re.compile(r"2\.25\.[1-9]\d*")


def deidentify(data: bytes, key: Any = KEY, **kwargs: Any) -> tuple[Dataset, Any, bytes]:
    out, report = deidentify_file(data, uid_key=key, date_shift_days=kwargs.pop("shift", SHIFT),
                                  patient_pseudonym=kwargs.pop("pseudonym", "p_test"), **kwargs)
    return pydicom.dcmread(io.BytesIO(out)), report, out


def identity_needles(row: dict[str, Any]) -> set[str]:
    """Every form an identity can take in a header or text: PN component groups, compact dates."""
    needles = {row[k] for k in ("mrn", "resident_id", "phone", "email", "address") if row.get(k)}
    needles.add(row["birth_date"].replace("-", ""))
    needles.update(row.get("accession_numbers") or [])
    given_en, family_en = row["name_en"].split(" ", 1)
    needles.update({row["name_en"], f"{family_en}^{given_en}", family_en + given_en})
    needles.update(part for part in (given_en, family_en) if len(part) >= 4)
    if row.get("name_zh"):
        zh = row["name_zh"]
        needles.update({zh, f"{zh[0]}^{zh[1:]}"})
        if len(zh) >= 3:
            needles.add(zh[1:])
    return needles


def header_needles(ds: Dataset) -> set[str]:
    """The input file's own identifying values: names of anyone, IDs, private strings."""
    needles: set[str] = set()
    for element in ds.iterall():
        if element.VR == "PN" and element.value:
            for group in str(element.value).split("="):
                needles.update(c for c in group.split("^") if len(c) >= 2 and any(ch.isalnum() for ch in c))
        elif element.keyword in ("PatientID", "AccessionNumber") and element.value:
            needles.add(str(element.value))
        elif (element.tag.is_private and element.tag.element > 0xFF and isinstance(element.value, str)
              and len(element.value) >= 6):
            needles.add(element.value)
    return needles


def test_no_identifier_of_the_synthetic_files_survives(deid_hospital: DeidHospital) -> None:
    files = deid_hospital.dicom_files
    assert len(files) >= 20
    identities = {row["mrn"]: row for row in deid_hospital.identities}
    for path in files:
        data = path.read_bytes()
        original = pydicom.dcmread(io.BytesIO(data))
        needles = identity_needles(identities[str(original.PatientID)]) | header_needles(original)
        result, report, out = deidentify(data)
        assert residual_identifiers(result, needles) == [], path.name
        assert not any(needle.encode("utf-8") in out for needle in needles), path.name  # byte level too
        assert report.private_removed >= 3 and not report.quarantine
        assert result.PatientIdentityRemoved == "YES"
        assert result.PatientID == "p_test" and str(result.PatientName) == "p_test"
        assert {item.CodeValue for item in result.DeidentificationMethodCodeSequence} == {"113100", "113107", "113105"}
        assert all(item.CodingSchemeDesignator == "DCM" for item in result.DeidentificationMethodCodeSequence)
        assert load_profile().version in result.DeidentificationMethod


def test_identifiers_hidden_in_unexpected_places_are_caught(deid_hospital: DeidHospital) -> None:
    path = deid_hospital.dicom_files[0]
    ds = pydicom.dcmread(path)
    row = next(r for r in deid_hospital.identities if r["mrn"] == str(ds.PatientID))
    phone, rid = row["phone"], row["resident_id"]
    spaced_phone = f"{phone[:3]} {phone[3:7]} {phone[7:]}"
    name = row["name_zh"] or row["name_en"]
    ds.StudyDescription = f"{ds.StudyDescription} {name}"  # a name in StudyDescription
    ds.ImageComments = f"复查请联系 {spaced_phone}"  # a phone in ImageComments
    ds.SeriesDescription = "".join(chr(ord(c) + 0xFEE0) if c.isdigit() else c for c in f"电话{phone}")  # full width
    ds.AdditionalPatientHistory = f"身份证 {rid[:6]} {rid[6:14]} {rid[14:]}"  # an ID split by spaces
    ds.ManufacturerModelName = "Dr. Wang 13812345678"  # an attribute the profile does not list
    block = ds.private_block(0x0013, "SITE NOTES", create=True)
    block.add_new(0x10, "LO", f"call {phone}")  # and one more private tag
    buffer = io.BytesIO()
    ds.save_as(buffer)
    surrogate = SurrogateFactory(KEY, scope="p_test", date_shift_days=SHIFT)
    result, report, _ = deidentify(buffer.getvalue(), surrogate_for=surrogate)
    needles = identity_needles(row) | {spaced_phone, "13812345678", "Wang"}
    assert residual_identifiers(result, needles) == []
    assert {"StudyDescription", "ImageComments", "SeriesDescription", "AdditionalPatientHistory",
            "ManufacturerModelName"} <= set(report.cleaned_attributes)
    assert report.identifiers_replaced["PHONE"] >= 3
    assert str(result.StudyDescription).startswith(str(pydicom.dcmread(path).StudyDescription))  # still readable
    assert not any(tag.group == 0x0013 for tag in result.keys())  # noqa: SIM118 - a Dataset iterates elements


def test_uids_are_consistent_within_a_study_reproducible_and_keyed(deid_hospital: DeidHospital) -> None:
    by_study: dict[str, list[Dataset]] = defaultdict(list)
    originals = {}
    for path in deid_hospital.dicom_files:
        result, _, _ = deidentify(path.read_bytes())
        by_study[path.parent.as_posix()].append(result)
        originals[str(result.SOPInstanceUID)] = pydicom.dcmread(path)
    study_uids = set()
    for results in by_study.values():
        assert len({str(r.StudyInstanceUID) for r in results}) == 1
        assert len({str(r.SeriesInstanceUID) for r in results}) == 1
        assert len({str(r.FrameOfReferenceUID) for r in results}) == 1
        assert len({str(r.SOPInstanceUID) for r in results}) == len(results)
        study_uids.add(str(results[0].StudyInstanceUID))
        for r in results:
            for uid in (r.StudyInstanceUID, r.SeriesInstanceUID, r.SOPInstanceUID, r.FrameOfReferenceUID):
                assert UID.fullmatch(str(uid)) and len(str(uid)) <= 64
            assert r.file_meta.MediaStorageSOPInstanceUID == r.SOPInstanceUID
            assert r.SOPClassUID == originals[str(r.SOPInstanceUID)].SOPClassUID  # class UIDs are kept
    assert len(study_uids) == len(by_study)
    data = deid_hospital.dicom_files[0].read_bytes()
    first, _, first_bytes = deidentify(data)
    _, _, again_bytes = deidentify(data)
    other, _, _ = deidentify(data, key=OTHER_KEY)
    assert first_bytes == again_bytes  # reproducible under one key
    assert other.StudyInstanceUID != first.StudyInstanceUID  # and keyed


def test_dates_move_by_exactly_the_patient_shift_and_times_stay(deid_hospital: DeidHospital) -> None:
    path = deid_hospital.dicom_files[0]
    before = pydicom.dcmread(path)
    for shift in (SHIFT, 400):
        after, report, _ = deidentify(path.read_bytes(), shift=shift)
        for keyword in ("StudyDate", "SeriesDate", "ContentDate"):
            old = date(*map(int, (before[keyword].value[:4], before[keyword].value[4:6], before[keyword].value[6:])))
            assert after[keyword].value == f"{old + timedelta(days=shift):%Y%m%d}", keyword
        assert after.StudyTime == before.StudyTime
        assert after.PatientBirthDate == ""  # a birth date is not longitudinal: removed
        assert "PatientAge" not in after and report.dates_shifted == 3


def test_burned_in_annotation_quarantines_unless_cleaned(deid_hospital: DeidHospital) -> None:
    ds = pydicom.dcmread(deid_hospital.dicom_files[0])
    ds.BurnedInAnnotation = "YES"
    buffer = io.BytesIO()
    ds.save_as(buffer)
    _, report, _ = deidentify(buffer.getvalue())
    assert report.quarantine and report.quarantine_reason == "burned_in_annotation"
    cleaned, report, _ = deidentify(buffer.getvalue(), pixels_cleaned=lambda dataset: True)
    assert not report.quarantine and cleaned.BurnedInAnnotation == "NO"
    assert "113101" in {item.CodeValue for item in cleaned.DeidentificationMethodCodeSequence}
    ultrasound = pydicom.dcmread(deid_hospital.dicom_files[0])
    ultrasound.Modality = "US"
    del ultrasound.BurnedInAnnotation
    _, report = deidentify_dataset(ultrasound, uid_key=KEY, date_shift_days=1, patient_pseudonym="p")
    assert report.quarantine and report.quarantine_reason == "burned_in_annotation_unknown"


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small.dcm"])
def test_pydicom_bundled_files(name: str) -> None:
    data = Path(get_testdata_file(name)).read_bytes()
    original = pydicom.dcmread(io.BytesIO(data))
    result, report, _ = deidentify(data)
    needles = header_needles(original) | {"ABCD1234", "1234ABCD"}
    assert residual_identifiers(result, needles) == []
    study = original.StudyDate
    assert result.StudyDate == f"{date(int(study[:4]), int(study[4:6]), int(study[6:])) + timedelta(days=SHIFT):%Y%m%d}"
    assert result.pixel_array.shape == original.pixel_array.shape
    assert (result.pixel_array == original.pixel_array).all()
    if name == "CT_small.dcm":  # GE private acquisition parameters on the allow-list stay, the rest goes
        assert report.private_retained == 2 and report.private_removed > 100
        assert "113111" in report.method_codes
        assert all(tag.group == 0x0019 for tag in result.keys() if tag.is_private)  # noqa: SIM118


def test_platform_code_imports_no_benchmark_peer_and_no_torch_to_detect() -> None:
    code = (
        "import sys\n"
        "from medllm_pipelines.lib.deidentify import dicom\n"
        "from medllm_pipelines.lib.deidentify.text import build_detector\n"
        "build_detector().detect('患者王伟，电话13800138000')\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('presidio_analyzer', 'deid', 'torch')]\n"
        "print(bad)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
