"""The source registry and the partitions it defines."""

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import yaml
from dagster import DynamicPartitionsDefinition

DEFAULT_SOURCES_FILE = Path(__file__).with_name("sources.yaml")

# One dynamic partition per registered institution, plus one for files that
# belong to no registered source (stray files, unregistered folders), so every
# file in the landing zone is handled by exactly one partition.
UNROUTED = "unrouted"
INSTITUTION_PARTITIONS = DynamicPartitionsDefinition(name="institution")


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

    def is_registered(self, code: str | None) -> bool:
        return code in self.codes


@lru_cache(maxsize=4)
def load_sources(path: str | None = None) -> SourceRegistry:
    raw = yaml.safe_load(Path(path or DEFAULT_SOURCES_FILE).read_text())
    sources = tuple(Source(s["code"], s["name"], tuple(s.get("feeds", ()))) for s in raw["sources"])
    if UNROUTED in {s.code for s in sources}:
        raise ValueError(f"'{UNROUTED}' is reserved and cannot be a source code")
    return SourceRegistry(str(raw["version"]), sources)
