"""The table store on both backends: DuckDB in a temp folder, PostgreSQL in a
throwaway database on the local server (``-m postgres`` selects those)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import numpy as np
import pandas as pd
import pytest

from medllm_pipelines.lib.common.warehouse import Warehouse
from medllm_pipelines_tests.postgres import throwaway_database



@pytest.fixture(scope="module")
def postgres_database() -> Iterator[str]:
    """A fresh database for this module, dropped afterwards."""
    with throwaway_database("medllm_unit") as url:
        yield url


@pytest.fixture(params=["duckdb", pytest.param("postgres", marks=pytest.mark.postgres)])
def warehouse(request: pytest.FixtureRequest, tmp_path) -> Iterator[Warehouse]:
    if request.param == "duckdb":
        wh = Warehouse(f"duckdb:///{tmp_path / 'wh' / 'medllm.duckdb'}")
    else:
        wh = Warehouse(request.getfixturevalue("postgres_database"))
    yield wh
    wh.dispose()


@pytest.fixture
def schema() -> str:
    """Each test writes into its own schema, so tests sharing a database never collide."""
    return f"t_{uuid.uuid4().hex[:10]}"


def _sorted(frame: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    return frame.sort_values(by).reset_index(drop=True)


def frame_of(institution: str, n: int, start: int = 0) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "institution": [institution] * n,
            "position": list(range(start, start + n)),
            "value": [float(i) / 2 for i in range(start, start + n)],
        }
    )


def test_replace_twice_holds_only_the_last_frame(warehouse, schema):
    warehouse.write_table(schema, "labels", frame_of("h1", 5))
    written = warehouse.write_table(schema, "labels", frame_of("h2", 3))

    back = warehouse.read_table(schema, "labels")

    assert written == 3
    pd.testing.assert_frame_equal(_sorted(back, ["position"]), frame_of("h2", 3), check_dtype=False)


def test_append_adds_rows_and_creates_a_missing_table(warehouse, schema):
    warehouse.write_table(schema, "ledger", frame_of("h1", 2), mode="append")
    warehouse.write_table(schema, "ledger", frame_of("h1", 3, start=2), mode="append")

    back = warehouse.read_table(schema, "ledger")

    pd.testing.assert_frame_equal(_sorted(back, ["position"]), frame_of("h1", 5), check_dtype=False)


def test_unknown_write_mode_is_refused(warehouse, schema):
    with pytest.raises(ValueError, match="mode"):
        warehouse.write_table(schema, "labels", frame_of("h1", 1), mode="upsert")


def test_replace_rows_is_idempotent_and_leaves_other_rows_alone(warehouse, schema):
    warehouse.replace_rows(schema, "quarantine", {"institution": "h2"}, frame_of("h2", 2, start=100))
    for _ in range(2):  # re-materialising the same asset twice
        warehouse.replace_rows(schema, "quarantine", {"institution": "h1"}, frame_of("h1", 3))

    back = warehouse.read_table(schema, "quarantine")

    expected = pd.concat([frame_of("h1", 3), frame_of("h2", 2, start=100)], ignore_index=True)
    pd.testing.assert_frame_equal(_sorted(back, ["position"]), expected, check_dtype=False)


def test_replace_rows_with_nothing_clears_that_value_only(warehouse, schema):
    warehouse.write_table(schema, "quarantine", pd.concat([frame_of("h1", 3), frame_of("h2", 1, start=10)]))

    warehouse.replace_rows(schema, "quarantine", {"institution": "h1"}, frame_of("h1", 0))

    back = warehouse.read_table(schema, "quarantine")
    assert back["institution"].tolist() == ["h2"]


def test_replace_rows_with_an_empty_frame_creates_the_table(warehouse, schema):
    warehouse.replace_rows(schema, "quarantine", {"institution": "h1"}, frame_of("h1", 0))

    assert warehouse.table_exists(schema, "quarantine")
    assert warehouse.read_table(schema, "quarantine").empty


def test_list_tables_and_iter_tables_see_every_written_table(warehouse, schema):
    assert not warehouse.table_exists(schema, "a")
    warehouse.write_table(schema, "a", frame_of("h1", 1))
    warehouse.write_table(schema, "b", frame_of("h1", 2))

    mine = sorted(t for t in warehouse.list_tables() if t[0] == schema)
    contents = {(s, t): len(f) for s, t, f in warehouse.iter_tables() if s == schema}

    assert mine == [(schema, "a"), (schema, "b")]
    assert contents == {(schema, "a"): 1, (schema, "b"): 2}
    assert warehouse.table_exists(schema, "a")


def test_list_tables_of_a_new_duckdb_file_is_empty_and_creates_nothing(tmp_path):
    path = tmp_path / "never" / "created.duckdb"

    assert Warehouse(f"duckdb:///{path}").list_tables() == []
    assert not path.exists()


@pytest.mark.parametrize(
    "name",
    ["x; drop table audit", "labels\n", "Labels", "1labels", "a.b", "a b", "", 'x"', "labels--"],
)
def test_identifiers_that_could_inject_sql_are_refused(warehouse, schema, name):
    frame = frame_of("h1", 1)
    with pytest.raises(ValueError, match="invalid SQL identifier"):
        warehouse.write_table(schema, name, frame)
    with pytest.raises(ValueError, match="invalid SQL identifier"):
        warehouse.write_table(name, "labels", frame)
    with pytest.raises(ValueError, match="invalid SQL identifier"):
        warehouse.read_table(schema, name)
    with pytest.raises(ValueError, match="invalid SQL identifier"):
        warehouse.delete_where(schema, "labels", {name: "h1"})
    assert not [t for t in warehouse.list_tables() if t[0] == schema]


def test_url_must_name_a_supported_backend():
    with pytest.raises(ValueError, match="duckdb"):
        Warehouse("sqlite:///x.db")


AWKWARD_TEXT = [
    "张三，男，住北京市朝阳区",  # Chinese with a full-width comma
    'quote " and comma , inside',
    "line one\nline two",
    "",  # empty string is not NULL
    None,
    "back\\slash",
    "emoji 🩺 and é",
]


def test_nulls_and_unicode_round_trip(warehouse, schema):
    n = len(AWKWARD_TEXT)
    frame = pd.DataFrame(
        {
            "position": range(n),
            "text": AWKWARD_TEXT,
            "value": [1.5, np.nan, 3.0, np.nan, 0.0, -2.25, 7.0],
            "count": pd.array([1, None, 3, 4, None, 6, 7], dtype="Int64"),
            "flag": [True, False, True, False, True, False, True],
        }
    )

    warehouse.write_table(schema, "awkward", frame)
    back = _sorted(warehouse.read_table(schema, "awkward"), ["position"])

    assert back["text"].tolist()[:4] == AWKWARD_TEXT[:4]
    assert back["text"].isna().tolist() == [v is None for v in AWKWARD_TEXT]
    assert back["text"].tolist()[5:] == AWKWARD_TEXT[5:]
    assert back["value"].isna().tolist() == frame["value"].isna().tolist()
    assert back["value"].dropna().tolist() == frame["value"].dropna().tolist()
    assert back["count"].isna().tolist() == frame["count"].isna().tolist()
    assert back["count"].dropna().astype(int).tolist() == [1, 3, 4, 6, 7]
    assert back["flag"].astype(bool).tolist() == frame["flag"].tolist()


def test_query_binds_named_parameters(warehouse, schema):
    warehouse.write_table(schema, "obs", pd.concat([frame_of("h1", 4), frame_of("张医院", 2, start=10)]))

    sql = f"SELECT position FROM {schema}.obs WHERE institution = :inst AND value >= :low ORDER BY position"
    hits = warehouse.query(sql, {"inst": "h1", "low": 1.0})
    chinese = warehouse.query(f"SELECT count(*) AS n FROM {schema}.obs WHERE institution = :inst", {"inst": "张医院"})
    injected = warehouse.query(
        f"SELECT count(*) AS n FROM {schema}.obs WHERE institution = :inst", {"inst": "h1' OR '1'='1"}
    )

    assert hits["position"].tolist() == [2, 3]
    assert int(chinese["n"].iloc[0]) == 2
    assert int(injected["n"].iloc[0]) == 0


def test_delete_where_on_a_missing_table_is_a_no_op(warehouse, schema):
    warehouse.delete_where(schema, "absent", {"institution": "h1"})

    assert not warehouse.table_exists(schema, "absent")


def test_replace_rows_matches_several_columns_and_null(warehouse, schema):
    """Partitioned assets replace exactly (asset, partition) rows; NULL matches an unpartitioned asset."""
    first = frame_of("h1", 2).assign(part=None)
    second = frame_of("h1", 1, start=50).assign(part="p1")
    warehouse.write_table(schema, "quarantine", pd.concat([first, second], ignore_index=True).astype({"part": "string"}))

    warehouse.replace_rows(schema, "quarantine", {"institution": "h1", "part": None}, frame_of("h1", 1, start=90).assign(part=None))

    back = warehouse.read_table(schema, "quarantine")
    assert sorted(back["position"].tolist()) == [50, 90]


def test_replace_rows_is_atomic_when_the_insert_fails(warehouse, schema):
    warehouse.write_table(schema, "quarantine", frame_of("h1", 3))
    broken = frame_of("h1", 1).assign(unexpected_column=1)  # not in the table: the insert fails

    with pytest.raises(Exception):  # noqa: B017 - DuckDB and psycopg2 raise their own types
        warehouse.replace_rows(schema, "quarantine", {"institution": "h1"}, broken)

    assert len(warehouse.read_table(schema, "quarantine")) == 3, "the delete must roll back with the failed insert"


def test_replace_values_maps_one_column_and_leaves_the_rest(warehouse, schema):
    warehouse.write_table(schema, "ledger", pd.DataFrame({"key": ["a", "b", "c"], "secret": ["v1:x", "v1:y", None]}))
    mapping = pd.DataFrame({"old_value": ["v1:x", "v1:gone"], "new_value": ["v2:x", "v2:gone"]}, dtype="string")
    warehouse.replace_values(schema, "ledger", "secret", mapping)
    after = warehouse.read_table(schema, "ledger").sort_values("key")
    assert after["key"].tolist() == ["a", "b", "c"]
    assert after["secret"].tolist()[:2] == ["v2:x", "v1:y"] and pd.isna(after["secret"].tolist()[2])
