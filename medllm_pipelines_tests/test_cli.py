"""What `medllm demo` prints points where the asset metadata's links point."""

from __future__ import annotations

from medllm_pipelines.cli import mlflow_ui_command
from medllm_pipelines.defs.resources import build_resources
from medllm_pipelines.settings import load_settings


def test_the_printed_mlflow_ui_serves_where_run_links_point(tmp_path) -> None:
    settings = load_settings({"MEDLLM_HOME": str(tmp_path), "MEDLLM_MLFLOW_UI_URL": "http://127.0.0.1:5123/"})
    command = mlflow_ui_command(settings)
    assert "--host 127.0.0.1 --port 5123" in command and settings.mlflow_tracking_uri in command
    link = build_resources(settings, environ={})["mlflow"].run_url("7", "abc")
    assert link.startswith("http://127.0.0.1:5123/#/experiments/7/runs/abc")


def test_the_default_mlflow_port_is_5000(tmp_path) -> None:
    assert mlflow_ui_command(load_settings({"MEDLLM_HOME": str(tmp_path)})).endswith("--port 5000")
