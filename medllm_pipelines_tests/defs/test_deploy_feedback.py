"""deploy/clinical_feedback in process: the service's encrypted feedback documents (written with the same Vault keys)
become a warehouse table without comment text, metadata with the retraining signals, a warning check, and one
retrain_job request per evidence."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from dagster import (
    AssetCheckSeverity,
    DagsterInstance,
    DagsterRun,
    DagsterRunStatus,
    EnvVar,
    SensorResult,
    SkipReason,
    build_sensor_context,
    materialize,
    serialize_value,
)

from medllm_pipelines.defs import keys
from medllm_pipelines.defs.deploy.assets import clinical_feedback
from medllm_pipelines.defs.deploy.sensors import retrain_on_feedback
from medllm_pipelines.defs.keys import warehouse_location
from medllm_pipelines.defs.resources import build_resources
from medllm_pipelines.lib.common.warehouse import Warehouse
from medllm_pipelines.lib.scenarios.feedback_table import FEEDBACK_COLUMNS, FEEDBACK_KIND
from medllm_pipelines.lib.scenarios.store import DocumentStore
from medllm_pipelines.resources.serving_store import ServingStoreResource
from medllm_pipelines.resources.warehouse import WarehouseResource
from medllm_pipelines.settings import load_settings

PLANTED_COMMENT = "Spoke with Mr Bartholomew Quennell-Sharpe, NHS 943 476 5919, he declined metformin"


def feedback_document(agreement: str, *, version: str = "3", comment: str | None = None,
                      true_outcome: int | None = None) -> dict[str, Any]:
    """What ``POST /v1/feedback`` stores for a diagnosis result it still had cached."""
    return {"scenario": "diagnosis", "result_id": "c0ffee" * 10, "agreement": agreement,
            "true_outcome": true_outcome, "comment": comment, "recorded_by_role": "clinician",
            "result": {"probability": 0.72, "threshold": 0.5, "features": {"hba1c": 7.94},
                       "model": {"name": "t2d_risk", "version": version, "alias": "champion"}}}


class Deployment:
    """A throw-away home: the service's store file, the warehouse and a Dagster instance."""

    def __init__(self, base: Path, vault_resource: Any, instance: DagsterInstance) -> None:
        self.store_url = f"sqlite:///{base / 'serving' / 'store.sqlite'}"
        self.resources = {
            "serving_store": ServingStoreResource(store_url=self.store_url, vault=vault_resource),
            "warehouse": WarehouseResource(url=f"duckdb:///{base / 'warehouse.duckdb'}"),
        }
        self.instance = instance

    def record(self, transit_service: Any, documents: list[dict[str, Any]]) -> None:
        """Store feedback as the service does: its own DocumentStore on the same URL and Vault data key."""
        Path(self.store_url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        store = DocumentStore(self.store_url, transit_service)
        try:
            for document in documents:
                store.create(FEEDBACK_KIND, document, author="dr-ward")
        finally:
            store.close()

    def materialise(self) -> Any:
        return materialize([clinical_feedback], resources=self.resources, instance=self.instance)

    def table(self) -> Any:
        return Warehouse(self.resources["warehouse"].url).read_table(*warehouse_location(keys.CLINICAL_FEEDBACK))

    def tick(self, cursor: str | None = None) -> Any:
        return retrain_on_feedback(build_sensor_context(instance=self.instance, cursor=cursor))


@pytest.fixture
def deployment(tmp_path: Path, vault_resource: Any) -> Iterator[Deployment]:
    with DagsterInstance.ephemeral() as instance:
        yield Deployment(tmp_path, vault_resource, instance)


def _metadata(result: Any) -> dict[str, Any]:
    (materialization,) = [e.event_specific_data.materialization for e in result.get_asset_materialization_events()]
    return {k: v.value for k, v in materialization.metadata.items()}


def test_feedback_becomes_a_table_without_comment_text_and_recommends_retraining(
        deployment: Deployment, transit_service: Any) -> None:
    deployment.record(transit_service, [
        *(feedback_document("disagree", comment=PLANTED_COMMENT if i == 0 else None) for i in range(25)),
        *(feedback_document("agree", version="4", true_outcome=1) for _ in range(3)),
        {"scenario": "triage", "result_id": "0" * 26, "agreement": "unsure", "true_outcome": "cardiology",
         "comment": PLANTED_COMMENT, "recorded_by_role": "nurse", "result": None},
    ])
    result = deployment.materialise()
    assert result.success

    table = deployment.table()
    assert list(table.columns) == list(FEEDBACK_COLUMNS) and len(table) == 29
    cells = "\x00".join(table.astype(str).to_numpy().ravel())
    for withheld in ("Quennell", "943 476 5919", "metformin", "7.94", "c0ffee", "dr-ward"):
        assert withheld not in cells, f"{withheld!r} reached the warehouse table"
    assert table.groupby("model_version", dropna=False).size().to_dict().get("3") == 25

    metadata = _metadata(result)
    assert metadata["dagster/row_count"] == 29 and metadata["comments_withheld"] == 2
    assert metadata["feedback_by_scenario"] == {"diagnosis": 28, "triage": 1}
    assert metadata["agreement_rate"] == pytest.approx(3 / 28)
    assert metadata["retraining_recommended"] == ["t2d_risk v3 (diagnosis)"]
    assert metadata["feedback_policy_version"] and metadata["service_store_found"] is True
    signals = {s["model_version"]: s for s in metadata["retraining_signals"]}
    assert signals["3"]["disagree"] == 25 and signals["3"]["reasons"] == ["disagreement_above_threshold"]
    assert not signals["4"]["retraining_recommended"]
    events = serialize_value([e for run in deployment.instance.get_runs()
                              for e in deployment.instance.all_logs(run.run_id)])
    assert "Quennell" not in events and "metformin" not in events  # nor in metadata, check results or logs

    (check,) = result.get_asset_check_evaluations()
    assert check.check_name == keys.CHECK_RETRAINING_TRIGGER
    assert not check.passed and check.severity == AssetCheckSeverity.WARN
    assert "t2d_risk v3" in check.description and "v4" not in check.description

    first = deployment.tick()
    assert isinstance(first, SensorResult) and len(first.run_requests) == 1
    (request,) = first.run_requests
    assert request.run_key == "retrain:diagnosis:t2d_risk:3:25"
    assert request.tags["medllm/retrain_for"] == "t2d_risk v3 (diagnosis)"
    assert isinstance(deployment.tick(first.cursor), SkipReason), "the same evidence must not launch twice"

    deployment.record(transit_service, [feedback_document("disagree")])  # new evidence: a new key
    deployment.materialise()
    running = deployment.instance.add_run(DagsterRun(keys.RETRAIN_JOB, status=DagsterRunStatus.STARTED))
    assert isinstance(deployment.tick(first.cursor), SkipReason), "no second retrain while one is unfinished"
    deployment.instance.report_run_failed(running)
    second = deployment.tick(first.cursor)
    assert isinstance(second, SensorResult)
    assert [r.run_key for r in second.run_requests] == ["retrain:diagnosis:t2d_risk:3:26"]


def test_no_service_store_means_an_empty_table_a_passing_check_and_no_run(deployment: Deployment) -> None:
    result = deployment.materialise()
    assert result.success
    table = deployment.table()
    assert table.empty and list(table.columns) == list(FEEDBACK_COLUMNS)
    metadata = _metadata(result)
    assert metadata["dagster/row_count"] == 0 and metadata["service_store_found"] is False
    assert metadata["retraining_signals"] == [] and metadata["retraining_recommended"] == []
    (check,) = result.get_asset_check_evaluations()
    assert check.passed
    assert not Path(deployment.store_url.removeprefix("sqlite:///")).exists(), "reading must not create the store"

    tick = deployment.tick()
    assert isinstance(tick, SensorResult) and not tick.run_requests


def test_the_sensor_waits_for_a_first_materialisation(deployment: Deployment) -> None:
    assert isinstance(deployment.tick(), SkipReason)


def test_the_pipelines_read_the_store_the_service_writes(tmp_path: Path) -> None:
    settings = load_settings({"MEDLLM_HOME": str(tmp_path)})
    default = build_resources(settings, environ={})["serving_store"]
    assert default.store_url == f"sqlite:///{settings.serving_dir / 'store.sqlite'}"
    production = build_resources(settings, environ={"MEDLLM_SERVE_STORE_URL": "postgresql+psycopg2://u:secret@db/s"})
    assert isinstance(production["serving_store"].store_url, EnvVar)  # the password stays out of the UI
    assert "secret" not in repr(production["serving_store"])
