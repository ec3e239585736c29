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

Pure library (pydicom only; the text detector is passed in or built from
patterns alone). Reports count actions and name attributes, never values.
"""

from __future__ import annotations

import hashlib
import io
import struct
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import date, timedelta
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml
from pydicom import config, dcmread
from pydicom.datadict import (
    DicomDictionary,
    dictionary_VR,
    keyword_for_tag,
    tag_for_keyword,
)
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag, Tag
from pydicom.valuerep import PersonName

from medllm_pipelines.lib.deidentify.text.detector import (
    Detector,
    KnownIdentifiers,
    build_detector,
)
from medllm_pipelines.lib.deidentify.text.surrogates import (
    SurrogateFor,
    placeholder,
    replace_spans,
)

PROFILE_PATH = Path(__file__).with_name("dicom_profile.yaml")
ACTIONS = frozenset("DZXKCU")
_VR_MAX = {"SH": 16, "LO": 64, "ST": 1024, "LT": 10240, "UT": None, "UC": None, "PN": 64, "AE": 16}
_DUMMY = {"PN": "ANONYMOUS", "LO": "ANONYMOUS", "SH": "ANON", "ST": "ANONYMOUS", "LT": "ANONYMOUS",
          "UT": "ANONYMOUS", "UC": "ANONYMOUS", "DA": "19000101", "TM": "000000", "DT": "19000101000000",
          "CS": "ANON", "AS": "000Y", "DS": "0", "IS": "0"}

UidKey = Callable[[str], str]
PixelsCleaned = Callable[[Dataset], bool]


@dataclass(frozen=True)
class AttributeRule:
    tag: BaseTag
    keyword: str
    action: str  # after the enabled options were applied
    basic: str
    standard: str
    value: str | None  # "pseudonym" for Z/D with the patient pseudonym
    sequence: bool = False  # dictionary VR is SQ


@dataclass(frozen=True)
class PrivateAllow:
    creator: str
    group: int
    element: int  # low byte of the element number
    name: str


@dataclass(frozen=True)
class DicomProfile:
    """The interpreted ``dicom_profile.yaml``."""

    version: str
    standard: str
    options: tuple[str, ...]
    method_codes: dict[str, tuple[str, str]]
    rules: dict[int, AttributeRule]
    unlisted_text: str
    unlisted_person_name: str
    unlisted_other: str
    text_vrs: frozenset[str]
    file_meta_remove: frozenset[int]
    private_allow: tuple[PrivateAllow, ...]
    burned_in_suspect_modalities: frozenset[str]

    def rule(self, tag: int) -> AttributeRule | None:
        return self.rules.get(tag)


OPTION_COLUMNS = {"retain_longitudinal_temporal_modified_dates": "long_dates", "clean_descriptors": "clean_desc"}


def load_profile(path: Path = PROFILE_PATH, *, options: Iterable[str] | None = None) -> DicomProfile:
    """Read and validate the profile; ``options`` overrides the file's enabled options."""
    raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    enabled = tuple(options) if options is not None else tuple(raw.get("options") or ())
    unknown_options = set(enabled) - set(OPTION_COLUMNS)
    if unknown_options:
        raise ValueError(f"dicom profile: unknown options {sorted(unknown_options)}")
    columns = [OPTION_COLUMNS[o] for o in enabled]
    rules: dict[int, AttributeRule] = {}
    for keyword, spec in raw["attributes"].items():
        tag = tag_for_keyword(keyword)
        if tag is None:
            raise ValueError(f"dicom profile: {keyword} is not a DICOM keyword")
        basic = str(spec["basic"])
        action = basic
        for column in columns:
            if column in spec:
                action = str(spec[column])
        for letter in (basic, action):
            if letter not in ACTIONS:
                raise ValueError(f"dicom profile: {keyword}: unknown action {letter!r}")
        rules[int(tag)] = AttributeRule(Tag(tag), keyword, action, basic, str(spec.get("std", basic)),
                                        spec.get("value"), dictionary_VR(tag) == "SQ")
    codes = {name: (str(item["code"]), str(item["meaning"])) for name, item in raw["method_codes"].items()}
    file_meta_remove = set()
    for keyword in raw.get("file_meta_remove") or ():
        tag = tag_for_keyword(keyword)
        if tag is None:
            raise ValueError(f"dicom profile: {keyword} is not a DICOM keyword")
        file_meta_remove.add(int(tag))
    unlisted = raw["unlisted"]
    return DicomProfile(
        version=str(raw["version"]),
        standard=str(raw["standard"]),
        options=enabled,
        method_codes=codes,
        rules=rules,
        unlisted_text=str(unlisted["text"]),
        unlisted_person_name=str(unlisted["person_name"]),
        unlisted_other=str(unlisted["other"]),
        text_vrs=frozenset(raw["text_vrs"]),
        file_meta_remove=frozenset(file_meta_remove),
        private_allow=tuple(PrivateAllow(str(p["creator"]), int(p["group"]), int(p["element"]), str(p["name"]))
                            for p in raw.get("private_allow") or ()),
        burned_in_suspect_modalities=frozenset((raw.get("burned_in") or {}).get("quarantine_when_missing_for") or ()),
    )


@lru_cache(maxsize=1)
def default_profile() -> DicomProfile:
    return load_profile()


@lru_cache(maxsize=1)
def _default_detector() -> Detector:
    return build_detector()


def remap_uid(uid: str, uid_key: UidKey) -> str:
    """``2.25.<128-bit int>`` from the keyed digest of ``uid`` (PS3.5 B.2 UUID-derived form)."""
    digest = hashlib.sha256(uid_key(uid.strip().rstrip("\x00")).encode("utf-8")).digest()
    return f"2.25.{int.from_bytes(digest[:16], 'big')}"


def shift_da(value: str, days: int) -> str | None:
    """A DA value (or DA range ``a-b``) moved by ``days``; None when not a full date."""
    parts = value.strip().split("-")
    out = []
    for part in parts:
        if not part:
            out.append("")
            continue
        if len(part) != 8 or not part.isdigit():
            return None
        try:
            moved = date(int(part[:4]), int(part[4:6]), int(part[6:8])) + timedelta(days=days)
        except ValueError:
            return None
        out.append(f"{moved:%Y%m%d}")
    return "-".join(out)


def shift_dt(value: str, days: int) -> str | None:
    """A DT value moved by ``days``: the date part shifts, time and offset stay."""
    value = value.strip()
    if len(value) < 8:
        return None
    moved = shift_da(value[:8], days)
    return None if moved is None else moved + value[8:]


@dataclass
class DicomDeidReport:
    """What was done to one instance (attribute names and counts, never values)."""

    profile_version: str
    actions: dict[str, int] = field(default_factory=dict)
    uids_remapped: int = 0
    dates_shifted: int = 0
    private_removed: int = 0
    private_retained: int = 0
    cleaned_attributes: list[str] = field(default_factory=list)
    identifiers_replaced: dict[str, int] = field(default_factory=dict)
    burned_in_annotation: str = "UNKNOWN"
    quarantine: bool = False
    quarantine_reason: str | None = None
    method_codes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


# unlisted attributes of these (dictionary) VRs hold codes, numbers, UIDs of classes or pixels: kept
_KEEP_VRS = frozenset({"CS", "DS", "IS", "US", "SS", "UL", "SL", "UV", "SV", "FL", "FD", "AT", "AS", "OB", "OW",
                       "OF", "OD", "OL", "OV", "UI", "DA", "TM", "DT", "UR", "OB or OW"})
_BINARY_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})
_NUMBER_VRS = frozenset({"US", "SS", "UL", "SL", "UV", "SV", "FL", "FD", "AT"})


def _element(tag: BaseTag, vr: str, value: Any) -> DataElement:
    """A new element from values this module made (already valid for the VR): no re-validation."""
    return DataElement(tag, vr, value, validation_mode=config.IGNORE)


Encoding = tuple[bool, bool]  # (implicit VR, little endian) of the raw elements read


def _encoding_of(ds: Dataset) -> Encoding | None:
    """How the dataset's raw elements are encoded (None when it was built in memory)."""
    for tag in ds.keys():  # noqa: SIM118 - iterating a Dataset yields elements
        raw = ds.get_item(tag)
        if getattr(raw, "is_raw", False):
            return bool(raw.is_implicit_VR), bool(raw.is_little_endian)
    return None


def _set_ascii(ds: Dataset, tag: BaseTag, vr: str, values: list[str], encoding: Encoding | None) -> None:
    """Replace an element by ASCII values, encoded here as a raw element the writer copies as is."""
    text = "\\".join(values)
    if encoding is None or not text.isascii():
        ds[tag] = _element(tag, vr, values if len(values) > 1 else (values[0] if values else ""))
        return
    data = text.encode("ascii")
    if len(data) % 2:
        data += b"\x00" if vr == "UI" else b" "
    ds[tag] = RawDataElement(Tag(tag), vr, len(data), data, 0, encoding[0], encoding[1])


def _encode_element(tag: int, vr: str, value: str, encoding: Encoding) -> bytes:
    implicit, little = encoding
    order = "<" if little else ">"
    data = value.encode("ascii")
    if len(data) % 2:
        data += b" "
    head = struct.pack(f"{order}HH", tag >> 16, tag & 0xFFFF)
    if implicit:
        return head + struct.pack(f"{order}I", len(data)) + data
    return head + vr.encode("ascii") + struct.pack(f"{order}H", len(data)) + data


@lru_cache(maxsize=64)
def _code_sequence_value(codes: tuple[tuple[str, str], ...], encoding: Encoding) -> bytes:
    """DeidentificationMethodCodeSequence items, encoded once (defined lengths): writing a
    freshly built sequence costs pydicom more than the whole rest of the header."""
    order = "<" if encoding[1] else ">"
    out = b""
    for code, meaning in codes:
        item = (_encode_element(0x00080100, "SH", code, encoding) + _encode_element(0x00080102, "SH", "DCM", encoding)
                + _encode_element(0x00080104, "LO", meaning, encoding))
        out += struct.pack(f"{order}HHI", 0xFFFE, 0xE000, len(item)) + item
    return out


def _empty_value(vr: str) -> Any:
    if vr in _BINARY_VRS:
        return b""
    if vr in _NUMBER_VRS:
        return None
    return ""


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


_PLAIN_CHARSETS = {"": "utf-8", "ISO_IR 6": "utf-8", "ISO_IR 192": "utf-8", "ISO_IR 100": "latin-1"}


def _values(ds: Dataset, tag: int) -> list[Any]:
    """Values of one attribute; text read straight from the raw bytes where the charset allows."""
    if tag not in ds:
        return []
    raw = ds.get_item(tag)
    value = getattr(raw, "value", None)
    if isinstance(value, bytes) and getattr(raw, "VR", None) != "SQ":
        encoding = "ascii" if value.isascii() else _plain_codec(ds)
        if encoding is not None:
            text = value.decode(encoding, "replace").rstrip("\x00 ")
            return [v for v in text.split("\\") if v]
    value = ds[tag].value
    if value is None or value == "":
        return []
    return list(value) if isinstance(value, (list, MultiValue)) else [value]


def _plain_codec(ds: Dataset) -> str | None:
    """The Python codec of the dataset's character set when it is a single plain one."""
    charset = ds.get_item(0x00080005)
    value = getattr(charset, "value", b"") or b""
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    if isinstance(value, (list, MultiValue)):
        return None
    return _PLAIN_CHARSETS.get(str(value).strip(" \x00"))


def known_identifiers(ds: Dataset) -> KnownIdentifiers:
    """The header's own identifiers, to be scrubbed wherever else they were typed."""
    names = [part for tag in _NAME_TAGS for value in _values(ds, tag) for part in _pn_parts(value)]
    ids = [str(v) for tag in _ID_TAGS for v in _values(ds, tag) if len(str(v)) >= 4]
    for item in _values(ds, _OTHER_IDS_SEQUENCE):
        ids += [str(v) for v in _values(item, 0x00100020) if len(str(v)) >= 4]
    phones = [str(v) for tag in _PHONE_TAGS for v in _values(ds, tag)]
    addresses = [str(v) for tag in _ADDRESS_TAGS for v in _values(ds, tag)]
    return KnownIdentifiers({"NAME": names, "MRN": ids, "PHONE": phones, "ADDRESS": addresses})


class _Deidentifier:
    def __init__(self, profile: DicomProfile, uid_key: UidKey, date_shift_days: int, patient_pseudonym: str,
                 detector: Detector, surrogate_for: SurrogateFor, known: KnownIdentifiers,
                 report: DicomDeidReport) -> None:
        self.profile = profile
        self.uid_key = uid_key
        self.days = date_shift_days
        self.pseudonym = patient_pseudonym
        self.detector = detector
        self.surrogate_for = surrogate_for
        self.known = known
        self.report = report
        self.actions: Counter[str] = Counter()
        self.cleaned: set[str] = set()
        self.replaced: Counter[str] = Counter()
        self._uid_cache: dict[str, str] = {}
        self.encoding: Encoding | None = None
        self.text_codec: str | None = None
        self._allowed = {(a.creator.upper(), a.group, a.element) for a in profile.private_allow}

    # --- dataset walk ------------------------------------------------------------------
    def dataset(self, ds: Dataset) -> None:
        creators: dict[tuple[int, int], str] = {}
        for tag in list(ds.keys()):
            if tag.is_private:
                if 0x10 <= tag.element <= 0xFF:  # a private creator: its value names the block
                    raw = ds.get_item(tag)
                    value = raw.value if raw is not None else b""
                    if isinstance(value, bytes):
                        value = value.decode("latin-1", "replace")
                    creators[(tag.group, tag.element)] = str(value or "").strip(" \x00").upper()
                else:
                    self._private(ds, tag, creators)
                continue
            self._public(ds, tag)

    def _private(self, ds: Dataset, tag: BaseTag, creators: dict[tuple[int, int], str]) -> None:
        if tag.element < 0x10:  # group length and reserved elements
            del ds[tag]
            return
        creator = creators.get((tag.group, tag.element >> 8), "")
        if (creator, tag.group, tag.element & 0xFF) in self._allowed and self._vr(ds, tag) != "SQ":
            self.report.private_retained += 1
            return
        del ds[tag]
        self.report.private_removed += 1

    @staticmethod
    def _vr(ds: Dataset, tag: BaseTag) -> str:
        raw = ds.get_item(tag)
        vr = getattr(raw, "VR", None)
        if vr:
            return str(vr)
        try:
            return str(dictionary_VR(tag))
        except KeyError:
            return "UN"

    def _public(self, ds: Dataset, tag: BaseTag) -> None:
        rule = self.profile.rules.get(tag)
        if rule is None:  # unlisted and neither text nor a name nor a sequence: kept without a look
            entry = DicomDictionary.get(tag)
            if entry is not None and entry[0] in _KEEP_VRS and not 0x5000 <= (tag >> 16) < 0x6100:
                self.actions["K"] += 1
                return
        elif rule.action == "K" and not rule.sequence:
            self.actions["K"] += 1
            return
        vr = self._vr(ds, tag)
        if rule is None:
            if tag.group & 0xFF00 in (0x5000, 0x6000) and tag.group % 2 == 0:  # curves, overlays
                is_overlay_text = tag.group & 0xFF00 == 0x6000 and tag.element in (0x3000, 0x4000)
                action = "X" if tag.group & 0xFF00 == 0x5000 or is_overlay_text else "K"
            elif vr == "PN":
                action = self.profile.unlisted_person_name
            elif vr in self.profile.text_vrs:
                action = self.profile.unlisted_text
            else:
                action = self.profile.unlisted_other
            value_hint = None
        else:
            action, value_hint = rule.action, rule.value
        self.actions[action] += 1
        if action == "K" and vr != "SQ":
            return  # kept as read: never decoded
        if action == "X":
            del ds[tag]
            return
        if action == "Z" and vr != "SQ":
            if value_hint == "pseudonym":
                _set_ascii(ds, tag, vr, [self.pseudonym], self.encoding)
            elif vr in _BINARY_VRS or vr in _NUMBER_VRS:
                ds[tag] = _element(tag, vr, _empty_value(vr))
            else:
                _set_ascii(ds, tag, vr, [], self.encoding)
            return
        if vr in ("UI", "DA", "DT", "TM") and action in ("U", "C", "D"):
            self._ascii_action(ds, tag, vr, action)
            return
        if action == "C" and vr in self.profile.text_vrs and self._clean_raw_text(ds, tag, vr, rule):
            return
        element = ds[tag]
        if action == "Z":
            self._empty(element, value_hint)
        elif action == "D":
            self._dummy(element, value_hint)
        elif action == "U":
            self._uid(element)
        elif action == "C":
            self._clean(ds, element, rule.keyword if rule is not None else (element.keyword or str(tag)))
        else:  # K on a sequence: its items go through the profile too
            for item in element.value or []:
                self.dataset(item)

    def _clean_raw_text(self, ds: Dataset, tag: BaseTag, vr: str, rule: AttributeRule | None) -> bool:
        """Clean an undecoded text value (ASCII, or UTF-8/Latin-1 by the character set) from its bytes;
        False when it needs pydicom's decoding (ISO 2022 code extensions, GB18030...)."""
        raw = ds.get_item(tag)
        value = getattr(raw, "value", None)
        if not isinstance(value, bytes):
            return False
        if value.isascii():
            text = value.decode("ascii")
        elif self.text_codec is not None:
            try:
                text = value.decode(self.text_codec)
            except UnicodeDecodeError:
                return False
        else:
            return False
        text = text.rstrip("\x00 ")
        if not text:
            return True
        parts = text.split("\\") if vr not in ("LT", "ST", "UT") else [text]
        keyword = rule.keyword if rule is not None else (keyword_for_tag(tag) or str(tag))
        cleaned = [self._clean_text(part, vr, keyword) for part in parts]
        if cleaned != parts:  # only a changed value is rewritten; an unchanged one stays as read
            ds[tag] = _element(tag, vr, cleaned if len(cleaned) > 1 else cleaned[0])
        return True

    def _ascii_action(self, ds: Dataset, tag: BaseTag, vr: str, action: str) -> None:
        """UIDs, dates and times are ASCII: changed from the raw bytes, without pydicom's conversion."""
        if action == "C" and vr == "TM":
            return  # whole-day shifts leave times as they were
        raw = ds.get_item(tag)
        value = raw.value if raw is not None else None
        if isinstance(value, bytes):
            value = value.decode("ascii", "replace").rstrip("\x00 ")
        elif isinstance(value, (list, MultiValue)):
            value = "\\".join(str(v) for v in value)
        elif value is not None:
            value = str(value)
        if not value:
            return
        parts = value.split("\\")
        if vr == "UI":
            new: list[str] = [self._new_uid(p) for p in parts if p]
        elif action == "D":
            new = [_DUMMY[vr]]
        else:
            shifter = shift_da if vr == "DA" else shift_dt
            moved = [shifter(p, self.days) for p in parts]
            if any(m is None for m in moved):
                _set_ascii(ds, tag, vr, [], self.encoding)  # partial or malformed: cannot be shifted exactly
                return
            new = [m for m in moved if m is not None]
            self.report.dates_shifted += len(new)
        _set_ascii(ds, tag, vr, new, self.encoding)

    # --- actions -------------------------------------------------------------------------
    def _empty(self, element: DataElement, value_hint: str | None) -> None:
        if value_hint == "pseudonym":
            element.value = self.pseudonym
        elif element.VR == "SQ":
            element.value = Sequence([])
        else:
            element.value = None if element.VR not in ("LO", "SH", "PN", "ST", "LT", "UT", "CS", "DA", "TM", "DT",
                                                      "AS", "UI", "UC", "UR", "AE") else ""

    def _dummy(self, element: DataElement, value_hint: str | None) -> None:
        if value_hint == "pseudonym":
            element.value = self.pseudonym
        elif element.VR == "SQ":
            element.value = Sequence([])
        elif element.VR == "UI":
            self._uid(element)
        else:
            element.value = _DUMMY.get(element.VR, "")

    def _new_uid(self, uid: str) -> str:
        found = self._uid_cache.get(uid)
        if found is None:
            found = remap_uid(uid, self.uid_key)
            self._uid_cache[uid] = found
            self.report.uids_remapped += 1
        return found

    def _uid(self, element: DataElement) -> None:
        if element.VR == "SQ":
            for item in element.value or []:
                self.dataset(item)
            return
        if element.value in (None, ""):
            return
        if isinstance(element.value, (list, MultiValue)):
            element.value = [self._new_uid(str(v)) for v in element.value]
        else:
            element.value = self._new_uid(str(element.value))

    def _clean(self, ds: Dataset, element: DataElement, keyword: str) -> None:
        vr = element.VR
        if vr == "SQ":
            for item in element.value or []:
                self.dataset(item)
            return
        if element.value in (None, ""):
            return
        if vr == "DA":
            self._shift(ds, element, shift_da)
        elif vr == "DT":
            self._shift(ds, element, shift_dt)
        elif vr == "TM":
            return  # whole-day shifts leave times as they were
        elif vr in self.profile.text_vrs or vr == "PN":
            values = element.value if isinstance(element.value, (list, MultiValue)) else [element.value]
            cleaned = [self._clean_text(str(v), vr, keyword) for v in values]
            element.value = cleaned if len(cleaned) > 1 else cleaned[0]
        else:
            del ds[element.tag]  # nothing to clean it with: removal is the safe side of C

    def _shift(self, ds: Dataset, element: DataElement, shifter: Callable[[str, int], str | None]) -> None:
        values = element.value if isinstance(element.value, (list, MultiValue)) else [element.value]
        moved = [shifter(str(v), self.days) for v in values]
        if any(m is None for m in moved):
            element.value = ""  # a partial or malformed date cannot be shifted exactly: emptied
            return
        element.value = moved if len(moved) > 1 else moved[0]
        self.report.dates_shifted += len(moved)

    def _clean_text(self, value: str, vr: str, keyword: str) -> str:
        spans = self.detector.detect(value, known=self.known)
        if spans:
            self.cleaned.add(keyword)
            for span in spans:
                self.replaced[span.label] += 1
            value = replace_spans(value, spans, self.surrogate_for)
        limit = _VR_MAX.get(vr)
        if limit is not None and len(value) > limit:
            value = value[:limit]
        return value

    # --- instance-level attributes --------------------------------------------------------
    def file_meta(self, ds: Dataset) -> None:
        meta = getattr(ds, "file_meta", None)
        if meta is None:
            return
        for tag in list(meta.keys()):
            if int(tag) in self.profile.file_meta_remove:
                del meta[tag]
        if "MediaStorageSOPInstanceUID" in meta and meta.MediaStorageSOPInstanceUID:
            meta.MediaStorageSOPInstanceUID = self._new_uid(str(meta.MediaStorageSOPInstanceUID))


def _burned_in(ds: Dataset) -> str:
    value = str(ds.get("BurnedInAnnotation", "") or "").strip().upper()
    if value in ("YES", "NO"):
        return value
    return "UNKNOWN"


def _code_item(code: str, meaning: str) -> Dataset:
    item = Dataset()
    item[0x00080100] = _element(Tag(0x00080100), "SH", code)
    item[0x00080102] = _element(Tag(0x00080102), "SH", "DCM")
    item[0x00080104] = _element(Tag(0x00080104), "LO", meaning)
    return item


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
    worker = _Deidentifier(profile, uid_key, int(date_shift_days), patient_pseudonym,
                           detector if detector is not None else _default_detector(),
                           surrogate_for if surrogate_for is not None else placeholder, known, report)
    worker.encoding = _encoding_of(ds)
    worker.text_codec = _plain_codec(ds)
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
    _set_ascii(ds, Tag(0x00120062), "CS", ["YES"], encoding)  # PatientIdentityRemoved
    _set_ascii(ds, Tag(0x00120063), "LO", [method], encoding)  # DeidentificationMethod
    code_items = tuple(profile.method_codes[c] for c in codes)
    if encoding is not None and all(m.isascii() for _, m in code_items):  # DeidentificationMethodCodeSequence
        value = _code_sequence_value(code_items, encoding)
        ds[0x00120064] = RawDataElement(Tag(0x00120064), "SQ", len(value), value, 0, encoding[0], encoding[1])
    else:
        ds[0x00120064] = DataElement(Tag(0x00120064), "SQ", Sequence([_code_item(*item) for item in code_items]))
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


def uids_to_remap(ds: Dataset, profile: DicomProfile | None = None) -> list[str]:
    """The UIDs ``deidentify_dataset`` will ask ``uid_key`` about, in the order met.

    For a keyed digest that is costly per call (Vault transit), the caller can
    fetch them all in one batch request and pass a dictionary lookup as ``uid_key``.
    """
    profile = profile if profile is not None else default_profile()
    found: dict[str, None] = {}

    def walk(dataset: Dataset) -> None:
        for element in dataset:
            if element.tag.is_private:
                continue
            rule = profile.rules.get(element.tag)
            if element.VR == "SQ":
                if rule is None or rule.action in ("K", "C", "U"):
                    for item in element.value or []:
                        walk(item)
            elif element.VR == "UI" and rule is not None and rule.action == "U" and element.value:
                values = element.value if isinstance(element.value, (list, MultiValue)) else [element.value]
                for value in values:
                    found.setdefault(str(value).strip().rstrip("\x00"), None)

    meta = getattr(ds, "file_meta", None)
    walk(ds)
    if meta is not None and meta.get("MediaStorageSOPInstanceUID"):
        found.setdefault(str(meta.MediaStorageSOPInstanceUID).strip().rstrip("\x00"), None)
    return [uid for uid in found if uid]


# --- self-check ---------------------------------------------------------------------------
def _strings(ds: Dataset, path: str = "") -> Iterator[tuple[str, str]]:
    for element in ds:
        name = f"{path}{element.keyword or element.tag}"
        if element.VR == "SQ":
            for index, item in enumerate(element.value or []):
                yield from _strings(item, f"{name}[{index}].")
        elif element.tag == 0x7FE00010:
            continue
        elif isinstance(element.value, bytes):
            yield name, element.value.decode("utf-8", "replace")
        elif isinstance(element.value, (list, MultiValue)):
            yield name, "\\".join(str(v) for v in element.value)
        elif isinstance(element.value, PersonName):
            yield name, str(element.value)
            yield name, str(element.value).replace("^", "").replace("=", "")
        elif element.value is not None:
            yield name, str(element.value)


def residual_identifiers(ds: Dataset, needles: Iterable[str]) -> list[str]:
    """Attributes (paths) where any needle still occurs: the de-identification self-check.

    Looks at every string value (PN components joined too), private and
    binary values decoded as UTF-8, nested sequences and the file meta.
    Returns attribute paths only, never the values.
    """
    wanted = [n for n in {str(n) for n in needles} if n]
    hits: list[str] = []
    sources = list(_strings(ds))
    meta = getattr(ds, "file_meta", None)
    if meta is not None:
        sources += list(_strings(meta, "file_meta."))
    for name, text in sources:
        if any(needle in text for needle in wanted):
            hits.append(name)
    return sorted(set(hits))


__all__ = [
    "PROFILE_PATH",
    "DicomDeidReport",
    "DicomProfile",
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
