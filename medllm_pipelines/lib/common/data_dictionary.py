"""What each column of the Python-written warehouse tables holds: ``data_dictionary.yaml``, interpreted.

The words live in a versioned data file (rule 8), so that an auditor reads
the same description in the Dagster UI (every table asset's column schema,
``defs/metadata.py``) as in review, and a change to a meaning is a new
version. A column name has one meaning across tables; where a name means
something else in one table, that table's entry wins when the caller names
the table (``<schema>.<table>``, the warehouse relation).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import yaml

DATA_DICTIONARY_PATH = Path(__file__).with_name("data_dictionary.yaml")


@dataclass(frozen=True)
class DataDictionary:
    """The shared meaning of each column name, and the per-table meanings that override it."""

    version: str
    columns: Mapping[str, str]
    tables: Mapping[str, Mapping[str, str]]

    def describe(self, column: str, table: str | None = None) -> str | None:
        """The column's meaning in ``table`` (its own entry first, else the shared one); None when unknown."""
        if table is not None:
            own = self.tables.get(table, {}).get(column)
            if own is not None:
                return own
        return self.columns.get(column)


def _text(value: object, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"data dictionary: {where} needs a non-empty description")
    return " ".join(value.split())


def load_data_dictionary(path: Path = DATA_DICTIONARY_PATH) -> DataDictionary:
    """Read and check a dictionary file: a version, descriptions as text, tables named ``schema.table``."""
    raw = yaml.safe_load(Path(path).read_text("utf-8")) or {}
    version = raw.get("version")
    if not isinstance(version, str) or not version:
        raise ValueError(f"data dictionary {path}: `version` must be a non-empty string")
    columns = {str(name): _text(text, f"column {name}") for name, text in (raw.get("columns") or {}).items()}
    tables: dict[str, dict[str, str]] = {}
    for table, entries in (raw.get("tables") or {}).items():
        if str(table).count(".") != 1:
            raise ValueError(f"data dictionary {path}: table {table!r} must be named <schema>.<table>")
        tables[str(table)] = {str(c): _text(t, f"{table}.{c}") for c, t in (entries or {}).items()}
    return DataDictionary(version, columns, tables)


@lru_cache(maxsize=1)
def data_dictionary() -> DataDictionary:
    """The package's dictionary, read once per process."""
    return load_data_dictionary()


DATA_DICTIONARY_VERSION: str = data_dictionary().version


def column_descriptions(columns: Iterable[object], table: str | None = None) -> dict[str, str]:
    """Description of each of ``columns`` the dictionary knows, in ``table`` when given; unknown ones are left out."""
    dictionary = data_dictionary()
    found = {str(c): dictionary.describe(str(c), table) for c in columns}
    return {name: text for name, text in found.items() if text is not None}
