"""One synthetic study through the whole analysis before a service takes traffic.

highdicom reads its tables of the DICOM standard on the first Segmentation it builds (~0.5 s) and torch
initialises its kernels on the first call: a worker pays that at start-up, not on a clinician's first study.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from medllm_pipelines.lib.synth.dicom import render_slice

__all__ = ["synthetic_ct_instance", "warm_up"]


def synthetic_ct_instance(seed: int = 0) -> bytes:
    """A Part-10 64x64 CT slice with a lesion, carrying no identifier (names and ids are empty)."""
    pixels, _ = render_slice("CT", True, np.random.default_rng(seed))
    study = generate_uid()
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.StudyInstanceUID, ds.SeriesInstanceUID = CTImageStorage, study, generate_uid()
    ds.FrameOfReferenceUID = generate_uid()
    ds.Modality, ds.PatientName, ds.PatientID, ds.BurnedInAnnotation = "CT", "", "", "NO"
    ds.StudyDate, ds.StudyTime, ds.SeriesNumber, ds.InstanceNumber = "20240101", "000000", 1, 1
    ds.ImageOrientationPatient, ds.ImagePositionPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0]
    ds.PixelSpacing, ds.SliceThickness = [0.7, 0.7], 5.0
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.RescaleSlope, ds.RescaleIntercept = 1.0, 0.0
    ds.PixelData = np.ascontiguousarray(pixels.astype(np.uint16)).tobytes()
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def warm_up(analyser_type: Any, classifier: Any, segmenter: Any) -> None:
    """Analyse one synthetic instance with an analyser of the same models (no de-identifier: nothing to hide)."""
    analyser_type(classifier, segmenter).analyse([synthetic_ct_instance()])
