"""Folders for de-identified files, model checkpoints and reports."""

from __future__ import annotations

from pathlib import Path

from dagster import ConfigurableResource

from medllm_pipelines.lib.train.store import ModelStore


class ArtifactStoreResource(ConfigurableResource):
    """Local folders in the embedded mode; a mounted volume in production.

    Only de-identified content goes here (images without headers, model
    files, aggregate reports); identifiable data stays in the raw zone.
    """

    deidentified_dir: str
    models_dir: str
    reports_dir: str
    governance_dir: str = ""

    def folder(self, kind: str, *parts: str) -> Path:
        base = {
            "deidentified": self.deidentified_dir,
            "models": self.models_dir,
            "reports": self.reports_dir,
            "governance": self.governance_dir,
        }[kind]
        path = Path(base, *parts)
        path.mkdir(parents=True, exist_ok=True)
        return path

    def model_store(self) -> ModelStore:
        """Preprocessing, models, training records and memberships, laid out by spec and dataset version."""
        return ModelStore(self.folder("models"))
