"""The source registry: which institutions may deliver data, and which feeds each sends.

Data enters only under a recorded agreement (clause 5.1.1.1): a file from a
folder no registered source owns is quarantined (``unregistered_source``).
The registry is a versioned data file (``sources.yaml`` beside this module,
or ``MEDLLM_SOURCES_FILE``); its version goes into the ingest metadata.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import yaml

DEFAULT_SOURCES_FILE = Path(__file__).with_name("sources.yaml")

# The partition of files that belong to no registered source (stray files,
# unregistered folders), so every file in the landing zone is handled by
# exactly one partition; never a source code.
UNROUTED = "unrouted"


@dataclass(frozen=True)
class Source:
    code: str
    name: str
    feeds: tuple[str, ...]


@dataclass(frozen=True)
class SourceRegistry:
    version: str
    sources: tuple[Source, ...]

    @property
    def codes(self) -> tuple[str, ...]:
        return tuple(s.code for s in self.sources)

    @property
    def partitions(self) -> tuple[str, ...]:
        """Every institution partition: the registered codes, then ``unrouted``."""
        return (*self.codes, UNROUTED)

    def is_registered(self, code: str | None) -> bool:
        return code in self.codes


@lru_cache(maxsize=4)
def load_sources(path: str | None = None) -> SourceRegistry:
    """The registry at ``path`` (None or "": the packaged one); cached, it is read at every code load."""
    raw = yaml.safe_load(Path(path or DEFAULT_SOURCES_FILE).read_text())
    sources = tuple(Source(s["code"], s["name"], tuple(s.get("feeds", ()))) for s in raw["sources"])
    if UNROUTED in {s.code for s in sources}:
        raise ValueError(f"'{UNROUTED}' is reserved and cannot be a source code")
    return SourceRegistry(str(raw["version"]), sources)
