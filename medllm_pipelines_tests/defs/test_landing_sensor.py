"""Real-time intake: the landing sensor launches a run for new content only (row D3)."""

from __future__ import annotations

from pathlib import Path

from dagster import RunRequest, SkipReason, build_sensor_context

from medllm_pipelines.defs.ingest.sensors import landing_zone_sensor
from medllm_pipelines.resources.landing import LandingZone


def _tick(landing: Path, cursor: str | None):
    context = build_sensor_context(cursor=cursor, resources={"landing_zone": LandingZone(path=str(landing))})
    return landing_zone_sensor(context), context.cursor


def _drop(landing: Path, relpath: str, content: bytes) -> None:
    path = landing / relpath
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)


def test_new_file_launches_one_run_and_redelivery_launches_none(tmp_path: Path) -> None:
    landing = tmp_path / "landing"
    _drop(landing, "hzsf/fhir/bundles/bundle-1.json", b'{"resourceType": "Bundle", "type": "collection"}')
    first, cursor = _tick(landing, None)
    assert isinstance(first, RunRequest)
    assert first.tags["medllm/new_files"] == "1"

    second, cursor = _tick(landing, cursor)
    assert isinstance(second, SkipReason), "same file still present must not launch a second run"

    # the same content delivered again under another name is still the same file
    _drop(landing, "hzsf/fhir/bundles/bundle-1-resent.json", b'{"resourceType": "Bundle", "type": "collection"}')
    third, cursor = _tick(landing, cursor)
    assert isinstance(third, SkipReason)

    _drop(landing, "rvic/fhir/bulk/Patient.ndjson", b'{"resourceType": "Patient"}\n')
    fourth, _ = _tick(landing, cursor)
    assert isinstance(fourth, RunRequest)
    assert fourth.tags["medllm/new_files"] == "1"
    assert fourth.run_key != first.run_key


def test_ignored_paths_and_empty_landing_launch_nothing(tmp_path: Path) -> None:
    landing = tmp_path / "landing"
    _drop(landing, "_truth/manifest.json", b"{}")
    _drop(landing, "hzsf/fhir/bundles/.bundle-2.json.tmp", b"partial")
    result, _ = _tick(landing, None)
    assert isinstance(result, SkipReason)


def test_run_key_is_stable_for_the_same_batch(tmp_path: Path) -> None:
    """Two sensor daemons (or a restarted one without its cursor) ask for the same run key: Dagster runs it once."""
    landing = tmp_path / "landing"
    _drop(landing, "jhsq/annotations/annotations.jsonl", b'{"item_id": "d1"}\n')
    a, _ = _tick(landing, None)
    b, _ = _tick(landing, None)
    assert isinstance(a, RunRequest) and isinstance(b, RunRequest)
    assert a.run_key == b.run_key
