"""Installed package versions, recorded wherever numbers are produced (metadata, models, reports)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterable
from functools import lru_cache
from importlib import metadata
from pathlib import Path


def package_versions(packages: Iterable[str]) -> dict[str, str]:
    """``{name: version}``; a package that is not installed says so rather than disappearing."""
    versions = {}
    for package in packages:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions


@lru_cache(maxsize=1)
def code_version() -> str:
    """Git commit of the running code (``+dirty`` if modified), else the package version."""
    root = Path(__file__).resolve().parents[3]
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        return f"{commit}{'+dirty' if dirty else ''}"
    except (OSError, subprocess.SubprocessError):
        return metadata.version("medllm-pipelines")
