"""The whole lifecycle, materialised in-process through Dagster on a small synthetic
hospital, against a real OpenBao dev server, DuckDB, SQLite Dagster storage and MLflow."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medllm_pipelines.defs import keys
from medllm_pipelines.lib.common.warehouse import Warehouse
from medllm_pipelines.lib.security.envelope import is_envelope
from medllm_pipelines.lib.security.home_scan import load_identity_needles, scan_home

pytestmark = pytest.mark.slow


def test_run_succeeds_with_every_check_passing(embedded_run) -> None:
    assert embedded_run.result.success
    evaluations = embedded_run.check_evaluations()
    assert evaluations, "no asset check ran"
    # every data check passes; the promotion gates judge the models (defs/test_evaluation_assets.py)
    failed = [f"{e.asset_key.to_user_string()}:{e.check_name}" for e in evaluations
              if not e.passed and e.check_name != keys.CHECK_PROMOTION_GATE]
    assert failed == []
    graph = embedded_run.defs.resolve_asset_graph()
    materialized = {e.event_specific_data.materialization.asset_key for e in embedded_run.result.get_asset_materialization_events()}
    assert materialized == set(graph.get_all_asset_keys())


def test_every_stage_reconciles(embedded_run) -> None:
    """in = out + quarantined + removed-by-rule, reported on every asset that transforms records."""
    checked = 0
    for event in embedded_run.result.get_asset_materialization_events():
        meta = {k: v.value for k, v in event.event_specific_data.materialization.metadata.items()}
        for flag in ("reconciled", "feed_reconciled"):
            if flag in meta:
                checked += 1
                assert meta[flag] is True, f"{event.event_specific_data.materialization.asset_key.to_user_string()} {flag}"
    assert checked >= 15


def test_seeded_defects_are_quarantined_with_reasons(embedded_run) -> None:
    manifest = embedded_run.hospital.manifest
    defect_types = {d["defect_type"] if isinstance(d, dict) else d.defect_type for d in _defects(manifest)}
    warehouse = Warehouse(embedded_run.settings.warehouse_url)
    quarantine = warehouse.read_table(keys.AUDIT_SCHEMA, keys.QUARANTINE_TABLE)
    reasons = set(quarantine["reason_code"])
    if "malformed_file" in defect_types:
        assert "malformed_json" in reasons
    if "missing_required_field" in defect_types or "unparseable_date" in defect_types:
        assert "invalid_resource" in reasons
    if "impossible_value" in defect_types or "wrong_unit" in defect_types:
        assert "implausible_value" in reasons
    assert quarantine["reason"].str.len().min() > 5, "every quarantined record says why"
    assert quarantine["source_object"].notna().all()


def _defects(manifest) -> list:
    if isinstance(manifest, dict):
        return manifest["defects"]
    return list(manifest.defects)


def test_evaluation_report_beats_chance_next_to_baseline(embedded_run) -> None:
    meta = embedded_run.materialization(keys.DIABETES_EVALUATION)
    report = json.loads(Path(meta["report_json"]).read_text())
    assert meta["model_roc_auc"] > 0.6
    assert meta["baseline_roc_auc"] is not None
    html = Path(meta["report_html"]).read_text()
    assert "ROC" in html and "baseline" in html.lower()
    assert report["dataset_version"] == embedded_run.materialization(keys.DIABETES_MODEL)["dataset_version"]


def test_mlflow_has_training_and_evaluation_runs(embedded_run) -> None:
    from mlflow.tracking import MlflowClient

    train_meta = embedded_run.materialization(keys.DIABETES_MODEL)
    eval_meta = embedded_run.materialization(keys.DIABETES_EVALUATION)
    client = MlflowClient(tracking_uri=embedded_run.settings.mlflow_tracking_uri)
    training = client.get_run(train_meta["mlflow_run_id"])
    assert training.data.params["dataset_version"] == train_meta["dataset_version"]
    assert training.data.tags["dagster_run_id"] == embedded_run.result.run_id
    assert len(client.get_metric_history(training.info.run_id, "val_loss")) == train_meta["epochs_run"]
    evaluation = client.get_run(eval_meta["mlflow_run_id"])
    assert evaluation.data.tags["training_run_id"] == training.info.run_id
    assert "test_roc_auc" in evaluation.data.metrics
    assert str(embedded_run.settings.home) in training.info.artifact_uri, "artifacts stay under MEDLLM_HOME, not ./mlruns"


def test_no_identifier_in_plaintext_anywhere_under_home(embedded_run) -> None:
    """Every file (raw zone, warehouse, Dagster storage and logs, MLflow store and artifacts, reports)
    and every warehouse table is searched for the synthetic patients' identifiers."""
    needles = load_identity_needles(embedded_run.hospital.identities)
    assert {"name", "resident_id", "phone", "email", "address"} <= set(needles)
    hits = scan_home(embedded_run.settings, embedded_run.hospital.identities)
    assert hits == [], [(h.location, h.identifier_kind, h.count, h.context) for h in hits]


def test_raw_zone_holds_only_ciphertext(embedded_run) -> None:
    raw = embedded_run.settings.raw_zone_dir
    blobs = [p for p in raw.rglob("*.enc")]
    assert len(blobs) > 10
    for blob in blobs:
        with blob.open("rb") as handle:
            assert is_envelope(handle.read(64)), blob.name
        assert oct(blob.stat().st_mode & 0o777) == "0o600"


def test_landing_zone_was_consumed(embedded_run) -> None:
    remaining = [p for p in embedded_run.settings.landing_dir.rglob("*") if p.is_file()]
    assert remaining == []


def test_deidentified_tables_have_pseudonyms_and_age_bands_only(embedded_run) -> None:
    warehouse = Warehouse(embedded_run.settings.warehouse_url)
    patients = warehouse.read_table("deidentify", "patients")
    assert patients["patient_pseudonym"].str.match(r"^p_[0-9a-f]{24}$").all()
    assert patients["age_band"].str.match(r"^(\d{1,2}-\d{1,2}|90\+)$").all()
    assert not {"birth_date", "name_zh", "name_en", "phone", "email", "address", "mrn", "resident_id"} & set(patients.columns)
    splits = warehouse.read_table("curate", "diabetes_splits")
    assert splits.groupby("patient_pseudonym")["split"].nunique().max() == 1


def test_a_withheld_person_leaves_every_person_keyed_table(embedded_run) -> None:
    """The consistency test_lifecycle_sizes.py asserts per size, on the whole graph at this size."""
    from medllm_pipelines_tests.conftest_lifecycle import assert_withheld_persons_leave_person_keyed_tables

    assert_withheld_persons_leave_person_keyed_tables(embedded_run)


def test_only_consented_persons_are_labelled(embedded_run) -> None:
    warehouse = Warehouse(embedded_run.settings.warehouse_url)
    labels = warehouse.read_table("label", "diabetes_labels")
    registry = warehouse.read_table("deidentify", "consent_registry").set_index("patient_pseudonym")["consent_status"]
    assert (labels["patient_pseudonym"].map(registry) == "granted").all()
    meta = embedded_run.materialization(keys.DIABETES_LABELS)
    assert sum(meta["excluded_by_consent_status"].values()) > 0


def test_rerun_with_the_same_delivery_is_idempotent(embedded_run, tmp_path: Path) -> None:
    """Deliver the same files again and rerun: nothing new is stored, tables keep their content hash."""
    before_patients = embedded_run.materialization(keys.DEID_PATIENTS)["content_sha256"]
    before_ledger = len(Warehouse(embedded_run.settings.warehouse_url).read_table(keys.AUDIT_SCHEMA, keys.FILE_LEDGER_TABLE))
    embedded_run.hospital.copy_landing_to(embedded_run.settings.landing_dir)
    again = embedded_run.rerun(job_name=keys.INGEST_JOB, log_level="INFO")
    assert again.success
    landed = list(again.materializations(keys.LANDED_FILES))
    assert landed[0]["partitions_in_run"] == again.partitions  # one run over every institution
    assert sum(m["files_stored"] for m in landed) == 0 and sum(m["files_quarantined"] for m in landed) == 0
    assert sum(m["duplicate_deliveries"] for m in landed) == sum(m["files_in"] for m in landed) > 0
    after_ledger = len(Warehouse(embedded_run.settings.warehouse_url).read_table(keys.AUDIT_SCHEMA, keys.FILE_LEDGER_TABLE))
    assert after_ledger == before_ledger
    assert before_patients  # de-identified tables were not touched by an ingest-only run


def test_bad_input_is_quarantined_and_the_run_still_succeeds(embedded_run) -> None:
    from medllm_pipelines_tests.conftest_lifecycle import BAD_INPUT_REASONS

    assert embedded_run.result.success
    quarantine = Warehouse(embedded_run.settings.warehouse_url).read_table(keys.AUDIT_SCHEMA, keys.QUARANTINE_TABLE)
    missing = BAD_INPUT_REASONS - set(quarantine["reason_code"])
    assert not missing, f"no quarantine record for {missing}"
    # the unsupported file type, the file outside any source folder, the unregistered source folder
    assert embedded_run.partition_total(keys.LANDED_FILES, "files_quarantined") == 3
    assert embedded_run.partition_total(keys.RAW_PATIENTS, "feed_files_with_quarantine") >= 4  # malformed, not FHIR, empty, GBK
    assert embedded_run.partition_total(keys.RAW_DICOM_INSTANCES, "quarantined") >= 1
    assert all(m["reconciled"] for m in embedded_run.result.materializations(keys.RAW_DICOM_INSTANCES))


def test_leak_scan_is_not_vacuous(embedded_run, tmp_path: Path) -> None:
    """Positive control: the same scan finds the identifiers in the hospital's own plaintext delivery."""
    from types import SimpleNamespace

    embedded_run.hospital.copy_landing_to(tmp_path / "delivery")
    fake_home = SimpleNamespace(home=tmp_path / "delivery", warehouse_url=f"duckdb:///{tmp_path / 'empty.duckdb'}")
    hits = scan_home(fake_home, embedded_run.hospital.identities)
    kinds = {h.identifier_kind for h in hits}
    assert {"name", "resident_id", "phone"} <= kinds


def test_daily_arrivals_partition_summarises_the_ledger(embedded_run) -> None:
    warehouse = Warehouse(embedded_run.settings.warehouse_url)
    arrivals = warehouse.read_table(keys.AUDIT_SCHEMA, "daily_arrivals")
    ledger = warehouse.read_table(keys.AUDIT_SCHEMA, keys.FILE_LEDGER_TABLE)
    assert arrivals["day"].nunique() == 1
    assert int(arrivals["files"].sum()) == len(ledger)
    quarantined = int(arrivals.loc[arrivals["status"] == "quarantined", "files"].sum())
    assert quarantined == int((ledger["status"] == "quarantined").sum())


def test_reconcile_report_accounts_for_every_stage(embedded_run) -> None:
    from medllm_pipelines.reconcile import format_report

    report = embedded_run.reconciliation()
    assets = {row["asset"] for row in report["stages"]}
    assert {"ingest/landed_files", "quality/clean_observations", "deidentify/patients", "label/diabetes_labels"} <= assets
    assert all(row["reconciled"] is not False for row in report["stages"])
    observations = next(r for r in report["stages"] if r["asset"] == "quality/clean_observations")
    per_institution = observations["by_institution"]
    assert set(per_institution) >= {"hzsf", "rvic", "jhsq"}
    assert sum(c["in"] for c in per_institution.values()) == observations["in"]
    assert {row["reason_code"] for row in report["quarantine"]} >= {"malformed_json", "unknown_source"}
    assert "quality/clean_observations" in format_report(report)


def test_dicom_is_indexed_per_study_series_and_instance(embedded_run) -> None:
    hierarchy: dict = {}
    for meta in embedded_run.result.materializations(keys.RAW_DICOM_INSTANCES):  # one per partition
        hierarchy.update(meta["dicom_hierarchy_by_institution"])
    assert set(hierarchy) >= {"hzsf", "rvic", "jhsq"}
    for counts in hierarchy.values():
        assert 0 < counts["studies"] <= counts["series"] <= counts["instances"]


def test_reconcile_accounts_for_every_landed_file(embedded_run) -> None:
    report = embedded_run.reconciliation()
    files = report["files"]
    warehouse = Warehouse(embedded_run.settings.warehouse_url)
    try:
        ledger = warehouse.read_table(keys.AUDIT_SCHEMA, keys.FILE_LEDGER_TABLE)
    finally:
        warehouse.dispose()
    assert {f["content_sha256"] for f in files} == set(ledger["content_sha256"])
    assert report["files_unaccounted"] == [] and report["files_unbalanced"] == []
    outcomes = {f["outcome"] for f in files}
    assert {"ingested", "quarantined_at_intake"} <= outcomes
    truncated = [f for f in files if f["file_kind"] == "dicom" and f["outcome"] == "ingested"
                 and any(a["quarantined_by_reason"].get("truncated_file") for a in f["assets"])]
    held = sum(m["quarantined_by_reason"].get("truncated_file", 0)
               for m in embedded_run.result.materializations(keys.RAW_DICOM_INSTANCES))
    assert len(truncated) == held >= 1  # the planted cut file (and any seeded one), each traced to its own hash
