"""The landing zone: where institutions drop files, one folder per source.

Layout ``<landing>/<institution>/<feed>/...``. Any path component starting with
``_`` or ``.`` is ignored (the Hadoop/Spark convention), so in-flight temp
files and side folders such as ``_truth`` are never ingested.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

FHIR_BUNDLE = "fhir_bundle"
FHIR_NDJSON = "fhir_ndjson"
DICOM = "dicom"
DIALOGUES = "dialogues"
ANNOTATIONS = "annotations"
UNSUPPORTED = "unsupported"

FILE_KINDS = (FHIR_BUNDLE, FHIR_NDJSON, DICOM, DIALOGUES, ANNOTATIONS)

_INSTITUTION = re.compile(r"^[a-z0-9][a-z0-9_-]{1,31}$")


@dataclass(frozen=True)
class LandedFile:
    """A file found in the landing zone (path may itself be identifying: never log it)."""

    path: Path
    relpath: str
    institution: str | None
    kind: str
    size_bytes: int


def classify(relpath: str) -> str:
    parts = relpath.split("/")
    name = parts[-1].lower()
    feed = parts[1] if len(parts) > 2 else ""
    if name.endswith(".ndjson"):
        return FHIR_NDJSON
    if name.endswith(".dcm") or feed == "dicom":
        return DICOM
    if name.endswith(".jsonl") and feed == "dialogues":
        return DIALOGUES
    if name.endswith(".jsonl") and feed == "annotations":
        return ANNOTATIONS
    if name.endswith(".json"):
        return FHIR_BUNDLE
    return UNSUPPORTED


def institution_of(relpath: str) -> str | None:
    parts = relpath.split("/")
    if len(parts) < 2 or not _INSTITUTION.match(parts[0]):
        return None
    return parts[0]


def is_ignored(relpath: str) -> bool:
    return any(part.startswith(("_", ".")) for part in relpath.split("/"))


def scan_landing(root: Path) -> list[LandedFile]:
    """Every ingestible file under ``root``, in a stable order."""
    root = Path(root)
    if not root.exists():
        return []
    found: list[LandedFile] = []
    for path in sorted(root.rglob("*")):
        if not path.is_file():
            continue
        relpath = path.relative_to(root).as_posix()
        if is_ignored(relpath):
            continue
        found.append(
            LandedFile(
                path=path,
                relpath=relpath,
                institution=institution_of(relpath),
                kind=classify(relpath),
                size_bytes=path.stat().st_size,
            )
        )
    return found
