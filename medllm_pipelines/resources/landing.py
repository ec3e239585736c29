"""The landing zone as a resource (a folder per registered source institution)."""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path

from dagster import ConfigurableResource

from medllm_pipelines.defs.ingest.sources import UNROUTED, SourceRegistry, load_sources
from medllm_pipelines.lib.ingest.landing import LandedFile, scan_landing


class LandingZone(ConfigurableResource):
    """``consume``: remove a file once it is safely (encrypted) in the raw zone,
    like an SFTP drop box, so plaintext identifiers do not linger on disk.
    ``sources_file``: the source registry (default: the packaged one)."""

    path: str
    consume: bool = True
    sources_file: str | None = None

    @property
    def root(self) -> Path:
        return Path(self.path)

    def registry(self) -> SourceRegistry:
        return load_sources(self.sources_file)

    def scan(self) -> list[LandedFile]:
        return scan_landing(self.root)

    def scan_partition(self, partition: str, registered: Collection[str]) -> list[LandedFile]:
        """The files one partition is responsible for: its folder, or (``unrouted``) everything
        outside the registered source folders."""
        if partition == UNROUTED:
            return [f for f in self.scan() if f.institution not in registered]
        if partition not in registered:
            return []
        return scan_landing(self.root, under=partition)
