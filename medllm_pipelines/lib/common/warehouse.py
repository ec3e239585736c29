"""A small table store over DuckDB (embedded) or PostgreSQL (production).

Only de-identified tables and audit tables (ledgers, quarantine log) live here;
identifiable data stays in the encrypted raw zone. One class serves both
backends so assets never branch on the environment.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd

_IDENT = re.compile(r"^[a-z_][a-z0-9_]*$")


def checked_identifier(name: str) -> str:
    """Validate an SQL identifier: table names are constants, never user input."""
    if not _IDENT.fullmatch(name):  # fullmatch: ``$`` alone would accept a trailing newline
        raise ValueError(f"invalid SQL identifier {name!r}")
    return name


class Warehouse:
    """Tables addressed as ``(schema, table)``; URL ``duckdb:///path`` or ``postgresql+psycopg2://...``."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.is_postgres = url.startswith("postgresql")
        if not self.is_postgres and not url.startswith("duckdb:///"):
            raise ValueError("warehouse URL must start with duckdb:/// or postgresql")
        self._engine: Any = None

    # --- connections ------------------------------------------------------
    @property
    def duckdb_path(self) -> Path:
        return Path(self.url.removeprefix("duckdb:///"))

    def _pg_engine(self) -> Any:
        if self._engine is None:
            from sqlalchemy import create_engine

            self._engine = create_engine(self.url, pool_pre_ping=True)
        return self._engine

    @contextmanager
    def _duck(self) -> Iterator[Any]:
        import duckdb

        self.duckdb_path.parent.mkdir(parents=True, exist_ok=True)
        con = duckdb.connect(str(self.duckdb_path))
        try:
            yield con
        finally:
            con.close()

    def dispose(self) -> None:
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None

    # --- writes -----------------------------------------------------------
    def write_table(self, schema: str, table: str, frame: pd.DataFrame, *, mode: str = "replace") -> int:
        """Write ``frame``; ``mode`` is ``replace`` or ``append``. Returns rows written."""
        schema, table = checked_identifier(schema), checked_identifier(table)
        if mode not in {"replace", "append"}:
            raise ValueError("mode must be 'replace' or 'append'")
        frame = _typed_nulls(frame)
        if self.is_postgres:
            self._pg_write(schema, table, frame, mode)
        else:
            with self._duck() as con:
                con.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
                con.register("incoming_frame", frame)
                exists = self._duck_exists(con, schema, table)
                if mode == "replace" or not exists:
                    con.execute(f"CREATE OR REPLACE TABLE {schema}.{table} AS SELECT * FROM incoming_frame")
                else:
                    con.execute(f"INSERT INTO {schema}.{table} BY NAME SELECT * FROM incoming_frame")
                con.unregister("incoming_frame")
        return len(frame)

    def _pg_write(self, schema: str, table: str, frame: pd.DataFrame, mode: str) -> None:
        from sqlalchemy import text

        engine = self._pg_engine()
        with engine.begin() as conn:
            conn.execute(text(f"CREATE SCHEMA IF NOT EXISTS {schema}"))
            if mode == "replace":
                # CASCADE: dbt staging views on this table are rebuilt by the next dbt build
                conn.execute(text(f"DROP TABLE IF EXISTS {schema}.{table} CASCADE"))
            frame.head(0).to_sql(table, conn, schema=schema, if_exists="append", index=False)
            if len(frame):
                self._pg_copy(conn, schema, table, frame)

    @staticmethod
    def _pg_copy(conn: Any, schema: str, table: str, frame: pd.DataFrame) -> None:
        """Bulk insert through COPY (orders of magnitude faster than INSERTs)."""
        buffer = io.StringIO()
        frame.to_csv(buffer, index=False, header=False, quoting=csv.QUOTE_MINIMAL, na_rep="\\N")
        buffer.seek(0)
        columns = ", ".join(f'"{c}"' for c in frame.columns)
        raw = conn.connection.dbapi_connection
        with raw.cursor() as cur:
            cur.copy_expert(f"COPY {schema}.{table} ({columns}) FROM STDIN WITH (FORMAT csv, NULL '\\N')", buffer)

    @staticmethod
    def _where(match: dict[str, Any], placeholder: str) -> tuple[str, list[Any], dict[str, Any]]:
        """``col = value`` for each item (``IS NULL`` for None), as positional and named parameters."""
        clauses, positional, named = [], [], {}
        for index, (column, value) in enumerate(sorted(match.items())):
            column = checked_identifier(column)
            if value is None:
                clauses.append(f"{column} IS NULL")
            else:
                clauses.append(f"{column} = {placeholder.format(index)}")
                positional.append(value)
                named[f"p{index}"] = value
        return " AND ".join(clauses) or "TRUE", positional, named

    def delete_where(self, schema: str, table: str, match: dict[str, Any]) -> None:
        schema, table = checked_identifier(schema), checked_identifier(table)
        self._where(match, "?")  # validates column names before anything else
        if not self.table_exists(schema, table):
            return
        if self.is_postgres:
            from sqlalchemy import text

            where, _, named = self._where(match, ":p{}")
            with self._pg_engine().begin() as conn:
                conn.execute(text(f"DELETE FROM {schema}.{table} WHERE {where}"), named)
        else:
            where, positional, _ = self._where(match, "?")
            with self._duck() as con:
                con.execute(f"DELETE FROM {schema}.{table} WHERE {where}", positional)

    def replace_rows(self, schema: str, table: str, match: dict[str, Any], frame: pd.DataFrame) -> None:
        """Atomically replace the rows matching ``match`` by ``frame`` (idempotent re-materialisation)."""
        schema, table = checked_identifier(schema), checked_identifier(table)
        frame = _typed_nulls(frame)
        if not self.table_exists(schema, table):
            self.write_table(schema, table, frame, mode="replace")
            return
        if self.is_postgres:
            from sqlalchemy import text

            where, _, named = self._where(match, ":p{}")
            engine = self._pg_engine()
            with engine.begin() as conn:
                conn.execute(text(f"DELETE FROM {schema}.{table} WHERE {where}"), named)
                if len(frame):
                    self._pg_copy(conn, schema, table, frame)
        else:
            where, positional, _ = self._where(match, "?")
            with self._duck() as con:
                con.execute("BEGIN TRANSACTION")
                try:
                    con.execute(f"DELETE FROM {schema}.{table} WHERE {where}", positional)
                    if len(frame):
                        con.register("incoming_frame", frame)
                        con.execute(f"INSERT INTO {schema}.{table} BY NAME SELECT * FROM incoming_frame")
                        con.unregister("incoming_frame")
                    con.execute("COMMIT")
                except Exception:
                    con.execute("ROLLBACK")
                    raise

    def replace_values(self, schema: str, table: str, column: str, old_to_new: pd.DataFrame) -> None:
        """In one transaction, set ``column`` to ``new_value`` wherever it equals ``old_value`` (the two columns
        of ``old_to_new``); every other column and row is left as it is (e.g. rewrapped ciphertexts)."""
        schema, table, column = checked_identifier(schema), checked_identifier(table), checked_identifier(column)
        qualified = f"{schema}.{table}"
        mapping = old_to_new[["old_value", "new_value"]]
        if self.is_postgres:
            from sqlalchemy import text

            with self._pg_engine().begin() as conn:
                conn.execute(text("CREATE TEMP TABLE medllm_value_map (old_value text PRIMARY KEY, new_value text) "
                                  "ON COMMIT DROP"))
                self._pg_copy(conn, "pg_temp", "medllm_value_map", mapping)
                conn.execute(text(f"UPDATE {qualified} AS t SET {column} = m.new_value FROM medllm_value_map AS m "
                                  f"WHERE t.{column} = m.old_value"))
            return
        with self._duck() as con:
            con.execute("BEGIN TRANSACTION")
            try:
                con.register("medllm_value_map", mapping)
                con.execute(f"UPDATE {qualified} SET {column} = m.new_value FROM medllm_value_map AS m "
                            f"WHERE {qualified}.{column} = m.old_value")
                con.unregister("medllm_value_map")
                con.execute("COMMIT")
            except Exception:
                con.execute("ROLLBACK")
                raise

    # --- reads ------------------------------------------------------------
    def read_table(self, schema: str, table: str) -> pd.DataFrame:
        schema, table = checked_identifier(schema), checked_identifier(table)
        return self.query(f"SELECT * FROM {schema}.{table}")

    def query(self, sql: str, params: dict[str, Any] | None = None) -> pd.DataFrame:
        if self.is_postgres:
            from sqlalchemy import text

            with self._pg_engine().connect() as conn:
                return pd.read_sql(text(sql), conn, params=params or {})
        with self._duck() as con:
            if params:
                return con.execute(_named_to_duck(sql), params).df()
            return con.execute(sql).df()

    def table_exists(self, schema: str, table: str) -> bool:
        return (schema, table) in set(self.list_tables())

    def list_tables(self) -> list[tuple[str, str]]:
        sql = (
            "SELECT table_schema, table_name FROM information_schema.tables "
            "WHERE table_schema NOT IN ('information_schema', 'pg_catalog')"
        )
        if self.is_postgres:
            frame = self.query(sql)
        else:
            if not self.duckdb_path.exists():
                return []
            with self._duck() as con:
                frame = con.execute(sql).df()
        return [(str(s), str(t)) for s, t in frame.itertuples(index=False)]

    @staticmethod
    def _duck_exists(con: Any, schema: str, table: str) -> bool:
        row = con.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = ? AND table_name = ?",
            [schema, table],
        ).fetchone()
        return bool(row and row[0])

    def iter_tables(self) -> Iterable[tuple[str, str, pd.DataFrame]]:
        """Every table with its contents (used by the leak scan)."""
        for schema, table in self.list_tables():
            yield schema, table, self.read_table(schema, table)


def _typed_nulls(frame: pd.DataFrame) -> pd.DataFrame:
    """All-null object columns become text, so a first (empty) write does not
    create a column of type NULL that later appends cannot fill."""
    empty_object = [c for c in frame.columns if frame[c].dtype == object and frame[c].isna().all()]
    if not empty_object:
        return frame
    return frame.astype({c: "string" for c in empty_object})


def _named_to_duck(sql: str) -> str:
    """Translate SQLAlchemy-style ``:name`` parameters to DuckDB's ``$name``."""
    return re.sub(r"(?<!:):([a-z_][a-z0-9_]*)", r"$\1", sql)
