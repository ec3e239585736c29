"""The source registry: registered institutions, their partitions, and the reserved ``unrouted``."""

from __future__ import annotations

from pathlib import Path

import pytest

from medllm_pipelines.lib.ingest.sources import UNROUTED, load_sources


def test_the_packaged_registry_lists_the_demo_institutions_and_their_partitions():
    registry = load_sources()

    assert registry.codes == ("hzsf", "rvic", "jhsq", "whsy")
    assert registry.partitions == (*registry.codes, UNROUTED)
    assert registry.is_registered("whsy") and not registry.is_registered(None)
    assert registry.version


def test_unrouted_cannot_be_registered(tmp_path: Path):
    path = tmp_path / "sources.yaml"
    path.write_text('version: "9"\nsources:\n  - {code: unrouted, name: Nobody}\n')

    with pytest.raises(ValueError, match="reserved"):
        load_sources(str(path))


def test_an_operator_registry_replaces_the_packaged_one(tmp_path: Path):
    path = tmp_path / "sources.yaml"
    path.write_text('version: "2.1"\nsources:\n  - {code: site1, name: Site One, feeds: [hl7v2]}\n')

    registry = load_sources(str(path))

    assert (registry.version, registry.codes, registry.sources[0].feeds) == ("2.1", ("site1",), ("hl7v2",))
