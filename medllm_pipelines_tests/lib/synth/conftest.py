"""Shared synthetic hospitals for the synth tests (generated once per session)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from medllm_pipelines.lib.synth import DefectRates, SynthManifest, generate_hospital

# High enough that every defect type shows up in a small hospital.
HEAVY_DEFECTS = DefectRates(
    duplicate_record=0.15,
    unparseable_date=0.12,
    impossible_date=0.12,
    impossible_value=0.12,
    wrong_unit=0.12,
    missing_required_field=0.12,
    malformed_file=0.3,
    truncated_file=0.3,
    non_fhir_json=0.3,
)


@dataclass(frozen=True)
class Hospital:
    root: Path
    manifest: SynthManifest

    def jsonl(self, relpath: str) -> list[dict[str, Any]]:
        return [json.loads(line) for line in (self.root / relpath).read_text("utf-8").splitlines()]

    @property
    def identities(self) -> list[dict[str, Any]]:
        return self.jsonl("_truth/identities.jsonl")

    @property
    def patient_truth(self) -> list[dict[str, Any]]:
        return self.jsonl("_truth/patients.jsonl")

    @property
    def image_truth(self) -> list[dict[str, Any]]:
        return self.jsonl("_truth/images.jsonl")

    def defect_positions(self) -> set[tuple[str, int | None]]:
        return {(d.file, d.position) for d in self.manifest.defects}

    def whole_file_defects(self) -> set[str]:
        return {d.file for d in self.manifest.defects if d.position is None}

    def fhir_files(self, institution: str) -> list[Path]:
        return sorted(p for p in (self.root / institution / "fhir").rglob("*") if p.is_file())

    def readable_resources(self, institution: str) -> Iterator[tuple[str, int, dict[str, Any]]]:
        """(file, position, resource) for every resource in files not broken as a whole;
        lines listed as malformed/truncated/non-FHIR are skipped."""
        whole = self.whole_file_defects()
        for path in self.fhir_files(institution):
            relpath = path.relative_to(self.root).as_posix()
            if relpath in whole:
                continue
            if path.suffix == ".ndjson":
                for position, line in enumerate(path.read_text("utf-8").splitlines()):
                    broken = {d.defect_type for d in self.manifest.defects
                              if d.file == relpath and d.position == position}
                    if broken & {"malformed_file", "truncated_file", "non_fhir_json"}:
                        continue
                    yield relpath, position, json.loads(line)
            else:
                bundle = json.loads(path.read_text("utf-8"))
                for position, entry in enumerate(bundle["entry"]):
                    yield relpath, position, entry["resource"]


@pytest.fixture(scope="session")
def clean_hospital(tmp_path_factory: pytest.TempPathFactory) -> Hospital:
    root = tmp_path_factory.mktemp("clean-hospital")
    manifest = generate_hospital(root, patients=70, seed=11, defect_rates=DefectRates.none(), write_identities=True)
    return Hospital(root, manifest)


@pytest.fixture(scope="session")
def defective_hospital(tmp_path_factory: pytest.TempPathFactory) -> Hospital:
    root = tmp_path_factory.mktemp("defective-hospital")
    manifest = generate_hospital(root, patients=70, seed=5, defect_rates=HEAVY_DEFECTS, write_identities=True)
    return Hospital(root, manifest)


@pytest.fixture(scope="session")
def default_hospital(tmp_path_factory: pytest.TempPathFactory) -> Hospital:
    """Default defect rates, no identities file."""
    root = tmp_path_factory.mktemp("default-hospital")
    return Hospital(root, generate_hospital(root, patients=50, seed=0))
