"""Production mode on real local servers: Dagster storage (dagster-postgres), the
warehouse and MLflow's backend all on PostgreSQL; the same code path."""

from __future__ import annotations

import pytest

from medllm_pipelines.defs import keys
from medllm_pipelines.lib.common.warehouse import Warehouse
from medllm_pipelines_tests.conftest_lifecycle import scoped_env

pytestmark = [pytest.mark.slow, pytest.mark.postgres]


def test_lifecycle_on_postgres(postgres_run, postgres_databases) -> None:
    from dagster import DagsterInstance
    from mlflow.tracking import MlflowClient

    assert postgres_run.settings.mode == "production"
    assert postgres_run.result.success
    # every data check passes; the promotion gates judge the models (tests/defs/test_evaluation_assets.py)
    assert all(e.passed for e in postgres_run.check_evaluations() if e.check_name != keys.CHECK_PROMOTION_GATE)

    warehouse = Warehouse(postgres_databases["warehouse"])
    tables = set(warehouse.list_tables())
    assert {("deidentify", "patients"), ("curate", "diabetes_splits"), ("audit", "file_ledger")} <= tables
    assert len(warehouse.read_table("label", "diabetes_labels")) > 0
    warehouse.dispose()

    meta = postgres_run.materialization(keys.DIABETES_MODEL)
    run = MlflowClient(tracking_uri=postgres_databases["mlflow"]).get_run(meta["mlflow_run_id"])
    assert run.info.status == "FINISHED"

    with scoped_env(postgres_run.env):  # dagster.yaml reads the storage URL from the environment
        instance = DagsterInstance.from_config(str(postgres_run.settings.dagster_home))
        try:
            assert type(instance.run_storage).__name__ == "PostgresRunStorage"
            stored = instance.get_run_by_id(postgres_run.result.run_id)
            assert stored is not None and stored.is_success
        finally:
            instance.dispose()
