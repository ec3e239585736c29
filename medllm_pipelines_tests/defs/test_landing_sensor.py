"""Real-time intake: one sensor per registered source launches a run for new content only (row D3)."""

from __future__ import annotations

from pathlib import Path

import pytest
from dagster import DagsterInstance, SensorResult, SkipReason, build_sensor_context

from medllm_pipelines.defs.ingest.sensors import landing_sensor, landing_sensors, sensor_name
from medllm_pipelines.lib.ingest.sources import UNROUTED, load_sources
from medllm_pipelines.resources.landing import LandingZone

REGISTRY = load_sources()


@pytest.fixture(scope="module")
def instance():
    with DagsterInstance.ephemeral() as ephemeral:
        yield ephemeral


def _tick(instance, landing: Path, partition: str, cursor: str | None):
    sensor = landing_sensor(partition, REGISTRY)
    context = build_sensor_context(
        instance=instance, cursor=cursor, resources={"landing_zone": LandingZone(path=str(landing))}
    )
    result = sensor(context)
    if isinstance(result, SensorResult):
        return result, result.cursor
    return result, cursor


def _drop(landing: Path, relpath: str, content: bytes) -> None:
    path = landing / relpath
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)


BUNDLE = b'{"resourceType": "Bundle", "type": "collection"}'


def test_every_registered_source_and_unrouted_has_a_sensor() -> None:
    names = {s.name for s in landing_sensors(REGISTRY)}
    assert names == {sensor_name(code) for code in (*REGISTRY.codes, UNROUTED)}


def test_new_file_launches_one_run_for_its_partition_and_redelivery_none(instance, tmp_path: Path) -> None:
    landing = tmp_path / "landing"
    _drop(landing, "hzsf/fhir/bundles/bundle-1.json", BUNDLE)
    first, cursor = _tick(instance, landing, "hzsf", None)
    assert isinstance(first, SensorResult) and len(first.run_requests) == 1
    request = first.run_requests[0]
    assert request.partition_key == "hzsf" and request.tags["medllm/new_files"] == "1"
    assert first.dynamic_partitions_requests, "an unknown institution partition is registered by its sensor"

    second, cursor = _tick(instance, landing, "hzsf", cursor)
    assert isinstance(second, SkipReason), "the same file still present must not launch a second run"

    _drop(landing, "hzsf/fhir/bundles/bundle-1-resent.json", BUNDLE)  # same content, another name
    third, cursor = _tick(instance, landing, "hzsf", cursor)
    assert isinstance(third, SkipReason)

    _drop(landing, "hzsf/fhir/bundles/bundle-2.json", BUNDLE + b" ")
    fourth, _ = _tick(instance, landing, "hzsf", cursor)
    assert isinstance(fourth, SensorResult) and fourth.run_requests[0].run_key != request.run_key


def test_a_source_sensor_ignores_other_sources_and_stray_files(instance, tmp_path: Path) -> None:
    landing = tmp_path / "landing"
    _drop(landing, "rvic/fhir/bulk/Patient.ndjson", b'{"resourceType": "Patient"}\n')
    _drop(landing, "stray.json", b"{}")
    _drop(landing, "unknownsite/fhir/bundles/b.json", BUNDLE)
    hzsf, _ = _tick(instance, landing, "hzsf", None)
    assert isinstance(hzsf, SkipReason)
    unrouted, _ = _tick(instance, landing, UNROUTED, None)
    assert isinstance(unrouted, SensorResult)
    assert unrouted.run_requests[0].partition_key == UNROUTED
    assert unrouted.run_requests[0].tags["medllm/new_files"] == "2"


def test_ignored_paths_launch_nothing(instance, tmp_path: Path) -> None:
    landing = tmp_path / "landing"
    _drop(landing, "_truth/manifest.json", b"{}")
    _drop(landing, "hzsf/fhir/bundles/.bundle-2.json.tmp", b"partial")
    for partition in ("hzsf", UNROUTED):
        result, _ = _tick(instance, landing, partition, None)
        assert isinstance(result, SkipReason)


def test_run_key_is_stable_for_the_same_batch(instance, tmp_path: Path) -> None:
    """A sensor restarted without its cursor asks for the same run key: Dagster runs it once."""
    landing = tmp_path / "landing"
    _drop(landing, "jhsq/annotations/annotations.jsonl", b'{"item_id": "d1"}\n')
    a, _ = _tick(instance, landing, "jhsq", None)
    b, _ = _tick(instance, landing, "jhsq", None)
    assert a.run_requests[0].run_key == b.run_requests[0].run_key
