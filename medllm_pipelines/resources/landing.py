"""The landing zone as a resource (a folder per source institution)."""

from __future__ import annotations

from pathlib import Path

from dagster import ConfigurableResource

from medllm_pipelines.lib.ingest.landing import LandedFile, scan_landing


class LandingZone(ConfigurableResource):
    """``consume``: remove a file once it is safely (encrypted) in the raw zone,
    like an SFTP drop box, so plaintext identifiers do not linger on disk."""

    path: str
    consume: bool = True

    @property
    def root(self) -> Path:
        return Path(self.path)

    def scan(self) -> list[LandedFile]:
        return scan_landing(self.root)
