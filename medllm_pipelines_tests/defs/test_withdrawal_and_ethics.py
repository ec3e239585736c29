"""Consent withdrawal end to end (row S5) and the ethics-approval gate on training (row E1).

Neither needs the whole graph: the part of it the model and its retraining flag rest on (ingestion of
the hospital's feeds through quality, de-identification, labelling and curation to training) is
materialised in its own MEDLLM_HOME through the lifecycle job (conftest_lifecycle.materialise); then
one labelled person withdraws (a later Consent delivered like any other feed) and the same part
materialises again. That the whole graph succeeds with withdrawn and refused consents in the data is
the embedded lifecycle run's (test_lifecycle_embedded.py).
"""

from __future__ import annotations

import datetime as dt
import json

import pytest

from medllm_pipelines.defs import keys
from medllm_pipelines.lib.common.warehouse import Warehouse
from medllm_pipelines_tests.conftest_lifecycle import run_lifecycle_in, stop_services, through

pytestmark = pytest.mark.slow

MODEL_AND_RETRAINING_FLAG = through(keys.RETRAINING_REQUIRED)


@pytest.fixture(scope="module")
def first_run(tmp_path_factory, small_hospital):
    home = tmp_path_factory.mktemp("withdrawal_home")
    try:
        yield run_lifecycle_in(home, small_hospital, bad_input=False, selection=MODEL_AND_RETRAINING_FLAG,
                               log_level="WARNING")
    finally:
        stop_services(home)


def test_the_model_was_trained_before_the_withdrawal(first_run) -> None:
    assert first_run.result.success, first_run.result.failed_checks()
    assert {keys.DIABETES_MODEL, keys.RETRAINING_REQUIRED, keys.CONSENT_REGISTRY} <= first_run.expected_keys
    materialised = {e.event_specific_data.materialization.asset_key
                    for e in first_run.result.get_asset_materialization_events()}
    assert materialised == first_run.expected_keys
    assert first_run.materialization(keys.DIABETES_MODEL)["mlflow_run_id"]


def _raw_zone(settings):
    from medllm_pipelines.lib.security.raw_zone import RawZone
    from medllm_pipelines.resources.vault import VaultResource

    return RawZone(settings.raw_zone_dir, VaultResource(token_file=str(settings.openbao_state_file)))


def _withdrawal_bundle(patient_key: str) -> bytes:
    consent = {
        "resourceType": "Consent",
        "id": f"withdrawal-{patient_key}",
        "meta": {"source": "urn:medllm:institution:hzsf"},
        "status": "inactive",
        "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "research"}]},
        "category": [{"coding": [{"system": "http://loinc.org", "code": "57016-8"}]}],
        "patient": {"reference": f"Patient/{patient_key}"},
        "dateTime": "2026-11-01T10:00:00+08:00",
        "policyRule": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "OPTOUT"}]},
        "provision": {"type": "deny"},
    }
    bundle = {"resourceType": "Bundle", "type": "collection", "entry": [{"fullUrl": f"urn:uuid:{consent['id']}", "resource": consent}]}
    return json.dumps(bundle).encode()


def test_a_withdrawal_removes_the_person_and_flags_the_model(first_run) -> None:
    from mlflow.tracking import MlflowClient

    settings = first_run.settings
    warehouse = Warehouse(settings.warehouse_url)
    labels = warehouse.read_table("label", "diabetes_labels")
    mapping = _raw_zone(settings).read_table("deidentify_pseudonym_map")
    candidates = mapping[(mapping["institution"] == "hzsf") & mapping["patient_pseudonym"].isin(labels["patient_pseudonym"])]
    person = candidates.iloc[0]
    old_model = first_run.materialization(keys.DIABETES_MODEL)

    (settings.landing_dir / "hzsf" / "fhir" / "bundles").mkdir(parents=True, exist_ok=True)
    (settings.landing_dir / "hzsf" / "fhir" / "bundles" / "withdrawal-1.json").write_bytes(_withdrawal_bundle(person.patient_key))
    rerun = first_run.rerun(selection=MODEL_AND_RETRAINING_FLAG)
    assert rerun.success, rerun.failed_checks()

    registry = warehouse.read_table("deidentify", "consent_registry").set_index("patient_pseudonym")["consent_status"]
    assert registry[person.patient_pseudonym] == "withdrawn"
    for schema, table in (("label", "diabetes_labels"), ("curate", "diabetes_features"), ("curate", "diabetes_splits")):
        assert person.patient_pseudonym not in set(warehouse.read_table(schema, table)["patient_pseudonym"]), table

    impact = next(rerun.materializations(keys.RETRAINING_REQUIRED))
    flagged = {n["model_version"]: n for n in impact["needing_retraining"]}
    assert old_model["mlflow_run_id"] in flagged
    assert flagged[old_model["mlflow_run_id"]]["withdrawn_members"] >= 1
    new_model = next(rerun.materializations(keys.DIABETES_MODEL))
    assert new_model["mlflow_run_id"] not in flagged, "the model retrained without the person is clean"
    tags = MlflowClient(tracking_uri=settings.mlflow_tracking_uri).get_run(old_model["mlflow_run_id"]).data.tags
    assert tags["medllm.needs_retraining"] == "true"


def test_training_refuses_without_a_valid_ethics_approval(first_run) -> None:
    from dagster import AssetSelection

    from medllm_pipelines.lib.security.governance import GovernanceStore

    settings = first_run.settings
    store = GovernanceStore(settings.governance_dir)
    store.revoke_approval("demo-synthetic-data", dt.date.today(), recorded_by="test: committee withdrew approval")
    refused = first_run.rerun(selection=AssetSelection.assets(keys.DIABETES_MODEL), log_level="CRITICAL")
    assert not refused.success
    failures = [
        _error_text(e.event_specific_data.error)
        for e in refused.all_events
        if e.event_type_value == "STEP_FAILURE" and e.step_key == "train__diabetes_model"
    ]
    assert failures and "approval" in failures[0] and "revoked" in failures[0]


def _error_text(error) -> str:
    """The message of a Dagster error and of every error that caused it."""
    parts = []
    while error is not None:
        parts.append(error.message)
        error = error.cause
    return " | ".join(parts)


