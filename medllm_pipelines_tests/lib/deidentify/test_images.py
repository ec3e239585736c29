"""The residual self-check's identifiers per patient: the forms a DICOM header writes names in, by owner."""

from __future__ import annotations

import pandas as pd

from medllm_pipelines.lib.deidentify.images import patient_needles
from medllm_pipelines.lib.deidentify.persons import PersonIndex

PERSONS = PersonIndex.from_map(pd.DataFrame({
    "institution": ["hzsf", "rvic"], "patient_key": ["k1", "r1"], "mrn": ["MRN00001", "884213"],
    "patient_pseudonym": ["p_1", "p_1"],
}))


def test_a_patients_names_are_looked_for_as_headers_write_them_under_every_owner() -> None:
    patients = pd.DataFrame({
        "institution": ["hzsf", "rvic", "jhsq"], "resource_key": ["k1", "r1", "j9"],
        "mrn": ["MRN00001", "884213", "JH000009"], "name_zh": ["王建国", None, "李四"],
        "name_en": [None, "Jianguo Wang", None],
    })
    needles = patient_needles(patients, PERSONS)
    assert {"王建国", "王^建国", "Jianguo Wang", "Wang^Jianguo", "MRN00001"} <= needles["p_1"]
    # an unlinked patient's identifiers are still checked, by (institution, MRN)
    assert {"李四", "李^四", "JH000009"} <= needles[("jhsq", "JH000009")]
    assert "李四" not in needles["p_1"]
