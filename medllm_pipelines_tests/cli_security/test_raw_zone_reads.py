"""Pipeline reads of the raw zone (the resource the assets use) are audited once per table, with the run id."""

from __future__ import annotations

import json
from pathlib import Path

from dagster import asset, materialize

from medllm_pipelines.lib.security.audit import read_entries, transit_audit_log
from medllm_pipelines.resources.raw_zone import RawZoneResource
from medllm_pipelines.resources.vault import VaultResource
from medllm_pipelines_tests.cli_security.world import IDENTIFIERS, World


def test_pipeline_raw_zone_reads_are_audited_once_per_table(world: World, tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    resource = RawZoneResource(path=str(world.home / "raw_zone"),
                               vault=VaultResource(addr=world.server.addr, token=world.server.token),
                               audit_log=str(log))
    zone = resource.get()
    for _ in range(3):
        zone.read_table("deidentify_pseudonym_map")
    zone.read_partitions("ingest_patients")
    entries = list(read_entries(log))
    assert [(e.actor, e.action, e.resource) for e in entries] == [
        ("pipeline", "raw_zone.read", "deidentify_pseudonym_map"),
        ("pipeline", "raw_zone.read", "ingest_patients"),
    ]
    assert transit_audit_log(log, world.service).verify().ok
    assert not any(identifier in log.read_text() for identifier in IDENTIFIERS)
    assert json.loads(log.with_name("audit.jsonl.head").read_text())["mac"]


def test_raw_zone_reads_in_a_dagster_run_are_audited_with_the_run_id(world: World, tmp_path: Path) -> None:
    @asset
    def reads_the_map(raw_zone: RawZoneResource) -> int:
        zone = raw_zone.get()
        return len(zone.read_table("deidentify_pseudonym_map")) + len(zone.read_table("deidentify_pseudonym_map"))

    log = tmp_path / "audit.jsonl"
    resource = RawZoneResource(path=str(world.home / "raw_zone"),
                               vault=VaultResource(addr=world.server.addr, token=world.server.token),
                               audit_log=str(log))
    result = materialize([reads_the_map], resources={"raw_zone": resource})
    assert result.success
    [entry] = list(read_entries(log))
    assert (entry.action, entry.resource, entry.details["dagster_run_id"]) == (
        "raw_zone.read", "deidentify_pseudonym_map", result.run_id)
