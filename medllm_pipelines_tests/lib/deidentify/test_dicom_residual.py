"""The self-check (``dicom/residual.py``): every string of the result is read; attribute paths come back, never values."""

from __future__ import annotations

from pydicom.dataset import Dataset, FileMetaDataset

from medllm_pipelines.lib.deidentify.dicom import residual_identifiers


def test_residual_identifiers_look_into_sequences_names_private_values_and_the_file_meta() -> None:
    ds = Dataset()
    ds.PatientName = "Doe^Jane"
    item = Dataset()
    item.PatientID = "MRN12345"
    ds.OtherPatientIDsSequence = [item]
    ds.private_block(0x0011, "SITE NOTES", create=True).add_new(0x10, "OB", b"call Jane")
    ds.PixelData = b"MRN12345"  # pixels are no text
    ds.file_meta = FileMetaDataset()
    ds.file_meta.ImplementationVersionName = "MRN12345"
    hits = residual_identifiers(ds, ["DoeJane", "MRN12345", "Jane", ""])
    assert hits == sorted({"PatientName", "OtherPatientIDsSequence[0].PatientID", "(0011,1010)",
                           "file_meta.ImplementationVersionName"})
    assert residual_identifiers(ds, ["Smith", ""]) == []
