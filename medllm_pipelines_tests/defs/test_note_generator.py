"""The note generator materialised through Dagster (issue 11 item 2, text generation; scenario 6.2.2): recorded
visits ingested, transcript and signed record de-identified together, paired, split by patient, the generator
trained, tracked in MLflow and registered as ``note_generator`` with alias challenger (or, below min_rows, not
trained with the reason).

One materialisation of everything upstream of train/note_generator, in its own MEDLLM_HOME, read by every test.
"""

from __future__ import annotations

import json

import pytest

from medllm_pipelines.defs import keys
from medllm_pipelines.defs.keys import warehouse_location
from medllm_pipelines_tests.conftest_lifecycle import run_lifecycle_in, stop_services, through

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def note_run(tmp_path_factory, small_hospital):
    home = tmp_path_factory.mktemp("note_home")
    try:
        yield run_lifecycle_in(home, small_hospital, bad_input=False, selection=through(keys.NOTE_GENERATOR),
                               log_level="WARNING")
    finally:
        stop_services(home)


def _jsonl(path):
    return [json.loads(line) for line in path.read_text("utf-8").splitlines() if line.strip()]


def _table(run, key):
    from medllm_pipelines.lib.common.warehouse import Warehouse

    return Warehouse(run.settings.warehouse_url).read_table(*warehouse_location(key))


def test_every_recorded_visit_is_ingested_released_without_identifiers_and_paired(note_run, small_hospital) -> None:
    assert note_run.result.success, note_run.result.failed_checks()
    delivered = sum(c.get("consultations", 0) for c in small_hospital.manifest.counts.values())
    assert note_run.partition_total(keys.RAW_CONSULTATIONS, "dagster/row_count") == delivered > 0
    released = note_run.materialization(keys.DEID_CONSULTATIONS)
    assert released["reconciled"] is True and released["records_in"] == delivered
    assert released["spans_replaced_by_type"]["NAME"] > 0  # the names patients said were found and replaced
    table = _table(note_run, keys.DEID_CONSULTATIONS)
    said = [row for row in _jsonl(small_hospital.root / "_truth" / "consultations.jsonl") if row["said_name"]]
    names = {n for i in _jsonl(small_hospital.identities) for n in (i.get("name_zh"), i.get("name_en")) if n}
    text = "\n".join(table["text"]) + "\n".join(table["record_text"])
    assert said and not [n for n in names if n in text]
    pairs = note_run.materialization(keys.NOTE_PAIRS)
    assert pairs["reconciled"] is True and pairs["records_in"] == released["records_out"]
    assert pairs["removed[record_without_note_fields]"] == 0  # the release kept every signed record readable
    splits = _table(note_run, keys.NOTE_SPLITS)
    for column in ("patient_pseudonym", "near_duplicate_key", "text_id"):
        assert (splits.groupby(column)["split"].nunique() == 1).all(), column


def test_the_generator_is_trained_tracked_and_registered_or_says_why_not(note_run) -> None:
    from mlflow.tracking import MlflowClient

    meta = note_run.materialization(keys.NOTE_GENERATOR)
    if not meta["trained"]:  # below min_rows at the small hospital: the reason is given
        assert meta.get("reason") or meta.get("needs_reason"), meta
        return
    assert meta["n_train"] > meta["n_test"] > 0
    assert 0.0 <= meta["test_metrics"]["test_field_f1"] <= 1.0, meta["test_metrics"]
    assert "baseline_test_field_f1" in meta["baseline_metrics"]
    uri = note_run.settings.mlflow_tracking_uri
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    run = client.get_run(meta["mlflow_run_id"])
    assert run.info.status == "FINISHED" and "test_field_f1" in run.data.metrics
    version = client.get_model_version_by_alias("note_generator", "challenger")
    assert version.run_id == meta["mlflow_run_id"] and version.tags.get("family") == "causal_lm"
    import mlflow.pyfunc
    import pandas as pd

    mlflow.set_tracking_uri(uri)
    served = mlflow.pyfunc.load_model(meta["mlflow_model_uri"])
    out = served.predict(pd.DataFrame({"dialogue": ["Doctor: What brings you in?\nPatient: A cough for 3 days."],
                                       "language": ["en"]}))
    assert isinstance(out["note"].iloc[0], str)
