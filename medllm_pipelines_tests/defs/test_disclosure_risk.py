"""Disclosure risk in the asset graph: the blocking k-anonymity gate, k-anonymous released patients,
and differentially private released statistics that never overspend their budget."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from dagster import AssetsDefinition, asset, materialize

from medllm_pipelines.defs import keys
from medllm_pipelines.defs.keys import warehouse_location
from medllm_pipelines.defs.deidentify import disclosure
from medllm_pipelines.defs.resources import run_settings_resource
from medllm_pipelines.lib.deidentify.disclosure import protect_released_table
from medllm_pipelines.lib.deidentify.dp import PrivacyLedger
from medllm_pipelines.lib.deidentify.policy import load_policy
from medllm_pipelines.resources.artifacts import ArtifactStoreResource
from medllm_pipelines.resources.run_settings import RunSettingsResource
from medllm_pipelines.resources.warehouse import WarehouseResource
from medllm_pipelines.settings import load_settings


def crafted_patients() -> pd.DataFrame:
    """Twelve people in two classes of six, and one woman of 90+ alone in hers."""
    rows = [(f"p_{i:03d}", "hzsf", "female", "50-54") for i in range(6)]
    rows += [(f"p_{i:03d}", "hzsf", "male", "60-64") for i in range(6, 12)]
    rows += [("p_999", "hzsf", "female", "90+")]
    return pd.DataFrame(rows, columns=["patient_pseudonym", "institution", "sex", "age_band"])


@pytest.fixture
def warehouse(tmp_path: Path) -> WarehouseResource:
    return WarehouseResource(url=f"duckdb:///{tmp_path / 'warehouse.duckdb'}")


@pytest.fixture
def artifacts(tmp_path: Path) -> ArtifactStoreResource:
    return ArtifactStoreResource(deidentified_dir=str(tmp_path / "deid"), models_dir=str(tmp_path / "models"),
                                 reports_dir=str(tmp_path / "reports"), governance_dir=str(tmp_path / "governance"))


def settings_from_environment(tmp_path: Path, **variables: str) -> RunSettingsResource:
    """The run_settings resource the Definitions bind for this environment (MEDLLM_* variables)."""
    return run_settings_resource(load_settings({"MEDLLM_HOME": str(tmp_path / "home"), **variables}))


def stored_patients(frame: pd.DataFrame) -> AssetsDefinition:
    @asset(key=keys.DEID_PATIENTS)
    def _patients(warehouse: WarehouseResource) -> None:
        warehouse.get().write_table(*warehouse_location(keys.DEID_PATIENTS), frame)

    return _patients


def patients_gate():
    (gate,) = [c for c in disclosure.CHECKS if any(k.asset_key == keys.DEID_PATIENTS for k in c.check_keys)]
    return gate


def test_every_table_with_declared_quasi_identifiers_has_a_blocking_gate() -> None:
    gated = {key.asset_key for check in disclosure.CHECKS for key in check.check_keys
             if key.name == keys.CHECK_K_ANONYMITY}
    assert keys.DEID_PATIENTS in gated
    assert all(spec.blocking for check in disclosure.CHECKS for spec in check.check_specs)


def test_gate_fails_on_a_singleton_class_and_passes_after_recoding(warehouse) -> None:
    resources = {"warehouse": warehouse, "run_settings": RunSettingsResource(k_anonymity_k=5)}
    frame = crafted_patients()

    failing = materialize([stored_patients(frame), patients_gate()], resources=resources, raise_on_error=False)
    (evaluation,) = failing.get_asset_check_evaluations()
    meta = {k: v.value for k, v in evaluation.metadata.items()}
    assert not evaluation.passed
    assert (meta["k_achieved"], meta["classes_below_k"], meta["rows_below_k"]) == (1, 1, 1)
    assert meta["class_sizes"] == {"1": 1, "6": 2}  # sizes only: the 90+ woman is not named
    assert "90+" not in json.dumps(meta)

    protected = protect_released_table(load_policy().disclosure["patients"], frame, k=5, l=2)
    passing = materialize([stored_patients(protected.frame), patients_gate()], resources=resources)
    (evaluation,) = passing.get_asset_check_evaluations()
    assert evaluation.passed
    k_meta = protected.as_metadata()
    assert k_meta["k_anonymity/k_before"] == 1 and k_meta["k_anonymity/k_satisfied"] is True
    assert len(protected.frame) + protected.rows_suppressed == len(frame)


def test_gate_reads_k_from_the_environment(warehouse, tmp_path) -> None:
    run_settings = settings_from_environment(tmp_path, MEDLLM_K_ANONYMITY_K="1")
    result = materialize([stored_patients(crafted_patients()), patients_gate()],
                         resources={"warehouse": warehouse, "run_settings": run_settings})
    (evaluation,) = result.get_asset_check_evaluations()
    assert evaluation.passed and evaluation.metadata["k_required"].value == 1


# --- released statistics -----------------------------------------------------------------
def seed_deidentified_tables(warehouse: WarehouseResource) -> None:
    wh = warehouse.get()
    patients = pd.DataFrame({
        "patient_pseudonym": [f"p_{i:03d}" for i in range(40)],
        "institution": ["hzsf", "rvic"] * 20,
        "sex": ["female", "male", None, "female"] * 10,
        "age_band": ["40-44", "55-59", None, "60-79"] * 10,
    })
    wh.write_table(*warehouse_location(keys.DEID_PATIENTS), patients)
    wh.write_table(*warehouse_location(keys.DEID_OBSERVATIONS), pd.DataFrame({
        "patient_pseudonym": list(patients["patient_pseudonym"]) * 2,
        "institution": list(patients["institution"]) * 2,
        "concept": ["hba1c"] * 40 + ["fasting_glucose"] * 40,
        "value": [6.5] * 40 + [7.0] * 40,
    }))
    wh.write_table(*warehouse_location(keys.DEID_CONDITIONS), pd.DataFrame({
        "patient_pseudonym": ["p_000", "p_001", "p_002"], "institution": ["hzsf", "rvic", "hzsf"],
        "icd10_category": ["E11", "E11", "I10"],
    }))
    wh.write_table(*warehouse_location(keys.CONSENT_REGISTRY), pd.DataFrame({
        "patient_pseudonym": ["p_000", "p_001"], "consent_status": ["granted", "withdrawn"],
    }))


def test_released_statistics_spend_the_budget_once_and_refuse_to_overspend(warehouse, artifacts, tmp_path) -> None:
    run_settings = settings_from_environment(tmp_path, MEDLLM_DP_DATASET="test-cohort", MEDLLM_DP_EPSILON_BUDGET="1.5",
                                             MEDLLM_DP_EPSILON_PER_RELEASE="1.0")
    seed_deidentified_tables(warehouse)
    resources = {"warehouse": warehouse, "artifacts": artifacts, "run_settings": run_settings}

    first = materialize([disclosure.released_statistics], resources=resources)
    meta = {k: v.value for k, v in first.asset_materializations_for_node("deidentify__released_statistics")[0]
            .metadata.items()}
    assert meta["epsilon_spent_this_run"] == pytest.approx(1.0)
    assert meta["epsilon_remaining"] == pytest.approx(0.5)
    assert meta["ledger_entries"] == meta["queries"] and len(meta["ledger_hash"]) == 64
    table = warehouse.get().read_table(*warehouse_location(keys.RELEASED_STATISTICS))
    assert set(table["mechanism"]) == {"laplace"} and (table["delta"] == 0).all()
    assert (table["noise_scale"] > 0).all() and table["epsilon"].sum() > 0
    assert set(table["query"]) >= {"persons_by_institution", "persons_by_age_group_sex", "prevalence[E11]"}
    hba1c = table[table["statistic"] == "mean_hba1c"]["value"]
    assert hba1c.between(4.0, 15.0).all()  # clamped into the declared bounds
    assert Path(meta["report_json"]).is_file()
    counts = table[table["statistic"] == "count"]
    assert np.allclose(counts["noise_scale"], counts["sensitivity"] / counts["epsilon"])
    # a person registered at two institutions may count twice: the noise is scaled for it
    assert set(counts.loc[counts["query"] == "persons_by_institution", "sensitivity"]) == {2.0}

    # the same inputs again: the earlier release is published again, at no cost (post-processing)
    again = materialize([disclosure.released_statistics], resources=resources)
    again_meta = {k: v.value for k, v in again.asset_materializations_for_node("deidentify__released_statistics")[0]
                  .metadata.items()}
    assert again_meta["release_reused"] is True and again_meta["epsilon_spent_this_run"] == 0.0
    assert again_meta["input_fingerprint"] == meta["input_fingerprint"]
    republished = warehouse.get().read_table(*warehouse_location(keys.RELEASED_STATISTICS))
    assert republished["value"].tolist() == table["value"].tolist()  # the same noisy values, no fresh draw

    # new data is a new release, and the budget cannot pay for it
    wh = warehouse.get()
    grown = pd.concat([wh.read_table(*warehouse_location(keys.DEID_PATIENTS)),
                       pd.DataFrame({"patient_pseudonym": ["p_999"], "institution": ["hzsf"], "sex": ["male"],
                                     "age_band": ["40-44"]})])
    wh.write_table(*warehouse_location(keys.DEID_PATIENTS), grown)
    second = materialize([disclosure.released_statistics], resources=resources, raise_on_error=False)
    assert not second.success
    failure = next(e for e in second.all_events if e.event_type_value == "STEP_FAILURE")
    message = str(failure.event_specific_data.error)
    assert "only 0.5 of 1.5 is left" in message and "Nothing was released" in message
    ledger = PrivacyLedger(tmp_path / "governance" / "privacy_ledger" / "test-cohort.json",
                           dataset="test-cohort", epsilon_budget=1.5)
    assert ledger.spent()[0] == pytest.approx(1.0)  # the refused release charged nothing
    after = warehouse.get().read_table(*warehouse_location(keys.RELEASED_STATISTICS))
    assert after["release_id"].tolist() == table["release_id"].tolist()  # the published table is untouched


# --- the whole lifecycle (the session's one embedded run) --------------------------------
@pytest.mark.slow
def test_lifecycle_releases_k_anonymous_patients_and_private_statistics(embedded_run) -> None:
    meta = embedded_run.materialization(keys.DEID_PATIENTS)
    assert meta["k_anonymity/k_satisfied"] is True and meta["k_anonymity/k_achieved"] >= meta["k_anonymity/k_required"]
    assert meta["reconciled"] is True
    gates = [e for e in embedded_run.check_evaluations() if e.check_name == keys.CHECK_K_ANONYMITY]
    assert gates and all(e.passed for e in gates)
    released = embedded_run.materialization(keys.RELEASED_STATISTICS)
    assert released["epsilon_spent_this_run"] > 0 and released["epsilon_remaining"] >= 0


@pytest.mark.parametrize(
    ("variable", "value"),
    [("MEDLLM_K_ANONYMITY_K", "five"), ("MEDLLM_K_ANONYMITY_K", "0"), ("MEDLLM_DP_EPSILON_BUDGET", "inf"),
     ("MEDLLM_DP_EPSILON_PER_RELEASE", "-1")],
)
def test_disclosure_settings_refuse_values_that_would_switch_protection_off(variable: str, value: str) -> None:
    from medllm_pipelines.settings import load_settings

    with pytest.raises(ValueError, match=variable):
        load_settings({variable: value})
