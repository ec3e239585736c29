"""The parsed tables keep their declared columns and types whatever the rows (or none) say."""

from __future__ import annotations

import pyarrow as pa

from medllm_pipelines.lib.ingest.tables import FHIR_TABLES, LINEAGE_COLUMNS, arrow_schema, rows_to_frame, table_columns


def test_frames_have_the_declared_columns_even_when_empty():
    frame = rows_to_frame("observations", [])

    assert list(frame.columns) == table_columns("observations")
    assert str(frame["value"].dtype) == "float64" and str(frame["source_position"].dtype) == "Int64"


def test_every_table_ends_with_the_lineage_columns_and_matches_its_arrow_schema():
    for table in FHIR_TABLES:
        columns = table_columns(table)
        assert columns[-len(LINEAGE_COLUMNS):] == LINEAGE_COLUMNS, table
        assert arrow_schema(table).names == columns
    assert arrow_schema("diagnostic_reports").field("result_count").type == pa.int64()


def test_a_row_missing_columns_is_filled_with_nulls_not_dropped():
    frame = rows_to_frame("patients", [{"mrn": "m1", "institution": "hzsf"}])

    assert len(frame) == 1 and frame.loc[0, "mrn"] == "m1"
    assert frame["birth_date"].isna().all()
