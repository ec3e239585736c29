"""Runs of `medllm run` are the UI's runs: they carry the workspace's code-location origin and re-execute from it."""

from __future__ import annotations

import os
import time
from pathlib import Path

from medllm_pipelines_tests.conftest_lifecycle import scoped_env

TERMINAL = {"SUCCESS", "FAILURE", "CANCELED"}


def test_the_origin_is_the_one_the_workspace_gives() -> None:
    from medllm_pipelines.runner import WORKSPACE_FILE, code_location_name, ui_job_origin

    assert code_location_name() == "medllm_pipelines"
    origin = ui_job_origin("lifecycle_job")
    assert origin.location_name == "medllm_pipelines" and origin.job_name == "lifecycle_job"
    assert "medllm_pipelines.definitions" in WORKSPACE_FILE.read_text()


def _wait_for(instance, run_id: str, timeout: float = 240.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = instance.get_run_by_id(run_id)
        if run.status.value in TERMINAL:
            return run
        time.sleep(1.0)
    raise AssertionError(f"run {run_id} did not finish in {timeout:.0f} s")


def test_a_failed_run_is_re_executed_from_its_origin_as_the_ui_does(tmp_path: Path) -> None:
    """Vault down: the ingest run fails; with Vault up, re-executing it from failure through the
    workspace (the Dagster UI's path: create_reexecuted_run + submit_run) succeeds."""
    from dagster import DagsterInstance
    from dagster._core.execution.plan.resume_retry import ReexecutionStrategy
    from dagster._core.workspace.context import WorkspaceProcessContext
    from dagster._core.workspace.load_target import WorkspaceFileTarget

    from medllm_pipelines.defs import keys
    from medllm_pipelines.lib.services.openbao import start_local_server, stop_dev_server
    from medllm_pipelines.lib.synth import DefectRates, generate_hospital
    from medllm_pipelines.runner import WORKSPACE_FILE, code_location_name, run_lifecycle
    from medllm_pipelines.settings import load_settings, prepare_home

    home = tmp_path / "home"
    with scoped_env({"MEDLLM_HOME": str(home)}):
        settings = load_settings()
        prepare_home(settings)
        os.environ["DAGSTER_HOME"] = str(settings.dagster_home)
        generate_hospital(settings.landing_dir, patients=3, seed=5, defect_rates=DefectRates.none())
        failed = run_lifecycle(settings, job_name=keys.INGEST_JOB, log_level="ERROR")  # no OpenBao running
        assert not failed.success
        try:
            start_local_server(settings.services_dir, port=0)
            with DagsterInstance.get() as instance:
                parent = instance.get_run_by_id(failed.run_id)
                assert parent.remote_job_origin is not None, "an execute_in_process run has no origin"
                assert parent.remote_job_origin.location_name == code_location_name()
                with WorkspaceProcessContext(instance, WorkspaceFileTarget([str(WORKSPACE_FILE)])) as workspace:
                    request = workspace.create_request_context()
                    location = request.get_code_location(parent.remote_job_origin.location_name)
                    remote_job = location.get_repository(parent.remote_job_origin.repository_origin.repository_name
                                                         ).get_full_job(parent.job_name)
                    assert remote_job.get_remote_origin().get_id() == parent.remote_job_origin.get_id()
                    rerun = instance.create_reexecuted_run(  # the UI's "Re-execute from failure"
                        request_context=request, parent_run=parent, code_location=location, remote_job=remote_job,
                        strategy=ReexecutionStrategy.FROM_FAILURE, use_parent_run_tags=True,
                    )
                    instance.submit_run(rerun.run_id, request)  # queued (QueuedRunCoordinator) ...
                    assert instance.get_run_by_id(rerun.run_id).status.value == "QUEUED"
                    instance.launch_run(rerun.run_id, request)  # ... and launched, as the daemon under `dagster dev` does
                    finished = _wait_for(instance, rerun.run_id)
                assert finished.status.value == "SUCCESS", finished.status
                assert finished.parent_run_id == parent.run_id and finished.root_run_id == parent.run_id
                assert finished.remote_job_origin.get_id() == parent.remote_job_origin.get_id()
        finally:
            stop_dev_server(settings.services_dir)



def test_a_second_home_in_the_same_process_gets_its_own_resources(tmp_path: Path) -> None:
    """Dagster caches the last job definition per (module, factory, job name): a run for another MEDLLM_HOME in the
    same process must not reuse the first home's resources (seen in CI: an ingest run reached the Vault of the
    previous test's home)."""
    from medllm_pipelines.defs import keys
    from medllm_pipelines.runner import reconstructable_job

    token_files = []
    for name in ("first", "second"):
        with scoped_env({"MEDLLM_HOME": str(tmp_path / name)}):
            job = reconstructable_job(keys.INGEST_JOB).get_definition()
            token_files.append(job.resource_defs["vault"].config_schema.default_value["token_file"])
    assert token_files[0].startswith(str(tmp_path / "first")), token_files
    assert token_files[1].startswith(str(tmp_path / "second")), token_files
