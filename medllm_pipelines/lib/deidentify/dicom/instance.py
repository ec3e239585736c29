"""One instance de-identified: the walk, then what PS3.15 asks of the instance as a whole.

After the walk: emptied private creator blocks go, burned-in annotation is
judged (quarantine unless a pixel-cleaning hook cleaned it), and
``PatientIdentityRemoved``, ``DeidentificationMethod`` (with the profile
version) and ``DeidentificationMethodCodeSequence`` are set. The caller must
not publish an instance whose report says ``quarantine``.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from functools import lru_cache
from typing import Any

from pydicom import dcmread
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.tag import Tag

from medllm_pipelines.lib.deidentify.dicom.header import known_identifiers
from medllm_pipelines.lib.deidentify.dicom.profile import DicomProfile, default_profile
from medllm_pipelines.lib.deidentify.dicom.vr import (
    UidKey,
    code_item,
    code_sequence_value,
    encoding_of,
    plain_codec,
    set_ascii,
)
from medllm_pipelines.lib.deidentify.dicom.walker import DatasetWalker, DicomDeidReport
from medllm_pipelines.lib.deidentify.text.detector import Detector, build_detector
from medllm_pipelines.lib.deidentify.text.surrogates import SurrogateFor, placeholder

PixelsCleaned = Callable[[Dataset], bool]


@lru_cache(maxsize=1)
def _default_detector() -> Detector:
    """Patterns only (no tagger): built once, on first use."""
    return build_detector()


def _burned_in(ds: Dataset) -> str:
    """YES, NO or UNKNOWN: a missing or odd value is not a NO."""
    value = str(ds.get("BurnedInAnnotation", "") or "").strip().upper()
    if value in ("YES", "NO"):
        return value
    return "UNKNOWN"


def deidentify_dataset(ds: Dataset, *, profile: DicomProfile | None = None, uid_key: UidKey, date_shift_days: int,
                       patient_pseudonym: str, detector: Detector | None = None,
                       surrogate_for: SurrogateFor | None = None,
                       pixels_cleaned: PixelsCleaned | None = None) -> tuple[Dataset, DicomDeidReport]:
    """De-identify ``ds`` in place per the profile; returns it and a report.

    Args:
        uid_key: keyed digest of a UID (Vault transit HMAC in the platform);
            the same key maps a UID to the same new UID in every file.
        date_shift_days: the patient's date offset (the same one used for
            their notes: ``text.patient_date_shift``).
        patient_pseudonym: written to PatientID and PatientName.
        detector: free-text detector for cleaned descriptors (patterns only
            when None); surrogate_for: replacement of what it finds
            (``[LABEL]`` placeholders when None).
        pixels_cleaned: called for a BurnedInAnnotation=YES instance; True
            means its pixel data were cleaned (then it is not quarantined).
    """
    profile = profile if profile is not None else default_profile()
    report = DicomDeidReport(profile_version=profile.version)
    burned_in = _burned_in(ds)
    report.burned_in_annotation = burned_in
    modality = str(ds.get("Modality", "") or "").upper()
    known = known_identifiers(ds)
    worker = DatasetWalker(profile, uid_key, int(date_shift_days), patient_pseudonym,
                           detector if detector is not None else _default_detector(),
                           surrogate_for if surrogate_for is not None else placeholder, known, report)
    worker.encoding = encoding_of(ds)
    worker.text_codec = plain_codec(ds)
    worker.dataset(ds)
    worker.file_meta(ds)
    # private creators whose blocks are now empty go too
    tags = list(ds.keys())  # iterating a Dataset yields elements, not tags
    for tag in [t for t in tags if t.is_private and 0x10 <= t.element <= 0xFF]:
        block = tag.element
        if not any(t.group == tag.group and (t.element >> 8) == block for t in tags if t.element > 0xFF):
            del ds[tag]
            report.private_removed += 1

    codes = ["basic"] + [o for o in profile.options]
    if burned_in == "YES":
        if pixels_cleaned is not None and pixels_cleaned(ds):
            ds.BurnedInAnnotation = "NO"
            codes.append("clean_pixel_data")
        else:
            report.quarantine, report.quarantine_reason = True, "burned_in_annotation"
    elif burned_in == "UNKNOWN" and modality in profile.burned_in_suspect_modalities:
        report.quarantine, report.quarantine_reason = True, "burned_in_annotation_unknown"
    if report.private_retained:
        codes.append("retain_safe_private")
    method = f"PS3.15 E.1-1 {'+'.join(profile.method_codes[c][0] for c in codes)} v{profile.version}"
    encoding = worker.encoding
    set_ascii(ds, Tag(0x00120062), "CS", ["YES"], encoding)  # PatientIdentityRemoved
    set_ascii(ds, Tag(0x00120063), "LO", [method], encoding)  # DeidentificationMethod
    code_items = tuple(profile.method_codes[c] for c in codes)
    if encoding is not None and all(m.isascii() for _, m in code_items):  # DeidentificationMethodCodeSequence
        value = code_sequence_value(code_items, encoding)
        ds[0x00120064] = RawDataElement(Tag(0x00120064), "SQ", len(value), value, 0, encoding[0], encoding[1])
    else:
        ds[0x00120064] = DataElement(Tag(0x00120064), "SQ", Sequence([code_item(*item) for item in code_items]))
    report.actions = dict(sorted(worker.actions.items()))
    report.cleaned_attributes = sorted(worker.cleaned)
    report.identifiers_replaced = dict(sorted(worker.replaced.items()))
    report.method_codes = [profile.method_codes[c][0] for c in codes]
    return ds, report


def deidentify_file(data: bytes, **kwargs: Any) -> tuple[bytes, DicomDeidReport]:
    """``deidentify_dataset`` on DICOM Part-10 bytes; returns the new bytes and the report.

    The caller must not publish a file whose report says ``quarantine``.
    """
    ds = dcmread(io.BytesIO(data))
    ds, report = deidentify_dataset(ds, **kwargs)
    buffer = io.BytesIO()
    # a Part-10 input keeps its (already de-identified) meta; anything else is made conformant
    conformant = getattr(ds, "preamble", None) is not None and "TransferSyntaxUID" in getattr(ds, "file_meta", {})
    ds.save_as(buffer, enforce_file_format=not conformant)
    return buffer.getvalue(), report
