"""The dataset walk (``dicom/walker.py``): what it will ask of the UID key is known before it runs."""

from __future__ import annotations

import pydicom

from medllm_pipelines.lib.deidentify.dicom import deidentify_dataset, uids_to_remap
from medllm_pipelines_tests.lib.deidentify.conftest import DeidHospital, keyed_digest

KEY = keyed_digest(b"unit-test-uid-key")
SHIFT = -37


def test_uids_to_remap_lists_what_will_be_asked_of_the_key(deid_hospital: DeidHospital) -> None:
    ds = pydicom.dcmread(deid_hospital.dicom_files[0])
    wanted = set(uids_to_remap(ds))
    asked: list[str] = []

    def recording_key(uid: str) -> str:
        asked.append(uid)
        return KEY(uid)

    deidentify_dataset(ds, uid_key=recording_key, date_shift_days=SHIFT, patient_pseudonym="p")
    assert set(asked) == wanted and str(pydicom.dcmread(deid_hospital.dicom_files[0]).StudyInstanceUID) in wanted
