"""De-identify DICOM per PS3.15 Annex E, as the versioned ``dicom_profile.yaml`` says.

Basic Application Level Confidentiality Profile, with the Retain
Longitudinal Temporal Information (Modified Dates) and Clean Descriptors
options:

* every attribute of Table E.1-1 handled by its action (D/Z/X/K/C/U), in
  nested sequences too; unlisted text cleaned, unlisted person names emptied;
* UIDs remapped to ``2.25.<int>`` from a keyed digest of the original UID, so
  every file of a study gets the same new Study/Series/Frame of Reference UID
  and references between instances stay intact, reproducibly under one key;
* dates shifted by the patient's offset (intervals between studies kept),
  times kept;
* descriptions and comments run through the free-text detector; the
  header's own identifiers (name, IDs, accession number...) are matched too,
  so a name typed into StudyDescription goes even without a cue;
* private attributes removed unless allow-listed (safe private attributes);
* ``BurnedInAnnotation`` YES (or missing on screen-capture-like modalities)
  flags the instance for quarantine unless a pixel-cleaning hook cleaned it;
* ``PatientIdentityRemoved`` YES, ``DeidentificationMethod`` (with the
  profile version) and ``DeidentificationMethodCodeSequence`` set.

One module per family: ``profile`` (the YAML interpreted), ``vr`` (values
and their encoding by value representation), ``header`` (the header's own
identifiers), ``walker`` (the attribute-by-attribute walk), ``instance``
(one instance or file end to end) and ``residual`` (the self-check).

Pure library (pydicom only; the text detector is passed in or built from
patterns alone). Reports count actions and name attributes, never values.
"""

from __future__ import annotations

from medllm_pipelines.lib.deidentify.dicom.header import known_identifiers
from medllm_pipelines.lib.deidentify.dicom.instance import PixelsCleaned, deidentify_dataset, deidentify_file
from medllm_pipelines.lib.deidentify.dicom.profile import (
    ACTIONS,
    PROFILE_PATH,
    AttributeRule,
    DicomProfile,
    PrivateAllow,
    default_profile,
    load_profile,
)
from medllm_pipelines.lib.deidentify.dicom.residual import residual_identifiers
from medllm_pipelines.lib.deidentify.dicom.vr import UidKey, remap_uid, shift_da, shift_dt
from medllm_pipelines.lib.deidentify.dicom.walker import DicomDeidReport, uids_to_remap

__all__ = [
    "ACTIONS",
    "PROFILE_PATH",
    "AttributeRule",
    "DicomDeidReport",
    "DicomProfile",
    "PixelsCleaned",
    "PrivateAllow",
    "UidKey",
    "default_profile",
    "deidentify_dataset",
    "deidentify_file",
    "known_identifiers",
    "load_profile",
    "remap_uid",
    "residual_identifiers",
    "shift_da",
    "shift_dt",
    "uids_to_remap",
]
