"""The synthetic hospital's manifest: everything a test or a later stage needs to
know about what was generated, and nothing that identifies a person.

It lives at ``_truth/manifest.json`` (ignored by ingestion) and is written
last, so its appearance means the hospital is complete.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import orjson

from medllm_pipelines.lib.synth.defects import Defect

MANIFEST_PATH = "_truth/manifest.json"
PATIENT_TRUTH_PATH = "_truth/patients.jsonl"
IMAGE_TRUTH_PATH = "_truth/images.jsonl"
IDENTITIES_PATH = "_truth/identities.jsonl"


@dataclass(frozen=True)
class SynthManifest:
    """What ``generate_hospital`` wrote; mirrors ``_truth/manifest.json``."""

    generator: str
    generator_version: str
    seed: int
    patients: int  # persons (humans); see patient_records for registrations
    patient_records: int
    reference_date: str
    institutions: list[dict[str, Any]]
    defect_rates: dict[str, float]
    counts: dict[str, dict[str, Any]]
    defects: list[Defect]
    cross_institution_persons: list[dict[str, Any]]
    diabetes: dict[str, Any]
    consent: dict[str, Any]
    imaging: dict[str, Any]
    dialogues: dict[str, Any]
    truth_files: dict[str, str | None]
    files: dict[str, str] = field(default_factory=dict)  # relative path -> sha256, every file written

    def to_dict(self) -> dict[str, Any]:
        document = {item.name: getattr(self, item.name) for item in fields(self)}
        document["defects"] = [defect.as_dict() for defect in self.defects]
        return document

    def to_json(self) -> bytes:
        return orjson.dumps(self.to_dict(), option=orjson.OPT_INDENT_2)

    @classmethod
    def from_dict(cls, document: dict[str, Any]) -> SynthManifest:
        values = dict(document)
        values["defects"] = [Defect(**defect) for defect in document.get("defects", [])]
        known = {item.name for item in fields(cls)}
        return cls(**{key: value for key, value in values.items() if key in known})

    def defects_of(self, defect_type: str) -> list[Defect]:
        return [defect for defect in self.defects if defect.defect_type == defect_type]


def load_manifest(out_dir: Path) -> SynthManifest:
    """Read ``_truth/manifest.json`` of a generated hospital."""
    return SynthManifest.from_dict(orjson.loads((Path(out_dir) / MANIFEST_PATH).read_bytes()))


def previous_files(out_dir: Path) -> list[str]:
    """Files listed by an earlier manifest in ``out_dir`` (empty if none or unreadable)."""
    path = Path(out_dir) / MANIFEST_PATH
    if not path.is_file():
        return []
    try:
        document = orjson.loads(path.read_bytes())
    except orjson.JSONDecodeError:
        return []
    files = document.get("files") if isinstance(document, dict) else None
    return [str(name) for name in files] if isinstance(files, dict) else []
