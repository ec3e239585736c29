"""Exactly once: a run that dies halfway, rerun, leaves no duplicate and no gap (row D3).

The crash is simulated by an exception at the chosen point: what was written
before it is durable, nothing after it happens — the state a kill leaves.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from medllm_pipelines.defs import keys
from medllm_pipelines.lib.common.warehouse import Warehouse
from medllm_pipelines_tests.conftest_lifecycle import scoped_env

pytestmark = pytest.mark.slow

PARTITION = "hzsf"


class SimulatedCrash(RuntimeError):
    pass


@pytest.fixture
def home(tmp_path: Path, small_hospital):
    from medllm_pipelines.lib.services.openbao import start_dev_server, stop_dev_server
    from medllm_pipelines.settings import load_settings, prepare_home

    home = tmp_path / "home"
    with scoped_env({"MEDLLM_HOME": str(home), "DAGSTER_HOME": str(home / "dagster_home")}):
        settings = load_settings()
        prepare_home(settings)
        start_dev_server(settings.services_dir, port=0)
        small_hospital.copy_landing_to(settings.landing_dir)
        try:
            yield settings
        finally:
            stop_dev_server(settings.services_dir)


def _ingest(settings):
    from medllm_pipelines.runner import run_lifecycle

    return run_lifecycle(settings, job_name=keys.INGEST_JOB, partitions=[PARTITION], log_level="ERROR")


def _ledger(settings):
    return Warehouse(settings.warehouse_url).read_table(keys.AUDIT_SCHEMA, keys.FILE_LEDGER_TABLE)


def _landed(settings) -> list[Path]:
    return [p for p in (settings.landing_dir / PARTITION).rglob("*") if p.is_file()]


def test_run_killed_while_encrypting_then_rerun(home, monkeypatch) -> None:
    from medllm_pipelines.lib.security.raw_zone import RawZone

    delivered = _landed(home)
    files_before = len(delivered)
    contents = {p: p.read_bytes() for p in delivered}
    real_put = RawZone.put_object
    calls = {"n": 0}

    def dies_halfway(self, sha256, content):
        calls["n"] += 1
        if calls["n"] > files_before // 2:
            raise SimulatedCrash("killed while encrypting")
        return real_put(self, sha256, content)

    monkeypatch.setattr(RawZone, "put_object", dies_halfway)
    assert not _ingest(home).success
    monkeypatch.setattr(RawZone, "put_object", real_put)
    assert len(_landed(home)) == files_before, "nothing is consumed before the ledger holds it"

    rerun = _ingest(home)
    assert rerun.success
    ledger = _ledger(home)
    assert ledger["content_sha256"].is_unique, "no duplicate"
    distinct = {hashlib.sha256(data).hexdigest() for data in contents.values()}
    assert set(ledger["content_sha256"]) == distinct, "no gap"
    assert _landed(home) == []


def test_run_killed_after_the_ledger_before_consuming_then_rerun(home, monkeypatch) -> None:
    import medllm_pipelines.defs.ingest.assets as ingest_assets

    def killed(*args, **kwargs):
        raise SimulatedCrash("killed after the ledger append")

    monkeypatch.setattr(ingest_assets, "consume", killed)
    assert not _ingest(home).success
    monkeypatch.undo()
    ledger_after_kill = _ledger(home)
    rerun = _ingest(home)
    assert rerun.success
    meta = next(rerun.materializations(keys.LANDED_FILES))
    assert meta["files_stored"] == 0 and meta["duplicate_deliveries"] == meta["files_in"] > 0
    assert len(_ledger(home)) == len(ledger_after_kill)
    assert _landed(home) == []
