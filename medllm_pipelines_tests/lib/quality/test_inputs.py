"""An empty parsed partition (lineage columns only) reads as an empty table of the declared schema."""

from __future__ import annotations

import datetime as dt

import pandas as pd
import pytest

from medllm_pipelines.lib.ingest.tables import LINEAGE_COLUMNS, table_columns
from medllm_pipelines.lib.quality.cleaning import clean_observations, clean_patients, load_rules
from medllm_pipelines.lib.quality.inputs import conform_parsed_table


@pytest.mark.parametrize("table", ["patients", "observations", "conditions", "consents"])
def test_an_empty_partition_gets_every_declared_column(table: str) -> None:
    frame = conform_parsed_table(pd.DataFrame(columns=LINEAGE_COLUMNS), table)
    assert frame.empty and set(table_columns(table)) <= set(frame.columns)


def test_a_filled_table_is_left_as_it_is() -> None:
    frame = pd.DataFrame({name: ["x"] for name in table_columns("patients")})
    assert conform_parsed_table(frame, "patients") is frame


def test_cleaning_nothing_gives_empty_well_typed_tables() -> None:
    rules = load_rules()
    patients = clean_patients(conform_parsed_table(pd.DataFrame(columns=LINEAGE_COLUMNS), "patients"), "quality/clean_patients",
                              dt.date(2026, 1, 1), rules)
    assert patients.frame.empty and patients.reconciliation.balanced
    assert {"gender", "birth_date", "resident_id_valid"} <= set(patients.frame.columns)
    assert patients.frame["resident_id_valid"].dtype == bool
    observations = clean_observations(conform_parsed_table(pd.DataFrame(columns=LINEAGE_COLUMNS), "observations"),
                                      patients.frame, "quality/clean_observations", dt.datetime(2026, 1, 1, tzinfo=dt.UTC), rules)
    assert observations.frame.empty and observations.frame["value"].dtype == "float64"
