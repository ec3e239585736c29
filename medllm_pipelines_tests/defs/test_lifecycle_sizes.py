"""Consistent at every size: the data stages succeed, with every dbt test passing, for hospitals of 1, 20
and 200 patients and for a landing zone with nothing in it (run twice). Larger hospitals are the embedded
lifecycle test's (its session fixture) and benchmarks/bench_lifecycle.py's (1,000 patients). Below a model
spec's min_rows the model is not trained, and says why.

One whole lifecycle per size, no planted bad input (train and evaluate stop at once when the spec's data
needs are unmet, so a data-stages-only selection would save little). About 5 minutes on 2 shared cores.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from medllm_pipelines.defs import keys
from medllm_pipelines.lib.common.warehouse import Warehouse
from medllm_pipelines.lib.deidentify.risk import K_ANONYMITY_SUPPRESSED
from medllm_pipelines_tests.conftest_lifecycle import (
    Hospital,
    LifecycleRun,
    run_lifecycle_in,
    scoped_env,
    stop_services,
)

pytestmark = pytest.mark.slow

# 200 patients, seed 23: k-anonymity suppresses registrations of deidentify/patients (the reported failure)
SIZES = {"one": (1, 5), "twenty": (20, 7), "two_hundred": (200, 23)}
PERSON_KEYED = (keys.DEID_OBSERVATIONS, keys.DEID_CONDITIONS, keys.CONSENT_REGISTRY)
TRAINING = {keys.DIABETES_MODEL, keys.DIABETES_EVALUATION}


@pytest.fixture(scope="module", params=list(SIZES))
def sized_run(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LifecycleRun]:
    from medllm_pipelines.lib.synth import generate_hospital

    patients, seed = SIZES[request.param]
    root = tmp_path_factory.mktemp(f"hospital_{request.param}")
    hospital = Hospital(root, generate_hospital(root, patients=patients, seed=seed, write_identities=True))
    home = tmp_path_factory.mktemp(f"home_{request.param}")
    try:
        yield run_lifecycle_in(home, hospital, bad_input=False)
    finally:
        stop_services(home)


@pytest.fixture(scope="module")
def empty_runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LifecycleRun, object]]:
    """A fresh home whose landing zone holds nothing; then the same home run again, still with nothing new."""
    from medllm_pipelines.runner import run_lifecycle

    home = tmp_path_factory.mktemp("home_empty")
    try:
        first = run_lifecycle_in(home, None, bad_input=False)
        with scoped_env({"MEDLLM_HOME": str(home), "DAGSTER_HOME": str(first.settings.dagster_home)}):
            second = run_lifecycle(first.settings, log_level="WARNING")
        yield first, second
    finally:
        stop_services(home)


def _materialized(result) -> set:
    return {e.event_specific_data.materialization.asset_key for e in result.get_asset_materialization_events()}


def _assert_every_stage_materialised(run: LifecycleRun, result) -> None:
    assert result.success, [
        (e.step_key, e.event_specific_data.error.message[:300]) for r in result.runs for e in r.all_events
        if e.event_type_value == "STEP_FAILURE"
    ]
    missing = set(run.defs.resolve_asset_graph().get_all_asset_keys()) - _materialized(result)
    assert missing == set(), sorted(k.to_user_string() for k in missing)  # dbt models: their tests passed too
    failed = set(result.failed_checks()) - {f"{keys.DIABETES_MODEL.to_user_string()}:{keys.CHECK_MODEL_TRAINED}"}
    assert failed == set()


def _assert_not_trained_with_reason(result) -> None:
    model = next(result.materializations(keys.DIABETES_MODEL))
    assert model["trained"] is False
    assert model["reason"] == f"spec t2d_risk needs {model['min_rows']} rows, has {model['rows_available']}"
    assert f"{keys.DIABETES_MODEL.to_user_string()}:{keys.CHECK_MODEL_TRAINED}" in result.failed_checks()
    assert next(result.materializations(keys.DIABETES_EVALUATION))["evaluated"] is False


def test_every_data_stage_succeeds_at_this_size(sized_run: LifecycleRun) -> None:
    _assert_every_stage_materialised(sized_run, sized_run.result)
    model = next(sized_run.result.materializations(keys.DIABETES_MODEL))
    splits = next(sized_run.result.materializations(keys.DIABETES_SPLITS))
    if model["trained"]:
        assert splits["data_needs_met"] is True and model["mlflow_run_id"]
    else:
        _assert_not_trained_with_reason(sized_run.result)


def test_a_withheld_person_leaves_every_person_keyed_table(sized_run: LifecycleRun) -> None:
    """No de-identified row points at a person the released patients table lacks, and each table counts
    what it withheld under the rule that withheld the person."""
    patients_meta = sized_run.materialization(keys.DEID_PATIENTS)
    warehouse = Warehouse(sized_run.settings.warehouse_url)
    try:
        released = set(warehouse.read_table("deidentify", "patients")["patient_pseudonym"])
        for key in PERSON_KEYED:
            frame = warehouse.read_table(*key.path)
            assert set(frame["patient_pseudonym"]) <= released, key.to_user_string()
            meta = sized_run.materialization(key)
            assert f"removed[{K_ANONYMITY_SUPPRESSED}]" in meta and meta["reconciled"] is True
            if patients_meta[f"persons_withheld[{K_ANONYMITY_SUPPRESSED}]"] == 0:
                assert meta[f"removed[{K_ANONYMITY_SUPPRESSED}]"] == 0
    finally:
        warehouse.dispose()
    if patients_meta["records_in"] >= SIZES["two_hundred"][0]:
        assert patients_meta[f"removed[{K_ANONYMITY_SUPPRESSED}]"] > 0  # the case that failed before
        assert sized_run.materialization(keys.DEID_OBSERVATIONS)[f"removed[{K_ANONYMITY_SUPPRESSED}]"] > 0


def test_an_empty_landing_zone_gives_empty_well_typed_tables_twice(empty_runs) -> None:
    first, second = empty_runs
    for result in (first.result, second):
        _assert_every_stage_materialised(first, result)
        _assert_not_trained_with_reason(result)
    warehouse = Warehouse(first.settings.warehouse_url)
    try:
        for schema, table, column in (("deidentify", "patients", "age_band"), ("deidentify", "observations", "value"),
                                      ("label", "diabetes_labels", "label"), ("curate", "diabetes_splits", "split"),
                                      ("curate", "patient_features", "sex")):
            frame = warehouse.read_table(schema, table)
            assert frame.empty and column in frame.columns, f"{schema}.{table}"
    finally:
        warehouse.dispose()
    clean = next(second.materializations(keys.CLEAN_PATIENTS))
    assert clean["records_in"] == clean["records_out"] == 0 and clean["reconciled"] is True


def test_medllm_run_says_why_no_model_was_trained(empty_runs, capsys: pytest.CaptureFixture[str]) -> None:
    from medllm_pipelines.cli import _summarise

    _, second = empty_runs
    assert _summarise(second) == 0  # the data stages succeeded
    out = capsys.readouterr().out
    assert "model NOT trained: spec t2d_risk needs" in out and "has 0" in out
    assert "failed check: train/diabetes_model:model_trained" in out
