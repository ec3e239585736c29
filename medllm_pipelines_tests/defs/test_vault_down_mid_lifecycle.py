"""Vault lost between ingestion and the downstream stages: the run fails closed, says why, and leaks nothing.

The raw zone is written while Vault is up (ingest_job); then the OpenBao
server stops and the downstream job runs. Every downstream stage needs Vault
to unwrap the raw zone's data keys, so the run must fail at its first step
with an error that names Vault, write no de-identified table, and leave no
identifier in plaintext anywhere under MEDLLM_HOME. With Vault back, the
downstream assets that reach Vault run again, with what they rest on, as a
selection of the lifecycle job: every way a stage uses it (unwrapping the raw
zone's data keys, transit HMAC for pseudonyms, surrogates and UID shifts,
transit decryption of annotation files) is exercised. Left out are the
free-text branch and the run-wide leak scan, which reach Vault through the
same two resources, and the stages that read only released tables. They read
the raw zone and de-identify again: nothing was lost, and the audit log (whose
appends need Vault for their keyed head) was not left broken by the outage.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from medllm_pipelines.defs import keys
from medllm_pipelines_tests.conftest_lifecycle import materialise, scoped_env, through

pytestmark = pytest.mark.slow

PATIENTS = 30


def vault_users(defs: Any) -> Any:
    """Every downstream asset that needs Vault (directly or to read the raw zone) but the free-text branch and
    the leak scan, with what it rests on after ingestion."""
    from dagster import AssetSelection

    same_paths = {keys.PHI_TAGGER, keys.DEID_NOTES, keys.DEID_DIALOGUES, keys.PRIVACY_LEAK_SCAN}
    users = [k for a in defs.assets if {"raw_zone", "vault"} & set(a.required_resource_keys) for k in a.keys]
    return through(*[k for k in users if k not in same_paths]) - AssetSelection.groups(keys.INGEST)


def _failure_messages(result) -> list[str]:
    return [str(e.event_specific_data.error) for e in result.all_events if e.event_type_value == "STEP_FAILURE"]


def test_vault_down_between_stages_fails_closed_and_recovers(tmp_path: Path) -> None:
    from medllm_pipelines.cli import record_demo_approval
    from medllm_pipelines.lib.common.warehouse import Warehouse
    from medllm_pipelines.lib.security.home_scan import scan_home
    from medllm_pipelines.lib.services.openbao import (
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
            from medllm_pipelines.definitions import make_definitions

            defs = make_definitions(settings)
            recovery = vault_users(defs)
            assert {keys.CLEAN_PATIENTS, keys.PSEUDONYM_MAP, keys.DEID_IMAGES, keys.TRIAGE_ANNOTATIONS,
                    keys.EXPERT_DECISIONS} <= recovery.resolve(defs.resolve_asset_graph())
            recovered = materialise(settings, recovery)
            # The raw zone reads again and the audit log accepts entries again (an outage never leaves an entry
            # without its head). A gate may still refuse this tiny hospital's data (annotator agreement over a
            # handful of items): that is the gate speaking, not the outage.
            later = [m for m in _failure_messages(recovered) if "Vault" in m or "OpenBao" in m or "audit" in m]
            assert later == []
            assert next(recovered.materializations(keys.DEID_PATIENTS))["records_out"] > 0
            assert next(recovered.materializations(keys.PSEUDONYM_MAP))["persons"] > 0
        finally:
            stop_dev_server(settings.services_dir)
