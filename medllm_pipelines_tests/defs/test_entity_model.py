"""The clinical_entities tagger materialised through Dagster (issue 11 item 2, entity recognition): accepted
SYMPTOM/DISEASE/DRUG spans realigned to the de-identified dialogues, split by patient, the token tagger trained,
tracked in MLflow and registered as ``clinical_entities`` with alias challenger (or, below min_rows, not trained
with the reason).

One materialisation of everything upstream of train/entity_model, in its own MEDLLM_HOME, read by every test.
"""

from __future__ import annotations

import json

import pytest

from medllm_pipelines.defs import keys
from medllm_pipelines.defs.keys import warehouse_location
from medllm_pipelines_tests.conftest_lifecycle import run_lifecycle_in, stop_services, through

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def entity_run(tmp_path_factory, small_hospital):
    home = tmp_path_factory.mktemp("entity_home")
    try:
        yield run_lifecycle_in(home, small_hospital, bad_input=False, selection=through(keys.ENTITY_MODEL),
                               log_level="WARNING")
    finally:
        stop_services(home)


def _table(run, key):
    from medllm_pipelines.lib.common.warehouse import Warehouse

    return Warehouse(run.settings.warehouse_url).read_table(*warehouse_location(key))


def test_spans_are_realigned_to_the_deidentified_text_and_reconcile(entity_run) -> None:
    assert entity_run.result.success, entity_run.result.failed_checks()
    meta = entity_run.materialization(keys.ENTITY_DATASET)
    assert meta["reconciled"] is True and meta["spans_out"] > 0
    assert meta["dropped[identifier_type_never_a_label]"] > 0  # PERSON/PHONE spans are counted, never labels
    dataset = _table(entity_run, keys.ENTITY_DATASET)
    for text, spans in zip(dataset["text"], dataset["entities_json"], strict=True):
        for start, end, kind in json.loads(spans):
            assert kind in {"SYMPTOM", "DISEASE", "DRUG"} and 0 <= start < end <= len(text)
    splits = _table(entity_run, keys.ENTITY_SPLITS)
    for column in ("patient_pseudonym", "near_duplicate_key", "text_id"):
        assert (splits.groupby(column)["split"].nunique() == 1).all(), column


def test_the_tagger_is_trained_tracked_and_registered_or_says_why_not(entity_run) -> None:
    from mlflow.tracking import MlflowClient

    meta = entity_run.materialization(keys.ENTITY_MODEL)
    if not meta["trained"]:  # below min_rows at the small hospital: the reason is given
        assert meta.get("reason") or meta.get("needs_reason"), meta
        return
    # ~25 training dialogues at the small hospital: too few to generalise (exact-span F1 ~0.05 there). The F1 floor
    # is checked where there is data: lib/train/test_entities.py (>= 0.9) and the demo hospital (docs/models_text.md).
    assert 0.0 <= meta["test_metrics"]["test_span_f1"] <= 1.0, meta["test_metrics"]
    assert meta["n_train"] > meta["n_test"] > 0 and meta["dictionary_entries"] > 0
    assert {"baseline_test_span_f1", "baseline_test_span_f1_SYMPTOM"} <= set(meta["baseline_metrics"])
    uri = entity_run.settings.mlflow_tracking_uri
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    run = client.get_run(meta["mlflow_run_id"])
    assert run.info.status == "FINISHED" and "test_span_f1" in run.data.metrics
    assert client.get_model_version_by_alias("clinical_entities", "challenger").run_id == meta["mlflow_run_id"]
    train_loss = [m.value for m in client.get_metric_history(meta["mlflow_run_id"], "train_loss")]
    assert train_loss[-1] < 0.9 * train_loss[0], train_loss  # it learnt
    import mlflow.pyfunc
    import pandas as pd

    mlflow.set_tracking_uri(uri)
    served = mlflow.pyfunc.load_model(meta["mlflow_model_uri"])
    out = served.predict(pd.DataFrame({"text": ["咳嗽三天了，在吃布洛芬。", "I have a cough."]}))
    for found in out["entities"]:
        assert all({"start", "end", "type", "text"} <= set(e) for e in json.loads(found))
