"""MLflow tracking: a SQLite store under MEDLLM_HOME by default, a server or
database URI in production."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from dagster import ConfigurableResource


class MLflowResource(ConfigurableResource):
    tracking_uri: str
    artifact_root: str
    ui_url: str = "http://127.0.0.1:5000"
    experiment_prefix: str = "medllm"

    def experiment_name(self, name: str) -> str:
        return f"{self.experiment_prefix}/{name}"

    def ensure_experiment(self, name: str) -> str:
        """Create the experiment with our artifact root (never ./mlruns in the cwd), marked as model training.

        The training tags (``mlflow.experimentKind``) are set on an existing
        experiment too, so that one created before them opens on its runs, not on GenAI traces.
        """
        from mlflow.tracking import MlflowClient

        from medllm_pipelines.lib.train.registry import TRAINING_EXPERIMENT_TAGS

        client = MlflowClient(tracking_uri=self.tracking_uri)
        full = self.experiment_name(name)
        existing = client.get_experiment_by_name(full)
        if existing is None:
            return client.create_experiment(
                full, artifact_location=f"{self.artifact_root.rstrip('/')}/{full.replace('/', '_')}",
                tags=dict(TRAINING_EXPERIMENT_TAGS),
            )
        for key, value in TRAINING_EXPERIMENT_TAGS.items():
            if existing.tags.get(key) != value:
                client.set_experiment_tag(existing.experiment_id, key, value)
        return existing.experiment_id

    @contextmanager
    def start_run(self, experiment: str, run_name: str, tags: dict[str, str]) -> Iterator[Any]:
        import mlflow

        mlflow.set_tracking_uri(self.tracking_uri)
        experiment_id = self.ensure_experiment(experiment)
        # System metrics (CPU, memory, GPU) need psutil; without it the run is the same, minus those curves.
        system_metrics = importlib.util.find_spec("psutil") is not None
        with mlflow.start_run(experiment_id=experiment_id, run_name=run_name, tags=tags,
                              log_system_metrics=system_metrics) as run:
            yield run

    def run_url(self, experiment_id: str, run_id: str) -> str:
        return f"{self.ui_url}/#/experiments/{experiment_id}/runs/{run_id}"
