"""Installed package versions, recorded wherever numbers are produced (metadata, models, reports)."""

from __future__ import annotations

from collections.abc import Iterable
from importlib import metadata


def package_versions(packages: Iterable[str]) -> dict[str, str]:
    """``{name: version}``; a package that is not installed says so rather than disappearing."""
    versions = {}
    for package in packages:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions
