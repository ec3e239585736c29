"""De-identified person-level tables: what crosses, what is withheld, and that every row is accounted for."""

from __future__ import annotations

import datetime as dt

import pandas as pd
import pytest

from medllm_pipelines.lib.deidentify.persons import PersonIndex
from medllm_pipelines.lib.deidentify.policy import load_policy
from medllm_pipelines.lib.deidentify.risk import K_ANONYMITY_SUPPRESSED
from medllm_pipelines.lib.deidentify.tables import (
    deidentify_patients,
    deidentify_person_table,
    release_consent_registry,
)

# six women of 50-54 at hzsf, and one man at rvic whose class can never reach k=5
KEYS = [("hzsf", f"k{i}", f"MRN{i:04d}", f"p_{i}") for i in range(6)] + [("rvic", "k9", "MRN0009", "p_rare")]
PSEUDONYM_MAP = pd.DataFrame(KEYS, columns=["institution", "patient_key", "mrn", "patient_pseudonym"])
CLEAN_PATIENTS = pd.DataFrame({
    "institution": [k[0] for k in KEYS], "resource_key": [k[1] for k in KEYS], "mrn": [k[2] for k in KEYS],
    "name_zh": ["王某"] * 7, "gender": ["female"] * 6 + ["male"], "birth_date": ["1972-03-01"] * 6 + ["1930-01-01"],
})
OBSERVATIONS = pd.DataFrame({
    "institution": [k[0] for k in KEYS], "patient_key": [k[1] for k in KEYS], "concept": ["hba1c"] * 7,
    "loinc": ["4548-4"] * 7, "value": [6.1] * 7, "unit": ["%"] * 7, "effective_date": ["2024-06-01"] * 7,
})
CONSENTS = pd.DataFrame({
    "institution": [k[0] for k in KEYS], "patient_key": [k[1] for k in KEYS], "resource_key": [f"c{i}" for i in range(7)],
    "status": ["active"] * 7, "provision_type": ["permit"] * 6 + ["erasure_request"],
    "decided_at": ["2024-01-01"] * 7,
})
PERSONS = PersonIndex.from_map(PSEUDONYM_MAP)


@pytest.fixture(scope="module")
def patients():
    return deidentify_patients(CLEAN_PATIENTS, OBSERVATIONS, PERSONS, load_policy(), k=5, l=2,
                               today=dt.date(2030, 1, 1))


def test_patients_cross_without_identifiers_aged_at_their_latest_observation(patients) -> None:
    assert list(patients.frame.columns) == ["patient_pseudonym", "institution", "sex", "age_band"]
    assert set(patients.frame["age_band"]) == {"50-54"}  # 52 in 2024, not 57 in 2030
    meta = patients.as_metadata()
    assert meta["columns_removed"] == ["mrn", "name_zh"] and meta["purpose_id"] == "t2d_model_development"
    assert meta["reconciled"] is True and meta[f"removed[{K_ANONYMITY_SUPPRESSED}]"] == 1


def test_a_withheld_registration_leaves_every_person_keyed_table(patients) -> None:
    assert patients.withheld[["patient_pseudonym", "rule"]].values.tolist() == [["p_rare", K_ANONYMITY_SUPPRESSED]]
    observations = deidentify_person_table("observations", OBSERVATIONS, PERSONS, load_policy(), patients.withheld,
                                           k=5, l=2)
    assert "p_rare" not in set(observations.frame["patient_pseudonym"]) and len(observations.frame) == 6
    meta = observations.as_metadata()
    assert meta[f"removed[{K_ANONYMITY_SUPPRESSED}]"] == 1 and meta[f"persons_withheld[{K_ANONYMITY_SUPPRESSED}]"] == 1
    assert meta["reconciled"] is True and meta["records_in"] == 7


def test_the_run_purpose_decides_which_columns_cross(patients) -> None:
    narrow = load_policy(purpose="data_quality_reporting")
    observations = deidentify_person_table("observations", OBSERVATIONS, PERSONS, narrow, patients.withheld, k=5, l=2)
    assert "value" not in observations.frame.columns
    meta = observations.as_metadata()
    assert meta["purpose_id"] == "data_quality_reporting" and meta["columns_dropped_undeclared"] == ["value"]


def test_the_consent_registry_withholds_persons_and_lists_erasures(patients) -> None:
    released = release_consent_registry(CONSENTS, PSEUDONYM_MAP, patients.withheld, patients.frame)
    assert "p_rare" not in set(released.frame["patient_pseudonym"]) and len(released.frame) == 6
    assert released.erased == ["p_rare"]  # audited by the asset, by pseudonym, even though it is withheld
    meta = released.as_metadata()
    assert meta["reconciled"] is True and meta["erasure_requests_applied"] == 1
