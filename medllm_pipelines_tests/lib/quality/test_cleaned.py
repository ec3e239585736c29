"""One call per cleaned table, and the accounting its asset reports and its gate re-checks."""

from __future__ import annotations

import datetime as dt

import pandas as pd
import pytest

from medllm_pipelines.lib.common.records import QuarantineRecord, Reconciliation
from medllm_pipelines.lib.quality.accuracy import MATCH_RULE, local_hmac
from medllm_pipelines.lib.quality.cleaned import (
    CleaningReport,
    ReconciliationVerdict,
    clean_patient_linked,
    clean_patient_table,
)
from medllm_pipelines.lib.quality.cleaning import CleaningResult, load_rules

NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
KEYED = local_hmac(b"test-key-not-a-secret")


def test_patients_are_cleaned_and_their_near_duplicates_counted(parsed_hospital):
    result = clean_patient_table(parsed_hospital.raw["patients"], "quality/clean_patients", NOW.date(), load_rules(), KEYED)

    assert result.reconciliation.balanced and len(result.frame)
    assert sum(result.details["near_duplicate_pairs_by_status"].values()) > 0  # whsy persons have twins elsewhere
    assert result.details["near_duplicate_match_rule"] == MATCH_RULE


@pytest.mark.parametrize("table", ["observations", "conditions"])
def test_patient_linked_tables_reconcile_and_observations_are_double_verified(parsed_hospital, table):
    result = clean_patient_linked(table, parsed_hospital.raw[table], parsed_hospital.patients, f"quality/clean_{table}",
                                  load_rules(), NOW)

    assert result.reconciliation.balanced and len(result.frame)
    assert ("double_verification_disagreements" in result.details) == (table == "observations")


def test_an_unknown_table_has_no_cleaner(parsed_hospital):
    with pytest.raises(ValueError, match="encounters"):
        clean_patient_linked("encounters", parsed_hospital.raw["encounters"], parsed_hospital.patients, "x",
                             load_rules(), NOW)


def _result(out_institutions: list[str], quarantined: list[str], removed: dict[str, int]) -> CleaningResult:
    frame = pd.DataFrame({"institution": out_institutions})
    quarantine = [QuarantineRecord("quality", "q", i, "obj", 0, "Patient", "bad_date", "date is not ISO 8601")
                  for i in quarantined]
    records_in = len(out_institutions) + len(quarantined) + sum(removed.values())
    return CleaningResult(frame, quarantine, Reconciliation(records_in, len(frame), len(quarantine), removed),
                          {"kept": {"a": 1}})


def test_a_report_accounts_per_institution_with_rule_removals_as_the_remainder():
    records_in = pd.DataFrame({"institution": ["h1"] * 4 + ["h2"] * 2})
    report = CleaningReport.of(records_in, _result(["h1", "h1", "h2"], ["h1"], {"duplicate_record": 2}), "1.0")

    meta = report.as_metadata()
    assert meta["reconciliation_by_institution"] == {"h1": {"in": 4, "out": 2, "quarantined": 1, "removed": 1},
                                                     "h2": {"in": 2, "out": 1, "quarantined": 0, "removed": 1}}
    assert meta["rows_by_institution"] == {"h1": 2, "h2": 1}
    assert (meta["records_in"], meta["removed[duplicate_record]"], meta["reconciled"]) == (6, 2, True)
    assert meta["kept"] == {"a": 1}
    assert report.summary("quality/x") == "quality/x: 6 in, 3 out, 1 quarantined, removed {'duplicate_record': 2}"


def test_a_report_refuses_records_invented_at_an_institution():
    with pytest.raises(ValueError, match="h2"):
        CleaningReport.of(pd.DataFrame({"institution": ["h1"]}), _result(["h2"], [], {}), "1.0")


@pytest.mark.parametrize(
    ("metadata", "passed"),
    [
        ({"reconciled": True, "records_in": 3,
          "reconciliation_by_institution": {"h1": {"in": 3, "out": 1, "quarantined": 1, "removed": 1}}}, True),
        ({"reconciled": True, "records_in": 0, "reconciliation_by_institution": {}}, True),  # nothing arrived
        ({"reconciled": True, "records_in": 3, "reconciliation_by_institution": {}}, False),  # not broken down
        ({"reconciled": False, "records_in": 3,
          "reconciliation_by_institution": {"h1": {"in": 3, "out": 1, "quarantined": 1, "removed": 1}}}, False),
        ({"reconciled": True, "records_in": 3,
          "reconciliation_by_institution": {"h1": {"in": 3, "out": 2, "quarantined": 0, "removed": 0}}}, False),
        ({}, False),  # never materialised
    ],
)
def test_the_gate_verdict_requires_balance_overall_and_per_institution(metadata, passed):
    verdict = ReconciliationVerdict(metadata)

    assert verdict.passed is passed
    assert verdict.description == ("every record accounted for" if passed else "records were lost or invented")
    assert verdict.as_metadata()["institutions_checked"] == len(metadata.get("reconciliation_by_institution", {}))
