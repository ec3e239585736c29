"""What every asset tells an auditor beside its own figures: row counts, content hash, schema, versions, run id."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import pandas as pd
from dagster import DagsterError, MetadataValue, TableColumn, TableSchema

from medllm_pipelines.lib.common.data_dictionary import DATA_DICTIONARY_VERSION, column_descriptions
from medllm_pipelines.lib.common.records import frame_content_hash
from medllm_pipelines.lib.common.versions import code_version
from medllm_pipelines.lib.common.versions import package_versions as versions_of

TRACKED_PACKAGES = ("medllm-pipelines", "dagster", "pandas", "fhir.resources", "pydicom", "great-expectations")


@lru_cache(maxsize=1)
def package_versions() -> dict[str, str]:
    return versions_of(TRACKED_PACKAGES)


def versions_metadata(**extra_versions: str) -> dict[str, Any]:
    return {
        "code_version": code_version(),
        "package_versions": MetadataValue.json(package_versions()),
        **{f"{name}_version": version for name, version in extra_versions.items()},
    }


def table_schema(
    frame: pd.DataFrame, descriptions: dict[str, str] | None = None, table: str | None = None
) -> TableSchema:
    """The frame's columns and types, with what each holds: the data dictionary's words, where
    ``descriptions`` says nothing else (``table``, ``<schema>.<table>``, picks a table's own meanings)."""
    described = {**column_descriptions(frame.columns, table), **(descriptions or {})}
    return TableSchema(
        columns=[
            TableColumn(name=str(c), type=str(t), description=described.get(str(c))) for c, t in frame.dtypes.items()
        ]
    )


def frame_metadata(
    frame: pd.DataFrame,
    *,
    with_schema: bool = True,
    descriptions: dict[str, str] | None = None,
    table: str | None = None,
) -> dict[str, Any]:
    """Row count, content hash and (``with_schema``) the described column schema with its dictionary version."""
    meta: dict[str, Any] = {
        "dagster/row_count": len(frame),
        "content_sha256": frame_content_hash(frame),
    }
    if with_schema:
        meta["dagster/column_schema"] = table_schema(frame, descriptions, table)
        meta["data_dictionary_version"] = DATA_DICTIONARY_VERSION
    return meta


def counts_by(frame: pd.DataFrame, column: str) -> MetadataValue:
    if column not in frame.columns or frame.empty:
        return MetadataValue.json({})
    counts = frame[column].fillna("<none>").astype(str).value_counts().sort_index()
    return MetadataValue.json({str(k): int(v) for k, v in counts.items()})


def run_id_of(context: Any) -> str:
    """The Dagster run id, or a marker when an asset is invoked directly (benchmarks, notebooks)."""
    try:
        return context.run.run_id
    except DagsterError:  # a directly built context has no run (DagsterInvalidPropertyError, not public)
        return "direct-invocation"
