"""A newcomer's first steps work as printed: the Dagster UI command that ``make demo`` prints loads the
code location when run exactly so, from the repository root, without the venv on PATH."""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path

import pytest

from medllm_pipelines.cli import dagster_ui_command
from medllm_pipelines.settings import load_settings, prepare_home

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_printed_dagster_command_loads_the_definitions_without_the_venv_on_path(tmp_path: Path) -> None:
    env = {"HOME": str(tmp_path), "MEDLLM_HOME": str(tmp_path / "home"), "PATH": "/usr/bin:/bin"}
    settings = load_settings(env)
    prepare_home(settings)  # as `make demo` leaves it
    printed = shlex.split(dagster_ui_command(settings))
    assignments = dict(word.split("=", 1) for word in printed if "=" in word and not word.startswith("-"))
    executable, *arguments = [word for word in printed if "=" not in word]
    assert arguments[:1] == ["dev"] and (REPO / executable).exists(), printed
    assert not any(".venv" in part for part in env["PATH"].split(os.pathsep))
    # `dagster dev` serves forever; `definitions validate` loads the same workspace the same way and exits
    completed = subprocess.run(
        [executable, "definitions", "validate", *arguments[1:]],
        cwd=REPO, env={**env, **assignments}, capture_output=True, text=True, timeout=300, check=False,
    )
    output = completed.stdout + completed.stderr
    assert completed.returncode == 0, output[-4000:]
    assert "Validation successful for code location medllm_pipelines" in output
    assert "dbt executable" not in output and "ERROR" not in output, output[-4000:]
