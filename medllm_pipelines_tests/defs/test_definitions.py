"""The whole Definitions object loads, and its graph matches the reviewed snapshot."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SNAPSHOT = Path(__file__).with_name("asset_graph_snapshot.json")
STAGE_ORDER = ["ingest", "quality", "deidentify", "label", "curate", "train", "evaluate", "deploy"]
# The run-wide leak scan depends on every sink of the graph, later stages included, so that it sees what a run wrote.
RUN_WIDE = {"evaluate/privacy_leak_scan"}


def graph_snapshot() -> dict:
    from medllm_pipelines.definitions import defs

    graph = defs.resolve_asset_graph()
    assets = {}
    for key in sorted(graph.get_all_asset_keys(), key=lambda k: k.to_user_string()):
        node = graph.get(key)
        assets[key.to_user_string()] = {
            "group": node.group_name,
            "deps": sorted(p.to_user_string() for p in node.parent_keys),
        }
    checks = sorted(f"{c.asset_key.to_user_string()}:{c.name}" for c in graph.asset_check_keys)
    return {
        "assets": assets,
        "checks": checks,
        "jobs": sorted(j.name for j in defs.resolve_all_job_defs() if not j.name.startswith("__")),
        "sensors": sorted(s.name for s in defs.sensors or []),
    }


def test_asset_graph_matches_snapshot() -> None:
    current = graph_snapshot()
    if not SNAPSHOT.exists():  # first run writes it for review
        SNAPSHOT.write_text(json.dumps(current, indent=2, ensure_ascii=False) + "\n")
        pytest.fail("snapshot written; review and commit it")
    assert current == json.loads(SNAPSHOT.read_text())


def test_every_asset_is_in_its_stage_group_and_prefix() -> None:
    for name, node in graph_snapshot()["assets"].items():
        assert name.split("/")[0] == node["group"], name
        assert node["group"] in STAGE_ORDER


def test_dependencies_never_point_to_a_later_stage() -> None:
    for name, node in graph_snapshot()["assets"].items():
        if name in RUN_WIDE:
            continue
        stage = STAGE_ORDER.index(node["group"])
        for dep in node["deps"]:
            assert STAGE_ORDER.index(dep.split("/")[0]) <= stage, f"{name} depends on later-stage {dep}"


def test_the_leak_scan_runs_after_every_sink_the_deploy_stage_included() -> None:
    from medllm_pipelines.defs import keys

    snapshot = graph_snapshot()["assets"]
    consumed = {dep for node in snapshot.values() for dep in node["deps"]}
    sinks = set(snapshot) - consumed - RUN_WIDE - {keys.DAILY_ARRIVALS.to_user_string()}
    assert keys.CLINICAL_FEEDBACK.to_user_string() in snapshot[keys.PRIVACY_LEAK_SCAN.to_user_string()]["deps"]
    assert sinks == set(), f"assets the leak scan does not wait for: {sorted(sinks)}"


def test_quality_gates_and_leak_gates_are_blocking() -> None:
    from medllm_pipelines.definitions import defs

    graph = defs.resolve_asset_graph()
    checks = {f"{k.asset_key.to_user_string()}:{k.name}": graph.get_check_spec(k) for k in graph.asset_check_keys}
    assert checks, "no asset checks defined"
    for name, spec in checks.items():
        assert spec.blocking, f"{name} must be blocking"
    gated = {n.split(":")[0] for n in checks}
    assert {"quality/clean_patients", "quality/clean_observations", "curate/diabetes_splits", "deidentify/patients"} <= gated


def test_definitions_import_is_light() -> None:
    """Heavy libraries stay out of definitions.py (every Dagster process imports it)."""
    code = (
        "import sys, medllm_pipelines.definitions;"
        "print(','.join(m for m in ('torch','lightning','mlflow','great_expectations','monai') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == ""
