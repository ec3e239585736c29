"""Root fixtures: real OpenBao (plugin), and whole-lifecycle runs on a small synthetic hospital."""

from __future__ import annotations

pytest_plugins = ["medllm_pipelines_tests.conftest_vault", "medllm_pipelines_tests.conftest_lifecycle"]
