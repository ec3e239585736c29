"""The run-wide leak scan: it passes on the synthetic hospital's full run and fails on a planted leak."""

from __future__ import annotations

import uuid

from medllm_pipelines.defs import keys
from medllm_pipelines_tests.conftest_lifecycle import LifecycleRun, scoped_env


def _scan_check(run: LifecycleRun):
    found = [e for e in run.check_evaluations() if e.check_name == keys.CHECK_NO_IDENTIFIER_IN_OUTPUTS]
    assert len(found) == 1
    return found[0]


def test_leak_scan_passes_on_the_full_run_and_looked_everywhere(embedded_run: LifecycleRun) -> None:
    meta = embedded_run.materialization(keys.PRIVACY_LEAK_SCAN)
    check = _scan_check(embedded_run)
    assert check.passed, check.metadata
    assert meta["locations_with_hits"] == 0
    assert meta["identifiers_searched"] > 160  # every raw patient's names, IDs, phones, ...
    for haystack in ("mlflow_params", "mlflow_tags", "mlflow_artifact", "dagster_event", "warehouse_column", "file"):
        assert meta[f"scanned[{haystack}]"] > 0, haystack
    assert meta["unscanned"] == []


def test_leak_scan_runs_after_every_other_lifecycle_asset(embedded_run: LifecycleRun) -> None:
    graph = embedded_run.defs.resolve_asset_graph()
    everything = {k for k in graph.get_all_asset_keys() if k not in (keys.PRIVACY_LEAK_SCAN, keys.DAILY_ARRIVALS)}
    upstream = graph.get(keys.PRIVACY_LEAK_SCAN).parent_keys
    ancestors: set = set()
    frontier = set(upstream)
    while frontier:
        key = frontier.pop()
        if key not in ancestors:
            ancestors.add(key)
            frontier |= set(graph.get(key).parent_keys)
    assert everything - ancestors == set()


def test_an_identifier_planted_in_mlflow_fails_the_gate_without_echoing_it(embedded_run: LifecycleRun) -> None:
    from dagster import materialize
    from mlflow.tracking import MlflowClient

    from medllm_pipelines.defs.resources import build_resources
    from medllm_pipelines.lib.security.home_scan import load_identity_needles

    settings = embedded_run.settings
    phone = min(load_identity_needles(embedded_run.hospital.identities)["phone"])
    client = MlflowClient(tracking_uri=settings.mlflow_tracking_uri)
    experiment = client.create_experiment(f"medllm/leak-canary-{uuid.uuid4().hex[:8]}",
                                          artifact_location=f"{settings.mlflow_artifact_root}/leak-canary")
    try:
        canary = client.create_run(experiment, run_name="canary")
        client.log_param(canary.info.run_id, "cohort_filter", f"phone == {phone}")
        scan = next(a for a in embedded_run.defs.assets if keys.PRIVACY_LEAK_SCAN in a.keys)
        with scoped_env(embedded_run.env):
            result = materialize([scan], resources=build_resources(settings), raise_on_error=False)
        evaluation = next(e.event_specific_data for e in result.all_events
                          if e.event_type_value == "ASSET_CHECK_EVALUATION")
        assert not evaluation.passed
        assert not result.success  # blocking: the run fails
        findings = evaluation.metadata["findings"].value
        assert [(f["kind"], f["location"].rsplit("/", 1)[-1]) for f in findings] == [("phone", "params")]
        assert canary.info.run_id in findings[0]["location"]
        assert phone not in repr(evaluation.metadata) and "<phone>" in findings[0]["context"]
    finally:
        client.delete_experiment(experiment)
