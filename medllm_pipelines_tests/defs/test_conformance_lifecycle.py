"""The whole lifecycle over files other projects publish (../shared/conformance/): it succeeds, and
every file and record is accounted for at every stage.

The corpus is delivered as a sender would deliver it (``medllm stage-corpus``: one source per folder,
each file into the feed its content says) beside the synthetic hospital in the session's PostgreSQL
lifecycle run (``postgres_run`` in conftest_lifecycle.py), and run through Dagster exactly as
``medllm run`` runs it: data we did not write reaches every stage it feeds, training included, on the
production backends, without a whole run of its own. Per-file expectations of each parser are in
``lib/ingest/test_*_conformance.py``; this test is about the pipeline as a whole on data we did not write.
"""

from __future__ import annotations

from typing import Any

import pytest

from medllm_pipelines.defs import keys
from medllm_pipelines_tests.conftest_lifecycle import CONFORMANCE, LifecycleRun

pytestmark = [
    pytest.mark.slow,
    pytest.mark.postgres,
    pytest.mark.skipif(not CONFORMANCE.is_dir(), reason="../shared/conformance is not present"),
]

# Files that must not be ingested, and why (the corpus README names the malformed ones).
NOT_INGESTED = {
    "hl7v2/python-hl7_sample_bad_batch_MALFORMED.hl7",
    "dicom/pdd_liver_deflate.dcm",  # a transfer syntax UID pydicom does not know: quarantined, not guessed
    "fhir/spec-examples-r4/package.json",  # the examples package's npm manifest: not FHIR
}


def _file(run: LifecycleRun, relpath: str) -> dict[str, Any]:
    digest = run.corpus.hash_of[relpath]
    return next(f for f in run.reconciliation()["files"] if f["content_sha256"] == digest)


def test_the_lifecycle_succeeds_on_the_corpus(postgres_run: LifecycleRun) -> None:
    assert postgres_run.corpus is not None and postgres_run.corpus.hash_of
    assert postgres_run.result.success, [
        e.message for e in postgres_run.result.all_events if e.event_type_value == "STEP_FAILURE"
    ]
    # beside the hospital the model has the rows its spec needs: every data check passes, the model's included;
    # the promotion gates judge the models (WARN: a model that misses its thresholds stops nothing) and each ran
    failed = postgres_run.result.failed_checks()
    assert [name for name in failed if not name.endswith(f":{keys.CHECK_PROMOTION_GATE}")] == []
    gates = {e.asset_key for e in postgres_run.check_evaluations() if e.check_name == keys.CHECK_PROMOTION_GATE}
    assert gates == set(keys.EVALUATIONS)
    assert postgres_run.materialization(keys.DIABETES_MODEL)["trained"] is True


def test_every_file_is_accounted_for_and_every_stage_reconciles(postgres_run: LifecycleRun) -> None:
    report = postgres_run.reconciliation()
    # exactly the files delivered (hashed before the run): the corpus's, the hospital's and the bad input
    assert {f["content_sha256"] for f in report["files"]} == set(postgres_run.delivered.values())
    assert set(postgres_run.corpus.hash_of.values()) <= set(postgres_run.delivered.values())
    assert report["files_unaccounted"] == [] and report["files_unbalanced"] == []
    assert [row["asset"] for row in report["stages"] if row["reconciled"] is False] == []


def test_all_but_the_malformed_files_are_ingested(postgres_run: LifecycleRun) -> None:
    for relpath in postgres_run.corpus.hash_of:
        entry = _file(postgres_run, relpath)
        records_out = sum(a["out"] for a in entry.get("assets", []))
        if relpath in NOT_INGESTED:
            assert records_out == 0, relpath
            held = entry.get("reason_code") or [r for a in entry["assets"] for r in a["quarantined_by_reason"]]
            assert held, f"{relpath}: not ingested, but no quarantine reason recorded"
        else:
            assert entry["outcome"] == "ingested", relpath
            removed = sum(a["removed"] for a in entry["assets"])
            assert records_out + removed > 0, f"{relpath}: nothing came out of it"


def test_patients_from_every_sender_reach_the_deidentified_tables(postgres_run: LifecycleRun) -> None:
    from medllm_pipelines.lib.common.warehouse import Warehouse

    warehouse = Warehouse(postgres_run.settings.warehouse_url)
    try:
        patients = warehouse.read_table(keys.DEIDENTIFY, "patients")
        conditions = warehouse.read_table(keys.DEIDENTIFY, "conditions")
    finally:
        warehouse.dispose()
    assert set(patients["institution"]) >= {"fhir", "hl7v2"}
    assert conditions["institution"].isin(postgres_run.corpus.codes).any(), "the corpus's own diagnoses"
