"""Released statistics: the versioned query spec, and a release that spends once, re-publishes free, never overspends."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from medllm_pipelines.lib.deidentify.dp import PrivacyLedger
from medllm_pipelines.lib.deidentify.released_statistics import (
    LATEST_RELEASE_FILE,
    SPEC_PATH,
    ReleaseInputs,
    ReleaseRefused,
    load_release_spec,
    release_statistics,
)

# The content of each released spec version. A change of the queries, bounds or categories is a new release:
# bump `version` in released_statistics.yaml and add its digest here (never edit a digest in place).
SPEC_CONTENT_SHA256 = {"2": "c78ccb02a2cf40f3c0b856463e6b505c93562259ba5160a24477e848a77dead0"}
INSTITUTIONS = ["hzsf", "rvic"]


def content_digest(path: Path) -> str:
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    raw.pop("version")
    return hashlib.sha256(json.dumps(raw, sort_keys=True).encode()).hexdigest()


def test_a_change_of_the_queries_comes_with_a_new_spec_version() -> None:
    spec = load_release_spec()
    assert SPEC_CONTENT_SHA256.get(spec.version) == content_digest(SPEC_PATH), (
        "released_statistics.yaml changed without a new version: bump it (a new spec is a new release)")


def test_the_spec_declares_the_published_queries() -> None:
    spec = load_release_spec()
    assert spec.queries == 2 + len(spec.clipped_means) + len(spec.prevalence_categories) == 8
    assert {m.concept: (m.lower, m.upper) for m in spec.clipped_means} == {"hba1c": (4.0, 15.0),
                                                                           "fasting_glucose": (3.0, 25.0)}
    assert set(spec.excluded_consent) == {"refused", "withdrawn"}


@pytest.mark.parametrize(("band", "group"), [("0-4", "0-19"), ("15-19", "0-19"), ("45-49", "40-59"),
                                             ("40-59", "40-59"), ("75-79", "60-79"), ("80-84", "80+"),
                                             ("90+", "80+"), (None, "not released"), ("*", "not released")])
def test_every_policy_band_nests_in_one_released_age_group(band, group) -> None:
    assert load_release_spec().age_group(band) == group


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda raw: raw["queries"]["mean_by_institution"]["hba1c"].update(lower=20.0), "lower must be below upper"),
        (lambda raw: raw["queries"]["persons_by_age_group_sex"].update(age_group_years=10), "undeclared age groups"),
        (lambda raw: raw["queries"]["persons_by_age_group_sex"]["age_groups"].pop(), "not released"),
    ],
)
def test_a_spec_that_would_misplace_values_is_refused(tmp_path: Path, edit, message: str) -> None:
    raw = yaml.safe_load(SPEC_PATH.read_text(encoding="utf-8"))
    edit(raw)
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ValueError, match=message):
        load_release_spec(path)


def cohort(extra_withdrawn: int = 0) -> ReleaseInputs:
    persons = [f"p_{i:03d}" for i in range(30)]
    withdrawn = [f"w_{i:03d}" for i in range(extra_withdrawn)]
    everyone = persons + withdrawn
    patients = pd.DataFrame({"patient_pseudonym": everyone, "institution": [INSTITUTIONS[i % 2] for i in range(len(everyone))],
                             "sex": ["female", "male", None] * 10 + ["male"] * extra_withdrawn,
                             "age_band": ["40-44", "55-59", "90+"] * 10 + ["40-44"] * extra_withdrawn})
    return ReleaseInputs(
        patients=patients,
        consent_registry=pd.DataFrame({"patient_pseudonym": withdrawn, "consent_status": ["withdrawn"] * len(withdrawn)}),
        observations=pd.DataFrame({"patient_pseudonym": persons, "institution": [INSTITUTIONS[i % 2] for i in range(30)],
                                   "concept": ["hba1c"] * 30, "value": [6.5] * 30}),
        conditions=pd.DataFrame({"patient_pseudonym": persons[:5], "icd10_category": ["E11"] * 5}),
    )


def release(tmp_path: Path, inputs: ReleaseInputs, budget: float = 1.5, release_id: str = "run-1"):
    ledger = PrivacyLedger(tmp_path / "ledger.json", dataset="test-cohort", epsilon_budget=budget)
    return ledger, release_statistics(load_release_spec(), ledger, inputs, institutions=INSTITUTIONS, epsilon=1.0,
                                      release_id=release_id, reports_dir=tmp_path, rng=np.random.default_rng(0))


def test_a_release_charges_its_epsilon_once_and_says_so(tmp_path: Path) -> None:
    ledger, first = release(tmp_path, cohort())
    meta = first.as_metadata()
    assert not first.reused and meta["epsilon_spent_this_run"] == pytest.approx(1.0)
    assert meta["ledger_entries"] == meta["queries"] == 8 and meta["epsilon_remaining"] == pytest.approx(0.5)
    assert first.report_path is not None and json.loads(first.report_path.read_text())["release_id"] == "run-1"
    assert (tmp_path / LATEST_RELEASE_FILE).stat().st_mode & 0o077 == 0  # written private, atomically
    assert first.frame["value"].notna().all() and set(first.frame["mechanism"]) == {"laplace"}


def test_the_same_inputs_are_published_again_at_no_cost(tmp_path: Path) -> None:
    _, first = release(tmp_path, cohort())
    ledger, again = release(tmp_path, cohort(), release_id="run-2")
    assert again.reused and again.release_id == "run-1" and again.as_metadata()["epsilon_spent_this_run"] == 0.0
    assert again.frame["value"].tolist() == first.frame["value"].tolist()
    assert ledger.spent()[0] == pytest.approx(1.0)


def test_a_person_who_withdrew_consent_does_not_change_the_release(tmp_path: Path) -> None:
    _, first = release(tmp_path, cohort())
    _, with_withdrawn = release(tmp_path, cohort(extra_withdrawn=3), release_id="run-2")
    assert with_withdrawn.reused and with_withdrawn.input_fingerprint == first.input_fingerprint


def test_a_release_the_budget_cannot_pay_is_refused_before_any_charge(tmp_path: Path) -> None:
    release(tmp_path, cohort())
    grown = cohort()
    grown.patients.loc[len(grown.patients)] = ["p_new", "hzsf", "male", "40-44"]
    with pytest.raises(ReleaseRefused, match=r"only 0\.5 of 1\.5 is left.*Nothing was released") as refused:
        release(tmp_path, grown, release_id="run-2")
    assert refused.value.metadata["epsilon_needed"] == 1.0
    ledger = PrivacyLedger(tmp_path / "ledger.json", dataset="test-cohort", epsilon_budget=1.5)
    assert ledger.spent()[0] == pytest.approx(1.0)
    assert json.loads((tmp_path / LATEST_RELEASE_FILE).read_text())["release_id"] == "run-1"
