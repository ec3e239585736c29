"""Registered annotators and versioned annotation guidelines (clause 5.1.4.1-2, row D10).

Both are data files in this package: ``annotators.yaml`` and
``guidelines/<version id>.yaml``. An annotation names the guideline version
it followed (``triage-guideline-v1.2``); that string is the guideline file's
name, so a labelled set's metadata can point at the exact file (and its hash)
its annotators worked from. An annotation that names an unregistered
annotator or a guideline version that does not exist is rejected at import.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

LABEL_DIR = Path(__file__).parent
ANNOTATORS_FILE = LABEL_DIR / "annotators.yaml"
GUIDELINES_DIR = LABEL_DIR / "guidelines"

ANNOTATOR = "annotator"
ADJUDICATOR = "adjudicator"
AUDITOR = "auditor"
ROLES = (ANNOTATOR, ADJUDICATOR, AUDITOR)

# Reason codes shared by every importer (quarantine rows and metadata counts).
UNKNOWN_ANNOTATOR = "unknown_annotator"
UNKNOWN_GUIDELINE = "unknown_guideline_version"
WRONG_TASK_GUIDELINE = "guideline_for_another_task"
UNKNOWN_LABEL = "unknown_label"


@dataclass(frozen=True)
class Annotator:
    id: str
    role: str
    qualification: str
    registered: str
    tasks: tuple[str, ...]


@dataclass(frozen=True)
class EntityType:
    name: str
    identifier: bool
    description: str = ""


@dataclass(frozen=True)
class RelationType:
    name: str
    arg1: tuple[str, ...]
    arg2: tuple[str, ...]


@dataclass(frozen=True)
class Guideline:
    """One version of an annotation guideline, as its YAML file declares it."""

    version_id: str  # what annotation files carry, e.g. "triage-guideline-v1.2"
    id: str
    version: str
    status: str
    task: str  # classification | entities | segmentation
    labelled_set: str
    description: str
    labels: tuple[str, ...]
    entity_types: dict[str, EntityType] = field(default_factory=dict)
    relation_types: dict[str, RelationType] = field(default_factory=dict)
    allow_overlaps: bool = True
    annotators_per_item: int = 3
    thresholds: dict[str, float] = field(default_factory=dict)
    review: dict[str, Any] = field(default_factory=dict)
    audit: dict[str, Any] = field(default_factory=dict)
    sha256: str = ""

    @property
    def file(self) -> str:
        return f"lib/label/guidelines/{self.version_id}.yaml"

    def is_identifier_type(self, entity_type: str) -> bool:
        found = self.entity_types.get(entity_type)
        return bool(found and found.identifier)

    def describe(self) -> dict[str, Any]:
        """What a labelled set's metadata says about the guideline it was made under."""
        return {"file": self.file, "sha256": self.sha256, "task": self.task, "status": self.status}


@dataclass(frozen=True)
class Registry:
    version: str
    annotators: dict[str, Annotator]

    def role_of(self, annotator_id: str) -> str | None:
        found = self.annotators.get(annotator_id)
        return found.role if found else None

    def ids_with_role(self, role: str) -> list[str]:
        return sorted(a.id for a in self.annotators.values() if a.role == role)


@lru_cache(maxsize=1)
def load_registry(path: Path = ANNOTATORS_FILE) -> Registry:
    raw = yaml.safe_load(Path(path).read_text("utf-8"))
    annotators = {}
    for entry in raw["annotators"]:
        if entry["role"] not in ROLES:
            raise ValueError(f"annotator {entry['id']}: role must be one of {ROLES}")
        annotators[entry["id"]] = Annotator(
            id=str(entry["id"]),
            role=str(entry["role"]),
            qualification=str(entry.get("qualification", "")),
            registered=str(entry.get("registered", "")),
            tasks=tuple(entry.get("tasks", ())),
        )
    return Registry(version=str(raw["version"]), annotators=annotators)


def _guideline_from_file(path: Path) -> Guideline:
    data = path.read_bytes()
    raw = yaml.safe_load(data)
    labels = raw.get("labels") or []
    if isinstance(labels, dict):
        labels = list(labels.values())
    entity_types = {
        name: EntityType(name, bool(spec.get("identifier", False)), " ".join(str(spec.get("description", "")).split()))
        for name, spec in (raw.get("entity_types") or {}).items()
    }
    relation_types = {
        name: RelationType(name, tuple(spec["arg1"]), tuple(spec["arg2"]))
        for name, spec in (raw.get("relation_types") or {}).items()
    }
    agreement = raw.get("agreement") or {}
    review = {k: v for k, v in agreement.items() if k != "thresholds"}
    return Guideline(
        version_id=path.stem,
        id=str(raw["id"]),
        version=str(raw["version"]),
        status=str(raw.get("status", "active")),
        task=str(raw["task"]),
        labelled_set=str(raw["labelled_set"]),
        description=" ".join(str(raw.get("description", "")).split()),
        labels=tuple(str(label) for label in labels),
        entity_types=entity_types,
        relation_types=relation_types,
        allow_overlaps=bool(raw.get("allow_overlaps", True)),
        annotators_per_item=int(raw.get("annotators_per_item", 3)),
        thresholds={k: float(v) for k, v in (agreement.get("thresholds") or {}).items()},
        review=review,
        audit=dict(raw.get("audit") or {}),
        sha256=hashlib.sha256(data).hexdigest(),
    )


@lru_cache(maxsize=4)
def load_guidelines(directory: Path = GUIDELINES_DIR) -> dict[str, Guideline]:
    """Every guideline version, keyed by the version id annotation files carry."""
    found = {}
    for path in sorted(Path(directory).glob("*.yaml")):
        guideline = _guideline_from_file(path)
        expected = f"{guideline.id}-v{guideline.version}"
        if path.stem != expected:
            raise ValueError(f"guideline file {path.name} declares {expected}; the file name must match")
        found[guideline.version_id] = guideline
    return found


def guidelines_for_task(task: str, directory: Path = GUIDELINES_DIR) -> dict[str, Guideline]:
    return {k: g for k, g in load_guidelines(directory).items() if g.task == task}


@dataclass(frozen=True)
class ProvenanceProblem:
    reason_code: str
    reason: str


def check_provenance(
    annotator_id: str | None, guideline_version: str | None, task: str, registry: Registry, guidelines: dict[str, Guideline]
) -> ProvenanceProblem | None:
    """Why an annotation's annotator/guideline is not acceptable for ``task``, or None.

    Reasons name the problem, never the offending value (an id field can hold anything).
    """
    if not annotator_id or annotator_id not in registry.annotators:
        return ProvenanceProblem(UNKNOWN_ANNOTATOR, "annotator id is not in the registry (lib/label/annotators.yaml)")
    if not guideline_version or guideline_version not in guidelines:
        return ProvenanceProblem(UNKNOWN_GUIDELINE, "guideline version has no file in lib/label/guidelines/")
    if guidelines[guideline_version].task != task:
        return ProvenanceProblem(WRONG_TASK_GUIDELINE, f"guideline version is not a {task} guideline")
    return None
