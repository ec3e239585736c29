"""What the landing-zone scan picks up, and what it leaves alone."""

from __future__ import annotations

import pytest

from medllm_pipelines.lib.ingest.landing import (
    ANNOTATIONS,
    CONSULTATIONS,
    DIALOGUES,
    DICOM,
    FHIR_BUNDLE,
    FHIR_NDJSON,
    UNSUPPORTED,
    scan_landing,
)

LANDED = {
    "h1/fhir/bundle_001.json": FHIR_BUNDLE,
    "h1/bulk/Patient.ndjson": FHIR_NDJSON,
    "h1/dicom/1.2.3.4": DICOM,  # DICOM files often have no extension
    "h2/pacs/张三_CT.DCM": DICOM,
    "h1/dialogues/2024-03.jsonl": DIALOGUES,
    "h1/consultations/2024-03.jsonl": CONSULTATIONS,
    "h1/consultations/readme.txt": UNSUPPORTED,
    "h1/annotations/batch1.jsonl": ANNOTATIONS,
    "h1/notes/readme.txt": UNSUPPORTED,
    "h1/misc/other.jsonl": UNSUPPORTED,
}
IGNORED = ["h1/_truth/manifest.json", "h1/fhir/.bundle_002.json.tmp", "h1/.staging/bundle.json", "_spool/h1/x.json"]


def _write(root, relpath: str) -> None:
    path = root / relpath
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"{}")


def test_scan_classifies_files_and_skips_underscore_and_dot_paths(tmp_path):
    for relpath in [*LANDED, *IGNORED]:
        _write(tmp_path, relpath)

    found = scan_landing(tmp_path)

    assert {f.relpath: f.kind for f in found} == LANDED
    assert [f.relpath for f in found] == sorted(LANDED)  # stable order
    assert all(f.size_bytes == 2 and f.path == tmp_path / f.relpath for f in found)


@pytest.mark.parametrize(
    ("relpath", "institution"),
    [
        ("h1/fhir/a.json", "h1"),
        ("rural-clinic_2/fhir/a.json", "rural-clinic_2"),
        ("stray.json", None),  # not inside a source folder
        ("Hospital One/fhir/a.json", None),  # not a valid institution code
        ("x/fhir/a.json", None),  # too short
    ],
)
def test_institution_comes_from_the_first_folder(tmp_path, relpath, institution):
    _write(tmp_path, relpath)

    (landed,) = scan_landing(tmp_path)

    assert landed.institution == institution


def test_missing_landing_folder_is_empty(tmp_path):
    assert scan_landing(tmp_path / "absent") == []
