"""The dataset walk: every attribute, nested sequences and private blocks, through its profile action.

One ``DatasetWalker`` per instance applies D/Z/X/K/C/U attribute by
attribute, counting what it did into the instance's ``DicomDeidReport``
(attribute names and counts, never values). ``uids_to_remap`` walks the same
way without changing anything, to batch the keyed digests in advance.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydicom.datadict import DicomDictionary, dictionary_VR, keyword_for_tag
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag

from medllm_pipelines.lib.deidentify.dicom.profile import AttributeRule, DicomProfile, default_profile
from medllm_pipelines.lib.deidentify.dicom.vr import (
    BINARY_VRS,
    DUMMY_VALUES,
    KEEP_VRS,
    NUMBER_VRS,
    VR_MAX_LENGTH,
    Encoding,
    UidKey,
    empty_value,
    new_element,
    remap_uid,
    set_ascii,
    shift_da,
    shift_dt,
)
from medllm_pipelines.lib.deidentify.text.detector import Detector, KnownIdentifiers
from medllm_pipelines.lib.deidentify.text.surrogates import SurrogateFor, replace_spans


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


class DatasetWalker:
    """Applies the profile to one instance's dataset, in place, caching each UID's new value."""

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
            if entry is not None and entry[0] in KEEP_VRS and not 0x5000 <= (tag >> 16) < 0x6100:
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
                set_ascii(ds, tag, vr, [self.pseudonym], self.encoding)
            elif vr in BINARY_VRS or vr in NUMBER_VRS:
                ds[tag] = new_element(tag, vr, empty_value(vr))
            else:
                set_ascii(ds, tag, vr, [], self.encoding)
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
            ds[tag] = new_element(tag, vr, cleaned if len(cleaned) > 1 else cleaned[0])
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
            new = [DUMMY_VALUES[vr]]
        else:
            shifter = shift_da if vr == "DA" else shift_dt
            moved = [shifter(p, self.days) for p in parts]
            if any(m is None for m in moved):
                set_ascii(ds, tag, vr, [], self.encoding)  # partial or malformed: cannot be shifted exactly
                return
            new = [m for m in moved if m is not None]
            self.report.dates_shifted += len(new)
        set_ascii(ds, tag, vr, new, self.encoding)

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
            element.value = DUMMY_VALUES.get(element.VR, "")

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
        limit = VR_MAX_LENGTH.get(vr)
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
