"""The model store's layout: where preprocessing, models, training records and memberships live.

One place decides the paths, so that the curate stage (which fits the
preprocessing), training, evaluation, retraining and serving find the same
files for a dataset version. Reached through ``ArtifactStoreResource.model_store()``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medllm_pipelines.lib.common.files import write_private_atomic
from medllm_pipelines.lib.curate.preprocessing import DESCRIPTION_FILE, FittedPreprocessing, load_preprocessing

TRAINING_RECORD = "training_run.json"


@dataclass(frozen=True)
class ModelStore:
    root: Path

    def _folder(self, *parts: str) -> Path:
        path = Path(self.root, *parts)
        path.mkdir(parents=True, exist_ok=True)
        return path

    def preprocessing_folder(self, spec_id: str, dataset_version: str) -> Path:
        """The pipeline the curate stage fitted for this dataset version (lib/curate/preprocessing.py)."""
        return self._folder("datasets", spec_id, dataset_version[:16])

    def fitted_preprocessing(self, spec_id: str, dataset_version: str) -> FittedPreprocessing:
        """The pipeline fitted for exactly this dataset version; never a new fit. Missing: FileNotFoundError."""
        folder = self.preprocessing_folder(spec_id, dataset_version)
        if not (folder / DESCRIPTION_FILE).is_file():
            raise FileNotFoundError(f"no preprocessing of spec {spec_id} fitted for dataset version {dataset_version[:16]}")
        return load_preprocessing(folder)

    def model_folder(self, spec_id: str, dataset_version: str) -> Path:
        """Models are filed by dataset version: the evaluation finds the model trained on exactly its data."""
        return self._folder(spec_id, dataset_version[:16])

    def membership_folder(self) -> Path:
        """Who is in each dataset version (pseudonyms): what a consent withdrawal is checked against."""
        return self._folder("memberships")

    def write_training_record(self, spec_id: str, dataset_version: str, record: dict[str, Any]) -> Path:
        path = self.model_folder(spec_id, dataset_version) / TRAINING_RECORD
        write_private_atomic(path, json.dumps(record, indent=2, sort_keys=True))
        return path

    def training_record(self, spec_id: str, dataset_version: str) -> dict[str, Any] | None:
        """The record of the model trained on this dataset version, or None when none was."""
        path = Path(self.root, spec_id, dataset_version[:16], TRAINING_RECORD)
        return json.loads(path.read_text()) if path.is_file() else None

    def all_training_records(self) -> list[dict[str, Any]]:
        """Every model version of every spec and variant: what a consent withdrawal is checked against."""
        return [json.loads(p.read_text()) for p in sorted(Path(self.root).glob(f"*/*/{TRAINING_RECORD}"))]

    def training_records(self, spec_id: str) -> list[dict[str, Any]]:
        """Every model version trained for ``spec_id`` (one record per dataset version)."""
        folder = Path(self.root, spec_id)
        return [json.loads(p.read_text()) for p in sorted(folder.glob(f"*/{TRAINING_RECORD}"))]
