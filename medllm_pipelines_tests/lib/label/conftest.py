"""A small synthetic hospital's annotation delivery, read the way the label stage reads the raw zone."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pydicom
import pytest

from medllm_pipelines.lib.ingest.landing import scan_landing
from medllm_pipelines.lib.label.importers import PersonLink, RawObject
from medllm_pipelines.lib.synth import generate_hospital

ANNOTATION_KINDS = ("brat_ann", "brat_text", "nifti_mask", "coco", "dicom_seg")


def fake_hmac(values):
    """Stands in for Vault transit HMAC (deterministic, keyed by a constant)."""
    return [hashlib.sha256(b"test-key:" + v.encode()).hexdigest() for v in values]


@dataclass
class Delivery:
    root: Path
    objects: list[RawObject]
    content: dict[str, bytes]
    dicom_index: pd.DataFrame
    dialogues: pd.DataFrame
    raw_annotations: pd.DataFrame
    link: PersonLink
    pseudonyms: pd.DataFrame

    def read(self, sha: str) -> bytes:
        return self.content[sha]

    def truth(self, institution: str) -> dict:
        return json.loads((self.root / "_truth" / "annotations" / f"{institution}.json").read_text())


def read_delivery(root: Path) -> Delivery:
    content, objects, dicom, dialogues, annotations = {}, [], [], [], []
    for landed in scan_landing(root):
        data = landed.path.read_bytes()
        sha = hashlib.sha256(data).hexdigest()
        content[sha] = data
        if landed.kind in ANNOTATION_KINDS:
            objects.append(RawObject(sha, landed.institution, landed.kind, landed.relpath))
        elif landed.kind == "dicom":
            ds = pydicom.dcmread(landed.path, stop_before_pixels=True)
            dicom.append({"sop_instance_uid": ds.SOPInstanceUID, "rows": ds.Rows, "columns": ds.Columns,
                          "institution": landed.institution, "study_uid": ds.StudyInstanceUID, "patient_id": ds.PatientID})
        elif landed.kind == "dialogues":
            for line in data.splitlines():
                row = json.loads(line)
                dialogues.append({"dialogue_id": row["dialogue_id"], "patient_mrn": row["patient_mrn"], "institution": landed.institution})
        elif landed.kind == "annotations":
            for position, line in enumerate(data.splitlines()):
                annotations.append({**json.loads(line), "institution": landed.institution, "source_object": sha,
                                    "source_position": position})
    people = {(r["institution"], r["patient_mrn"]) for r in dialogues} | {(r["institution"], r["patient_id"]) for r in dicom}
    pseudonyms = pd.DataFrame(
        [{"institution": i, "mrn": m, "patient_key": m, "patient_pseudonym": "p_" + hashlib.sha256(f"{i}{m}".encode()).hexdigest()[:24]}
         for i, m in sorted(people)]
    )
    consent = pd.DataFrame({"patient_pseudonym": pseudonyms["patient_pseudonym"], "consent_status": "granted"})
    return Delivery(root, objects, content, pd.DataFrame(dicom), pd.DataFrame(dialogues), pd.DataFrame(annotations),
                    PersonLink.build(pseudonyms, consent), pseudonyms)


@pytest.fixture(scope="session")
def delivery(tmp_path_factory: pytest.TempPathFactory) -> Delivery:
    root = tmp_path_factory.mktemp("label-hospital")
    generate_hospital(root, patients=60, seed=7)  # default defect rates: planted bad annotations included
    return read_delivery(root)
