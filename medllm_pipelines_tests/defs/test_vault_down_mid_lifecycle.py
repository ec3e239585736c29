"""Vault lost between ingestion and the downstream stages: the run fails closed, says why, and leaks nothing.

The raw zone is written while Vault is up (ingest_job); then the OpenBao
server stops and the downstream job runs. Every downstream stage needs Vault
to unwrap the raw zone's data keys, so the run must fail at its first step
with an error that names Vault, write no de-identified table, and leave no
identifier in plaintext anywhere under MEDLLM_HOME. With Vault back, the same
downstream job reads the raw zone and de-identifies again: nothing was lost,
and the audit log (whose appends need Vault for their keyed head) was not
left broken by the outage.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from medllm_pipelines.defs import keys
from medllm_pipelines_tests.conftest_lifecycle import scoped_env

pytestmark = pytest.mark.slow

PATIENTS = 30


def _failure_messages(result) -> list[str]:
    return [str(e.event_specific_data.error) for e in result.all_events if e.event_type_value == "STEP_FAILURE"]


def test_vault_down_between_stages_fails_closed_and_recovers(tmp_path: Path) -> None:
    from medllm_pipelines.cli import record_demo_approval
    from medllm_pipelines.lib.common.warehouse import Warehouse
    from medllm_pipelines.lib.security.home_scan import scan_home
    from medllm_pipelines.lib.security.openbao import (
        start_local_server,
        stop_dev_server,
    )
    from medllm_pipelines.lib.synth import generate_hospital
    from medllm_pipelines.runner import run_lifecycle
    from medllm_pipelines.settings import load_settings, prepare_home

    hospital = tmp_path / "hospital"
    generate_hospital(hospital, patients=PATIENTS, seed=5, write_identities=True)
    identities = hospital / "_truth" / "identities.jsonl"
    home = tmp_path / "home"
    with scoped_env({"MEDLLM_HOME": str(home)}):
        settings = load_settings()
        prepare_home(settings)
        os.environ["DAGSTER_HOME"] = str(settings.dagster_home)
        start_local_server(settings.services_dir, port=0)
        try:
            import shutil

            shutil.copytree(hospital, settings.landing_dir, ignore=shutil.ignore_patterns("_truth"), dirs_exist_ok=True)
            record_demo_approval(settings)
            ingested = run_lifecycle(settings, job_name=keys.INGEST_JOB, log_level="WARNING")
            assert ingested.success

            stop_dev_server(settings.services_dir)  # Vault is gone mid-lifecycle
            downstream = run_lifecycle(settings, job_name=keys.DOWNSTREAM_JOB, log_level="WARNING")
            assert not downstream.success
            messages = _failure_messages(downstream)
            assert messages and all("Vault" in m or "OpenBao" in m for m in messages), messages
            warehouse = Warehouse(settings.warehouse_url)
            try:
                assert not warehouse.table_exists(*keys.DEID_PATIENTS.path)  # nothing crossed the boundary
            finally:
                warehouse.dispose()
            assert scan_home(settings, identities) == []  # and nothing was written in plaintext

            start_local_server(settings.services_dir, port=0)  # Vault back: the same keys, nothing lost
            recovered = run_lifecycle(settings, job_name=keys.DOWNSTREAM_JOB, log_level="WARNING")
            # The raw zone reads again and the audit log accepts entries again (an outage never leaves an entry
            # without its head). Training may still refuse this tiny hospital (too few labelled persons):
            # that is the model spec speaking, not the outage.
            later = [m for m in _failure_messages(recovered) if "Vault" in m or "OpenBao" in m or "audit" in m]
            assert later == []
            assert next(recovered.materializations(keys.DEID_PATIENTS))["records_out"] > 0
            assert next(recovered.materializations(keys.PSEUDONYM_MAP))["persons"] > 0
        finally:
            stop_dev_server(settings.services_dir)
