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
FHIR_VITALS = "fhir_vitals"  # bedside-monitor vital signs (FHIR Bulk NDJSON under <institution>/vitals/)
HL7V2 = "hl7v2"
DICOM = "dicom"
DIALOGUES = "dialogues"
CONSULTATIONS = "consultations"  # recorded visits: transcript + the doctor's signed record (JSONL under consultations/)
ANNOTATIONS = "annotations"  # label JSONL: one annotator's label for one item per line
BRAT_ANN = "brat_ann"  # BRAT standoff annotations (.ann), paired with BRAT_TEXT by file stem
BRAT_TEXT = "brat_text"  # the text a .ann file annotates (.txt)
NIFTI_MASK = "nifti_mask"  # image masks (.nii / .nii.gz)
COCO = "coco"  # COCO box annotations (.json)
DICOM_SEG = "dicom_seg"  # DICOM Segmentation objects (.dcm under annotations/)
UNSUPPORTED = "unsupported"

FILE_KINDS = (
    FHIR_BUNDLE,
    FHIR_NDJSON,
    FHIR_VITALS,
    HL7V2,
    DICOM,
    DIALOGUES,
    CONSULTATIONS,
    ANNOTATIONS,
    BRAT_ANN,
    BRAT_TEXT,
    NIFTI_MASK,
    COCO,
    DICOM_SEG,
)
ANNOTATION_FILE_KINDS = (BRAT_ANN, BRAT_TEXT, NIFTI_MASK, COCO, DICOM_SEG)

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
    """File kind from the feed folder (``<institution>/<feed>/...``) and the extension."""
    parts = relpath.split("/")
    name = parts[-1].lower()
    feed = parts[1] if len(parts) > 2 else ""
    if feed == "annotations":
        if name.endswith(".jsonl"):
            return ANNOTATIONS
        if name.endswith(".ann"):
            return BRAT_ANN
        if name.endswith(".txt"):
            return BRAT_TEXT
        if name.endswith((".nii", ".nii.gz")):
            return NIFTI_MASK
        if name.endswith(".json"):
            return COCO
        if name.endswith(".dcm"):
            return DICOM_SEG
        return UNSUPPORTED
    if feed == "vitals" and name.endswith(".ndjson"):
        return FHIR_VITALS
    if feed == "hl7" or name.endswith(".hl7"):
        return HL7V2
    if name.endswith(".ndjson"):
        return FHIR_NDJSON
    if name.endswith(".dcm") or feed == "dicom":
        return DICOM
    if name.endswith(".jsonl") and feed == "dialogues":
        return DIALOGUES
    if name.endswith(".jsonl") and feed == "consultations":
        return CONSULTATIONS
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


def scan_landing(root: Path, under: str | None = None) -> list[LandedFile]:
    """Every ingestible file under ``root`` (or only under ``root/under``), in a stable order."""
    root = Path(root)
    start = root / under if under else root
    if not start.exists():
        return []
    found: list[LandedFile] = []
    for path in sorted(start.rglob("*")):
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
