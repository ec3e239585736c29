"""Reconciliation (in = out + quarantined + removed) and the dataset version hash."""

from __future__ import annotations

import pandas as pd
import pytest

from medllm_pipelines.lib.common.records import (
    QUARANTINE_COLUMNS,
    QuarantineRecord,
    Reconciliation,
    ReconciliationError,
    frame_content_hash,
    quarantine_frame,
)


@pytest.mark.parametrize(
    ("records_in", "out", "quarantined", "removed"),
    [
        (10, 10, 0, {}),
        (10, 7, 3, {}),
        (10, 5, 2, {"duplicate_record": 2, "out_of_scope_code": 1}),
        (0, 0, 0, {}),
    ],
)
def test_balanced_reconciliation_passes_and_reports_counts(records_in, out, quarantined, removed):
    recon = Reconciliation(records_in, out, quarantined, removed).check()

    meta = recon.as_metadata()
    assert meta["reconciled"] is True
    assert (meta["records_in"], meta["records_out"], meta["records_quarantined"]) == (records_in, out, quarantined)
    for rule, count in removed.items():
        assert meta[f"removed[{rule}]"] == count


@pytest.mark.parametrize(
    ("records_in", "out", "quarantined", "removed"),
    [
        (10, 9, 0, {}),  # a record lost
        (10, 10, 1, {}),  # a record invented
        (10, 5, 2, {"duplicate_record": 2}),  # one unaccounted for
    ],
)
def test_unbalanced_reconciliation_raises_with_the_counts(records_in, out, quarantined, removed):
    recon = Reconciliation(records_in, out, quarantined, removed)

    assert not recon.balanced
    with pytest.raises(ReconciliationError, match=f"in={records_in} out={out}"):
        recon.check()


def test_quarantine_frame_keeps_the_declared_columns_and_integer_positions():
    records = [
        QuarantineRecord("ingest", "a", "h1", "abc", 3, "Patient", "invalid_resource", "r"),
        QuarantineRecord("ingest", "a", "h1", "def", None, None, "empty_file", "r"),
    ]

    frame = quarantine_frame(records)

    assert list(frame.columns) == QUARANTINE_COLUMNS
    assert str(frame["position"].dtype) == "Int64"  # stays an integer column in the warehouse
    assert frame["position"].tolist()[0] == 3
    assert pd.isna(frame["position"].tolist()[1])
    assert list(quarantine_frame([]).columns) == QUARANTINE_COLUMNS


PEOPLE = pd.DataFrame(
    {"pseudonym": ["p_1", "p_2", "p_3"], "age_band": ["40-44", "45-49", "90+"], "hba1c": [5.4, 7.1, None]}
)


def test_content_hash_ignores_row_and_column_order():
    shuffled = PEOPLE.iloc[[2, 0, 1]][["hba1c", "pseudonym", "age_band"]].reset_index(drop=True)

    assert frame_content_hash(shuffled) == frame_content_hash(PEOPLE)


@pytest.mark.parametrize(
    "change",
    [
        lambda f: f.assign(hba1c=[5.4, 7.2, None]),  # one value
        lambda f: f.assign(hba1c=[5.4, 7.1, 6.0]),  # a null filled
        lambda f: f.rename(columns={"hba1c": "glucose"}),  # a column renamed
        lambda f: f.iloc[:2],  # a row dropped
        lambda f: pd.concat([f, f.iloc[:1]]),  # a row duplicated
        lambda f: f.assign(age_band=["45-49", "40-44", "90+"]),  # values swapped between rows
    ],
    ids=["value", "null_filled", "column_name", "row_dropped", "row_duplicated", "values_swapped"],
)
def test_content_hash_changes_with_the_content(change):
    assert frame_content_hash(change(PEOPLE.copy())) != frame_content_hash(PEOPLE)


def test_file_outcomes_account_per_file_and_flag_a_file_that_loses_records():
    from medllm_pipelines.lib.common.records import FILE_OUTCOME_COLUMNS, FileOutcomes

    outcomes = FileOutcomes("ingest/fhir_resources")
    bad = QuarantineRecord("ingest", "ingest/fhir_resources", "hzsf", "a" * 64, 3, None, "malformed_json", "line is not JSON")
    # one file read in two batches (a streamed NDJSON): counts add up
    outcomes.add("a" * 64, "hzsf", records_in=5, records_out=3, quarantine=[bad], removed_by_rule={"request_only": 1})
    outcomes.add("a" * 64, "hzsf", records_in=2, records_out=2)
    outcomes.add("b" * 64, "rvic", records_in=4, records_out=3)  # one record vanished

    frame = outcomes.frame()
    assert list(frame.columns) == FILE_OUTCOME_COLUMNS
    first = frame.set_index("source_object").loc["a" * 64]
    assert (first["records_in"], first["records_out"], first["records_quarantined"], first["records_removed"]) == (7, 5, 1, 1)
    assert first["quarantined_by_reason"] == '{"malformed_json":1}'
    assert [o.source_object for o in outcomes.unbalanced()] == ["b" * 64]
