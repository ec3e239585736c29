"""The header's own identifiers, gathered to be scrubbed wherever else they were typed.

A name typed into StudyDescription has no cue around it: the free-text
detector finds it because the header already says who the patient and the
physicians are (every PN component group, both name orders, IDs, phones,
addresses).
"""

from __future__ import annotations

from typing import Any

from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from medllm_pipelines.lib.deidentify.dicom.vr import plain_codec
from medllm_pipelines.lib.deidentify.text.detector import KnownIdentifiers


def _pn_parts(value: Any) -> list[str]:
    """Name strings worth matching inside free text, from a PN value (all component groups)."""
    text = str(value)
    out: set[str] = set()
    for group in text.split("="):
        components = [c.strip() for c in group.split("^") if c.strip()]
        if not components:
            continue
        out.add(" ".join(components))
        out.add("".join(components))
        if len(components) >= 2:
            out.add(f"{components[1]} {components[0]}")
            out.add(f"{components[1]}{components[0]}")
        out.update(c for c in components if len(c) >= 2 and not (c.isascii() and len(c) < 3))
    return sorted(out, key=len, reverse=True)


_NAME_TAGS = tuple(int(tag_for_keyword(k)) for k in (
    "PatientName", "OtherPatientNames", "PatientBirthName", "PatientMotherBirthName", "ReferringPhysicianName",
    "PerformingPhysicianName", "OperatorsName", "NameOfPhysiciansReadingStudy", "RequestingPhysician",
    "ResponsiblePerson"))
_ID_TAGS = tuple(int(tag_for_keyword(k)) for k in (
    "PatientID", "OtherPatientIDs", "AccessionNumber", "MedicalRecordLocator", "AdmissionID"))
_PHONE_TAGS = tuple(int(tag_for_keyword(k)) for k in ("PatientTelephoneNumbers", "ReferringPhysicianTelephoneNumbers"))
_ADDRESS_TAGS = tuple(int(tag_for_keyword(k)) for k in ("PatientAddress", "ReferringPhysicianAddress"))
_OTHER_IDS_SEQUENCE = int(tag_for_keyword("OtherPatientIDsSequence"))


def _values(ds: Dataset, tag: int) -> list[Any]:
    """Values of one attribute; text read straight from the raw bytes where the charset allows."""
    if tag not in ds:
        return []
    raw = ds.get_item(tag)
    value = getattr(raw, "value", None)
    if isinstance(value, bytes) and getattr(raw, "VR", None) != "SQ":
        encoding = "ascii" if value.isascii() else plain_codec(ds)
        if encoding is not None:
            text = value.decode(encoding, "replace").rstrip("\x00 ")
            return [v for v in text.split("\\") if v]
    value = ds[tag].value
    if value is None or value == "":
        return []
    return list(value) if isinstance(value, (list, MultiValue)) else [value]


def known_identifiers(ds: Dataset) -> KnownIdentifiers:
    """The header's own identifiers, to be scrubbed wherever else they were typed."""
    names = [part for tag in _NAME_TAGS for value in _values(ds, tag) for part in _pn_parts(value)]
    ids = [str(v) for tag in _ID_TAGS for v in _values(ds, tag) if len(str(v)) >= 4]
    for item in _values(ds, _OTHER_IDS_SEQUENCE):
        ids += [str(v) for v in _values(item, 0x00100020) if len(str(v)) >= 4]
    phones = [str(v) for tag in _PHONE_TAGS for v in _values(ds, tag)]
    addresses = [str(v) for tag in _ADDRESS_TAGS for v in _values(ds, tag)]
    return KnownIdentifiers({"NAME": names, "MRN": ids, "PHONE": phones, "ADDRESS": addresses})
