"""Staging a folder of files written elsewhere as deliveries: by content, nothing dropped."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
import yaml
from pydicom.data import get_testdata_file

from medllm_pipelines.lib.ingest.corpus import sniff_kind, source_code, stage_corpus
from medllm_pipelines.lib.ingest.landing import classify, scan_landing

CONFORMANCE = Path(__file__).resolve().parents[3].parent / "shared" / "conformance"


@pytest.mark.parametrize(
    ("head", "name", "kind"),
    [
        (b"\xef\xbb\xbfMSH|^~\\&|A", "x.txt", "hl7v2"),
        (b"\x0bMSH|^~\\&|A", "mllp.bin", "hl7v2"),
        (b"FHS|^~\\&|", "batch", "hl7v2"),
        (b'{"resourceType": "Bundle"}', "b.txt", "fhir_bundle"),
        (b'{"resourceType": "Patient"}\n{"resourceType": "Patient"}\n', "export", "fhir_ndjson"),
        (b"\x00" * 128 + b"DICM" + b"\x02\x00", "IM0001", "dicom"),
        (b"%PDF-1.4", "scan.pdf", "unsupported"),
    ],
)
def test_kind_is_read_from_content_not_name(head: bytes, name: str, kind: str) -> None:
    assert sniff_kind(head, name) == kind


def test_source_codes_are_valid_registry_codes() -> None:
    assert source_code("spec-examples-r4") == "spec-examples-r4"
    assert source_code("Hospital A (2024)") == "hospital-a-2024"
    assert source_code("X") == "src-x"


def test_a_mixed_folder_is_delivered_by_content_with_its_registry(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    (corpus / "site one" / "nested").mkdir(parents=True)
    (corpus / "site one" / "msg.txt").write_bytes(b"MSH|^~\\&|LAB|H|||20240101||ORU^R01|1|P|2.5.1\r")
    (corpus / "site one" / "nested" / "IMG1").write_bytes(Path(get_testdata_file("CT_small.dcm")).read_bytes())
    (corpus / "site one" / "notes.pdf").write_bytes(b"%PDF-1.4")
    (corpus / "site one" / "README.md").write_text("about")
    staged = stage_corpus(corpus, tmp_path / "landing")

    assert staged.by_source_and_kind == {"site-one": {"dicom": 1, "hl7v2": 1, "unsupported": 1}}
    assert staged.skipped == ["site one/README.md"]
    landed = {f.relpath: f.kind for f in scan_landing(tmp_path / "landing")}
    assert landed["site-one/dicom/nested/IMG1"] == "dicom"
    assert landed["site-one/hl7/msg.txt.hl7"] == "hl7v2"
    assert landed["site-one/other/notes.pdf"] == "unsupported"  # delivered, so intake quarantines it with a reason
    registry = yaml.safe_load(staged.sources_file.read_text())
    assert [s["code"] for s in registry["sources"]] == ["site-one"]
    assert pydicom.dcmread(tmp_path / "landing" / "site-one/dicom/nested/IMG1").SOPInstanceUID


@pytest.mark.skipif(not CONFORMANCE.is_dir(), reason="../shared/conformance is not present")
def test_the_conformance_corpus_is_staged_whole(tmp_path: Path) -> None:
    staged = stage_corpus(CONFORMANCE, tmp_path / "landing", folders=("fhir", "hl7v2", "dicom"))
    expected = {
        folder: sum(1 for p in (CONFORMANCE / folder).rglob("*") if p.is_file())
        for folder in ("fhir", "hl7v2", "dicom")
    }
    kinds = staged.by_source_and_kind
    assert sum(kinds["fhir"].values()) == expected["fhir"]
    assert kinds["hl7v2"] == {"hl7v2": expected["hl7v2"]}
    assert kinds["dicom"] == {"dicom": expected["dicom"]}
    assert all(classify(relpath) != "unsupported" for relpath in staged.delivered)
