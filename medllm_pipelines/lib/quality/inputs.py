"""The quality stage's view of a parsed raw table: always the table's declared columns and types.

A partition with nothing in it (a source that sent nothing yet, a landing zone
with nothing new, every file quarantined) is stored with the lineage columns
only; cleaning reads it as an empty table of the declared schema, so an empty
input gives an empty, well-typed output instead of a ``KeyError``.
"""

from __future__ import annotations

import pandas as pd

from medllm_pipelines.lib.ingest.tables import PANDAS_DTYPES, TABLE_SCHEMAS, rows_to_frame

__all__ = ["conform_parsed_table"]

def conform_parsed_table(frame: pd.DataFrame, table: str) -> pd.DataFrame:
    """``frame`` with every declared column of the parsed ``table`` (missing ones empty, typed).

    Columns beyond the declaration are kept: the schema is a floor, not a filter.
    """
    if table not in TABLE_SCHEMAS:
        raise ValueError(f"no declared schema for parsed table {table!r}")
    if frame.empty:
        extra = [c for c in frame.columns if c not in TABLE_SCHEMAS[table]]
        typed = rows_to_frame(table, [])
        return typed.assign(**{c: pd.Series(dtype=frame[c].dtype) for c in extra}) if extra else typed
    missing = {name: kind for name, kind in TABLE_SCHEMAS[table] if name not in frame.columns}
    if not missing:
        return frame
    return frame.assign(**{name: pd.Series(pd.NA if kind != "float64" else float("nan"), index=frame.index,
                                           dtype=PANDAS_DTYPES[kind]) for name, kind in missing.items()})
