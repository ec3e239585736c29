"""The ingest group materialised on its own, in process, on a small seeded landing zone.

A clean synthetic hospital of four institutions (FHIR Bundles, Bulk NDJSON, HL7 v2, DICOM, JSONL) is
delivered with three bad files beside it (a malformed Bundle, a file outside any source folder, a folder
of an unregistered source), against a real OpenBao dev server and DuckDB. One run covers every institution
partition, as ``medllm run`` does; each partition must show its own figures, and every file must be
accounted for. Then the feed summary's daily partitions start at the day the first file arrived.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from dagster import DagsterInstance, build_asset_context, materialize

from medllm_pipelines.defs import keys
from medllm_pipelines.defs.ingest import assets as ingest
from medllm_pipelines.defs.ingest import vitals as ingest_vitals
from medllm_pipelines.defs.ingest.arrivals import build_daily_arrivals
from medllm_pipelines.defs.ingest.partitions import deployment_arrivals_start
from medllm_pipelines.lib.common.warehouse import Warehouse
from medllm_pipelines.lib.ingest.arrivals import read_first_arrival
from medllm_pipelines.lib.ingest.sources import UNROUTED, load_sources
from medllm_pipelines.lib.synth import DefectRates, generate_hospital
from medllm_pipelines.reconcile import file_accounting
from medllm_pipelines.resources.landing import LandingZone
from medllm_pipelines.resources.raw_zone import RawZoneResource
from medllm_pipelines.resources.vault import VaultResource
from medllm_pipelines.resources.warehouse import WarehouseResource
from medllm_pipelines.runner import ensure_partitions, partition_range_tags

HOSPITAL_PATIENTS = 20
HOSPITAL_SEED = 5
PARTITIONS = list(load_sources().partitions)  # hzsf, rvic, jhsq, whsy, unrouted
INGEST_ASSETS = [*ingest.ASSETS, *ingest_vitals.ASSETS]  # the ingest group: main feeds, then bedside vitals
BAD_FILES = {
    "hzsf/fhir/bundles/zz-malformed.json": b'{"resourceType": "Bundle", "type": "collection", "entry": [',
    "stray-file.json": b'{"resourceType": "Patient"}',
    "xyzh/fhir/bundles/bundle-1.json": b'{"resourceType": "Bundle", "type": "collection", "entry": []}',
}


@dataclass
class IngestRun:
    result: Any
    resources: dict[str, Any]
    instance: DagsterInstance
    warehouse: Warehouse
    delivered: int  # files put in the landing zone
    landing: Path
    hospital: Path

    def by_partition(self, asset_key: Any, result: Any = None) -> dict[str, dict[str, Any]]:
        """Each partition's materialisation metadata in the run."""
        found = {}
        for event in (result or self.result).get_asset_materialization_events():
            materialization = event.event_specific_data.materialization
            if materialization.asset_key == asset_key:
                found[materialization.partition] = {k: v.value for k, v in materialization.metadata.items()}
        return found

    def rows_in_raw_zone(self, asset_key: Any, partition: str) -> int:
        return len(self.resources["raw_zone"].get().read_partition(keys.raw_table_name(asset_key), partition))


def deliver(hospital: Path, landing: Path) -> int:
    shutil.copytree(hospital, landing, ignore=shutil.ignore_patterns("_truth"), dirs_exist_ok=True)
    for relpath, content in BAD_FILES.items():
        (landing / relpath).parent.mkdir(parents=True, exist_ok=True)
        (landing / relpath).write_bytes(content)
    return sum(1 for path in landing.rglob("*") if path.is_file())


def run_ingest(run_resources: dict[str, Any], instance: DagsterInstance, assets: list[Any] | None = None) -> Any:
    return materialize(assets or INGEST_ASSETS, resources=run_resources, instance=instance,
                       tags=partition_range_tags(instance, PARTITIONS))


@pytest.fixture(scope="module")
def ingest_run(tmp_path_factory: pytest.TempPathFactory, openbao_server) -> Iterator[IngestRun]:
    base = tmp_path_factory.mktemp("ingest-group")
    generate_hospital(base / "hospital", patients=HOSPITAL_PATIENTS, seed=HOSPITAL_SEED, defect_rates=DefectRates.none())
    delivered = deliver(base / "hospital", base / "landing")
    vault = VaultResource(token_file=str(openbao_server.state_file))
    resources = {
        "landing_zone": LandingZone(path=str(base / "landing"), first_arrival_file=str(base / "state" / "first_arrival")),
        "raw_zone": RawZoneResource(path=str(base / "raw"), vault=vault),
        "vault": vault,
        "warehouse": WarehouseResource(url=f"duckdb:///{base / 'warehouse.duckdb'}"),
    }
    with DagsterInstance.ephemeral() as instance:
        ensure_partitions(instance, PARTITIONS)
        result = run_ingest(resources, instance)
        warehouse = Warehouse(resources["warehouse"].url)
        try:
            yield IngestRun(result, resources, instance, warehouse, delivered, base / "landing", base / "hospital")
        finally:
            warehouse.dispose()


def test_one_run_materialises_every_partition_of_every_ingest_asset(ingest_run) -> None:
    assert ingest_run.result.success
    for asset_def in INGEST_ASSETS:
        for asset_key in asset_def.keys:
            assert set(ingest_run.by_partition(asset_key)) == set(PARTITIONS), asset_key.to_user_string()


def test_each_partition_shows_its_own_row_count_not_the_runs(ingest_run) -> None:
    for asset_key in (keys.RAW_PATIENTS, keys.RAW_OBSERVATIONS, keys.RAW_DICOM_INSTANCES, keys.RAW_DIALOGUES):
        partitions = ingest_run.by_partition(asset_key)
        for partition, meta in partitions.items():
            rows = ingest_run.rows_in_raw_zone(asset_key, partition)
            assert meta["dagster/row_count"] == rows, (asset_key.to_user_string(), partition)
            assert meta["rows_by_institution"] == {partition: rows}
            assert meta["partitions_in_run"] == PARTITIONS
        assert partitions[UNROUTED]["dagster/row_count"] == 0
    patients = ingest_run.by_partition(keys.RAW_PATIENTS)
    assert all(patients[code]["dagster/row_count"] > 0 for code in ("hzsf", "rvic", "jhsq", "whsy"))
    assert len({meta["dagster/row_count"] for meta in patients.values()}) > 1, "partitions carry different figures"


def test_each_partition_reconciles_and_names_only_its_own_rejections(ingest_run) -> None:
    landed = ingest_run.by_partition(keys.LANDED_FILES)
    assert sum(meta["files_in"] for meta in landed.values()) == ingest_run.delivered
    for partition, meta in landed.items():
        assert meta["reconciled"] is True, partition
        assert meta["files_in"] == meta["files_stored"] + meta["files_quarantined"] + meta["duplicate_deliveries"]
    assert landed[UNROUTED]["files_quarantined"] == 2  # the stray file and the unregistered folder
    assert landed[UNROUTED]["new_files_by_institution"] == {"<none>": 1, "xyzh": 1}
    assert all(landed[code]["files_quarantined"] == 0 for code in ("hzsf", "rvic", "jhsq", "whsy"))

    feed = ingest_run.by_partition(keys.RAW_PATIENTS)
    for partition, meta in feed.items():
        assert meta["feed_reconciled"] is True, partition
        removed = sum(meta["feed_removed_by_rule"].values())
        assert meta["feed_entries_read"] == meta["feed_resources_out"] + meta["feed_quarantined"] + removed
    assert feed["hzsf"]["feed_quarantined_by_reason"] == {"malformed_json": 1}
    assert [feed[code]["feed_quarantined"] for code in ("rvic", "jhsq", "whsy", UNROUTED)] == [0, 0, 0, 0]
    assert feed["rvic"]["feed_bulk_counts_match"] is True
    for asset_key in (keys.RAW_DICOM_INSTANCES, keys.RAW_DIALOGUES, keys.RAW_ANNOTATIONS):
        assert all(meta["reconciled"] for meta in ingest_run.by_partition(asset_key).values())


def test_every_landed_file_is_accounted_for(ingest_run) -> None:
    accounting = file_accounting(ingest_run.warehouse)
    ledger = ingest_run.warehouse.read_table(keys.AUDIT_SCHEMA, keys.FILE_LEDGER_TABLE)
    assert len(accounting["files"]) == len(ledger) == ingest_run.delivered  # every file distinct, each once
    assert accounting["files_unaccounted"] == [] and accounting["files_unbalanced"] == []
    assert not [path for path in ingest_run.landing.rglob("*") if path.is_file()], "every taken-in file is consumed"


def test_a_redelivery_is_counted_as_duplicates_per_partition(ingest_run) -> None:
    deliver(ingest_run.hospital, ingest_run.landing)
    again = run_ingest(ingest_run.resources, ingest_run.instance, [ingest.landed_files])
    assert again.success
    for partition, meta in ingest_run.by_partition(keys.LANDED_FILES, again).items():
        first = ingest_run.by_partition(keys.LANDED_FILES)[partition]
        assert meta["files_in"] == meta["duplicate_deliveries"] == first["files_in"], partition
        assert meta["files_stored"] == meta["files_quarantined"] == 0
    assert len(ingest_run.warehouse.read_table(keys.AUDIT_SCHEMA, keys.FILE_LEDGER_TABLE)) == ingest_run.delivered


def test_daily_partitions_start_at_the_first_arrival(ingest_run) -> None:
    marker = ingest_run.resources["landing_zone"].first_arrival_file
    ledger = ingest_run.warehouse.read_table(keys.AUDIT_SCHEMA, keys.FILE_LEDGER_TABLE)
    first = read_first_arrival(marker)
    assert first is not None and deployment_arrivals_start(marker) == first

    daily = build_daily_arrivals(deployment_arrivals_start(marker))
    assert daily.partitions_def.get_first_partition_key() == first
    result = materialize([daily.asset], partition_key=first, instance=ingest_run.instance,
                         resources={"warehouse": ingest_run.resources["warehouse"]})
    (event,) = result.get_asset_materialization_events()
    meta = {k: v.value for k, v in event.event_specific_data.materialization.metadata.items()}
    assert meta["files"] == len(ledger) and meta["quarantined_files"] == 2


def test_an_asset_called_directly_puts_its_one_partitions_figures_on_its_result(ingest_run) -> None:
    """Outside a run (benchmarks call assets directly) there is no step to hold partition-scoped metadata."""
    resources = {name: ingest_run.resources[name] for name in ("raw_zone", "warehouse")}
    with build_asset_context(partition_key="jhsq", resources=resources, instance=ingest_run.instance) as context:
        (result,) = list(ingest.dialogues(context))
    rows = ingest_run.rows_in_raw_zone(keys.RAW_DIALOGUES, "jhsq")
    assert result.metadata["dagster/row_count"] == rows and result.metadata["rows_by_institution"] == {"jhsq": rows}
    assert result.metadata["partitions_in_run"] == ["jhsq"]
