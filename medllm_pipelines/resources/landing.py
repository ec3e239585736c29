"""The landing zone as a resource (a folder per registered source institution)."""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path

from dagster import ConfigurableResource

from medllm_pipelines.lib.ingest.arrivals import record_first_arrival
from medllm_pipelines.lib.ingest.landing import LandedFile, scan_landing
from medllm_pipelines.lib.ingest.sources import UNROUTED, SourceRegistry, load_sources


class LandingZone(ConfigurableResource):
    """``consume``: remove a file once it is safely (encrypted) in the raw zone,
    like an SFTP drop box, so plaintext identifiers do not linger on disk.
    ``sources_file``: the source registry (default: the packaged one).
    ``first_arrival_file``: where the day the first file arrived is recorded
    (the daily arrival partitions start there); None: not recorded."""

    path: str
    consume: bool = True
    sources_file: str | None = None
    first_arrival_file: str | None = None

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

    def record_first_arrival(self, day: str | None) -> str | None:
        """Record ``day`` as the first arrival unless an earlier one is recorded; return the recorded day."""
        if self.first_arrival_file is None:
            return None
        return record_first_arrival(self.first_arrival_file, day)
