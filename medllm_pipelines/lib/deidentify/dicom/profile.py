"""The versioned PS3.15 profile (``dicom_profile.yaml``), read and validated.

Rules are data, not code (pydicom/deid keeps them the same way): this module
only interprets the file, with the enabled options applied to each
attribute's action, so that the walker asks one question per attribute.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import yaml
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.tag import BaseTag, Tag

PROFILE_PATH = Path(__file__).parent.parent / "dicom_profile.yaml"
ACTIONS = frozenset("DZXKCU")

@dataclass(frozen=True)
class AttributeRule:
    """One row of Table E.1-1, its action already resolved for the enabled options."""

    tag: BaseTag
    keyword: str
    action: str  # after the enabled options were applied
    basic: str
    standard: str
    value: str | None  # "pseudonym" for Z/D with the patient pseudonym
    sequence: bool = False  # dictionary VR is SQ


@dataclass(frozen=True)
class PrivateAllow:
    """A private attribute safe to keep, named by its creator (block numbers differ per file)."""

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
    """The shipped profile, read once per process."""
    return load_profile()
