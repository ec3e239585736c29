"""The header's own identifiers (``dicom/header.py``): found again in free text, in either name order."""

from __future__ import annotations

from pydicom.dataset import Dataset

from medllm_pipelines.lib.deidentify.dicom import known_identifiers


def test_header_identifiers_are_found_in_free_text_in_either_name_order() -> None:
    ds = Dataset()
    ds.PatientName = "Wang^Wei=王^伟"
    ds.PatientID = "123"  # too short to search for in text
    ds.AccessionNumber = "ACC98765"
    ds.PatientTelephoneNumbers = "13800138000"
    ds.ReferringPhysicianName = "Okafor^Destiny"
    known = known_identifiers(ds)
    assert "123" not in known.values["MRN"] and "ACC98765" in known.values["MRN"]
    text = "Wei Wang (王伟) seen; Dr Destiny Okafor referred; call 138 0013 8000; acc ACC98765."
    found = {(text[s.start:s.end], s.label) for s in known.find(text)}
    assert {("Wei Wang", "NAME"), ("王伟", "NAME"), ("Destiny Okafor", "NAME"), ("ACC98765", "MRN"),
            ("138 0013 8000", "PHONE")} <= found
