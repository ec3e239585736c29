"""Training out of the Dagster process, through Dagster Pipes: the external half (issue 11 item 8).

The asset (``defs/train/assets.py``) opens the MLflow run, writes the de-identified dataset of the run to a
Parquet file beside the model store, and launches ``python -m medllm_pipelines.lib.train.out_of_process`` with a
``PipesSubprocessClient`` (locally; a ``PipesK8sClient`` starts the same command in a pod of a GPU node pool,
docs/training.md). This process reads the job from the Pipes extras, resumes the MLflow run by id, trains and
registers exactly as in process (``runs.train_spec_model``), writes the training record, and reports the
materialisation's metadata back; its log lines reach the Dagster run's log. A failure marks the MLflow run
FAILED with the reason and exits non-zero, which fails the step. Only ``dagster-pipes`` (a small dependency-free
package) is imported here, never ``dagster``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

DATASET_FILE = "dataset.parquet"


@dataclass(frozen=True)
class TrainingJob:
    """What the external process needs; nothing secret (the tracking URI of a server holds no password here)."""

    spec_id: str
    dataset_path: str
    dataset_version: str
    model_store: str
    mlflow_tracking_uri: str
    mlflow_run_id: str
    experiment_id: str
    dagster_run_id: str
    size: str = "demo"
    tags: dict[str, str] = field(default_factory=dict)
    attachments: list[str] = field(default_factory=list)

    def as_extras(self) -> dict[str, Any]:
        return {"medllm_training_job": asdict(self)}

    @classmethod
    def from_extras(cls, extras: dict[str, Any]) -> TrainingJob:
        return cls(**extras["medllm_training_job"])


def write_job_dataset(frame: pd.DataFrame, folder: Path) -> Path:
    """The run's dataset as the external process reads it (the frame only: the version travels in the job)."""
    from medllm_pipelines.lib.common.files import write_private_atomic

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / DATASET_FILE
    write_private_atomic(path, frame.to_parquet(index=False))
    return path


PATH_KEYS = ("checkpoint_path", "model_dir")


def pipes_metadata(metadata: dict[str, Any]) -> dict[str, Any]:
    """Metadata as Pipes sends it: scalars as they are, mappings and lists typed ``json``, model paths ``path``."""
    typed: dict[str, Any] = {}
    for key, value in json.loads(json.dumps(metadata, default=str)).items():
        if key in PATH_KEYS:
            typed[key] = {"raw_value": value, "type": "path"}
        elif isinstance(value, (dict, list)):
            typed[key] = {"raw_value": value, "type": "json"}
        elif value is None:
            typed[key] = {"raw_value": None, "type": "null"}
        else:
            typed[key] = value
    return typed


def run_training_job(job: TrainingJob) -> dict[str, Any]:
    """Train the job's spec inside its (resumed) MLflow run; the asset's metadata."""
    import mlflow

    from medllm_pipelines.lib.curate.dataset import SplitDataset
    from medllm_pipelines.lib.curate.spec import load_spec
    from medllm_pipelines.lib.train.runs import train_spec_model
    from medllm_pipelines.lib.train.store import ModelStore

    spec = load_spec(job.spec_id)
    dataset = SplitDataset(pd.read_parquet(job.dataset_path), job.dataset_version)
    store = ModelStore(Path(job.model_store))
    preprocessing = store.fitted_preprocessing(spec.id, dataset.version)
    mlflow.set_tracking_uri(job.mlflow_tracking_uri)
    with mlflow.start_run(run_id=job.mlflow_run_id):
        trained = train_spec_model(dataset, preprocessing, spec, store.model_folder(spec.id, dataset.version),
                                   job.mlflow_run_id, job.tags, attachments=[Path(p) for p in job.attachments],
                                   size=job.size)
    store.write_training_record(spec.id, dataset.version, trained.record(job.experiment_id, job.dagster_run_id))
    return {**trained.as_metadata(), "checkpoint_path": str(trained.result.checkpoint_path),
            "model_dir": str(trained.result.model_dir), "training_process": "subprocess (Dagster Pipes)",
            "summary": trained.summary()}


def main() -> None:
    from dagster_pipes import open_dagster_pipes

    with open_dagster_pipes() as pipes:
        job = TrainingJob.from_extras(pipes.extras)
        pipes.log.info(f"training {job.spec_id} out of process on dataset {job.dataset_version[:16]}")
        metadata = run_training_job(job)
        pipes.log.info(metadata.pop("summary"))
        pipes.report_asset_materialization(metadata=pipes_metadata(metadata))


if __name__ == "__main__":
    main()
