"""The output layout is a contract with the ingest stage."""

from __future__ import annotations

import json
import re

from medllm_pipelines.lib.synth import INSTITUTIONS, load_manifest
from medllm_pipelines_tests.lib.synth.conftest import Hospital

ALLOWED = [
    re.compile(r"^(hzsf|jhsq)/fhir/bundles/bundle-\d{5}\.json$"),
    re.compile(r"^rvic/fhir/bulk/[A-Za-z]+\.ndjson$"),
    re.compile(r"^(hzsf|rvic|jhsq)/dicom/study-\d{5}/IM\d{5}\.dcm$"),
    re.compile(r"^(hzsf|rvic|jhsq)/dialogues/dialogues\.jsonl$"),
    re.compile(r"^(hzsf|rvic|jhsq)/annotations/annotations\.jsonl$"),
    # annotation files (lib/synth/annotation_files.py): brat, NIfTI masks, DICOM SEG, COCO, decisions
    re.compile(r"^[a-z]{4}/annotations/brat/dlg-[a-z]{4}-\d{5}\.txt$"),
    re.compile(r"^[a-z]{4}/annotations/brat/[a-z0-9-]+/dlg-[a-z]{4}-\d{5}\.ann$"),
    re.compile(r"^[a-z]{4}/annotations/masks/[a-z0-9-]+/study-\d{5}\.nii\.gz$"),
    re.compile(r"^[a-z]{4}/annotations/seg/ann-\d{2}/study-\d{5}\.dcm$"),
    re.compile(r"^[a-z]{4}/annotations/coco/boxes-ann-\d{2}\.json$"),
    re.compile(r"^[a-z]{4}/annotations/(adjudication|audit)\.jsonl$"),
    re.compile(r"^_truth/annotations/[a-z]{4}\.json$"),
    re.compile(r"^whsy/hl7/(adt|oru)-\d{4}\.hl7$"),
    re.compile(r"^_truth/(manifest\.json|patients\.jsonl|images\.jsonl|identities\.jsonl|vitals\.jsonl|"
               r"consultations\.jsonl)$"),
    # recorded visits (lib/synth/consultations.py): transcript + signed record, one JSONL per institution
    re.compile(r"^(hzsf|rvic|jhsq)/consultations/consultations\.jsonl$"),
    # bedside vital signs of inpatient stays (lib/synth/vitals.py): FHIR Bulk NDJSON beside the main feed
    re.compile(r"^(hzsf|rvic|jhsq)/vitals/(Observation|Procedure)\.ndjson$"),
    re.compile(r"^_truth/masks/(hzsf|rvic|jhsq)/study-\d{5}/IM\d{5}\.npy$"),
]


def test_every_file_is_where_the_contract_says(defective_hospital: Hospital) -> None:
    files = [p.relative_to(defective_hospital.root).as_posix() for p in defective_hospital.root.rglob("*")
             if p.is_file()]
    assert [name for name in files if not any(pattern.match(name) for pattern in ALLOWED)] == []
    for institution in INSTITUTIONS:
        assert any(name.startswith(f"{institution.code}/fhir/") for name in files)


def test_every_image_has_a_mask_at_the_mirrored_path(clean_hospital: Hospital) -> None:
    for image in clean_hospital.image_truth:
        assert image["mask_file"] == "_truth/masks/" + image["file"].replace("/dicom/", "/").replace(".dcm", ".npy")
        assert (clean_hospital.root / image["mask_file"]).is_file()


def test_manifest_round_trips_and_describes_each_institution(clean_hospital: Hospital) -> None:
    loaded = load_manifest(clean_hospital.root)
    assert loaded == clean_hospital.manifest
    document = json.loads((clean_hospital.root / "_truth" / "manifest.json").read_text("utf-8"))
    assert document["reference_date"] == "2026-01-01"
    described = {inst["code"]: inst for inst in document["institutions"]}
    assert described["hzsf"]["units"]["fasting_glucose"] == "mg/dL"
    assert described["rvic"]["units"]["hba1c"] == "mmol/mol"
    assert described["jhsq"]["timestamp_style"] == "date_only"
    for code, counts in document["counts"].items():
        assert counts["resources"]["Patient"] >= counts["patient_records"] > 0, code
