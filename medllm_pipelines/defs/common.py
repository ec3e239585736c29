"""What every asset needs to tell an auditor: counts, hashes, versions, links."""


import subprocess
from functools import lru_cache
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import pandas as pd
from dagster import AssetKey, MetadataValue, TableColumn, TableSchema

from medllm_pipelines.defs.keys import AUDIT_SCHEMA, FILE_OUTCOMES_TABLE, QUARANTINE_TABLE
from medllm_pipelines.lib.common.records import (
    FileOutcomes,
    QuarantineRecord,
    Reconciliation,
    frame_content_hash,
    quarantine_frame,
)
from medllm_pipelines.lib.common.versions import package_versions as versions_of
from medllm_pipelines.lib.common.warehouse import Warehouse

TRACKED_PACKAGES = ("medllm-pipelines", "dagster", "pandas", "fhir.resources", "pydicom", "great-expectations")


def asset_name(asset_key: AssetKey) -> str:
    return "/".join(asset_key.path)


def raw_table_name(asset_key: AssetKey) -> str:
    """Raw-zone table file name of an identifiable asset."""
    return "_".join(asset_key.path)


def warehouse_location(asset_key: AssetKey) -> tuple[str, str]:
    """De-identified assets live in schema ``<stage>``, table ``<name>``."""
    return asset_key.path[0], asset_key.path[1]


@lru_cache(maxsize=1)
def code_version() -> str:
    """Git commit of the running code (``+dirty`` if modified), else the package version."""
    root = Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        return f"{commit}{'+dirty' if dirty else ''}"
    except (OSError, subprocess.SubprocessError):
        return importlib_metadata.version("medllm-pipelines")


@lru_cache(maxsize=1)
def package_versions() -> dict[str, str]:
    return versions_of(TRACKED_PACKAGES)


def versions_metadata(**extra_versions: str) -> dict[str, Any]:
    return {
        "code_version": code_version(),
        "package_versions": MetadataValue.json(package_versions()),
        **{f"{name}_version": version for name, version in extra_versions.items()},
    }


def table_schema(frame: pd.DataFrame) -> TableSchema:
    return TableSchema(columns=[TableColumn(name=str(c), type=str(t)) for c, t in frame.dtypes.items()])


def frame_metadata(frame: pd.DataFrame, *, with_schema: bool = True) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "dagster/row_count": len(frame),
        "content_sha256": frame_content_hash(frame),
    }
    if with_schema:
        meta["dagster/column_schema"] = table_schema(frame)
    return meta


def reconciliation_metadata(recon: Reconciliation) -> dict[str, Any]:
    return recon.as_metadata()


def record_quarantine(
    warehouse: Warehouse, asset_key: AssetKey, records: list[QuarantineRecord], partition: str | None = None
) -> dict[str, Any]:
    """Replace this asset's (and partition's) rows in ``audit.quarantine``; return counts for metadata.

    Replacing (not appending) keeps re-materialisation idempotent.
    """
    frame = quarantine_frame(records).assign(partition=partition).astype({"partition": "string"})
    name = asset_name(asset_key)
    warehouse.replace_rows(AUDIT_SCHEMA, QUARANTINE_TABLE, {"asset": name, "partition": partition}, frame)
    by_reason = frame["reason_code"].value_counts().sort_index().to_dict() if len(frame) else {}
    by_institution = frame["institution"].fillna("<none>").value_counts().sort_index().to_dict() if len(frame) else {}
    return {
        "quarantined": len(frame),
        "quarantined_by_reason": MetadataValue.json({str(k): int(v) for k, v in by_reason.items()}),
        "quarantined_by_institution": MetadataValue.json({str(k): int(v) for k, v in by_institution.items()}),
    }


def record_file_outcomes(warehouse: Warehouse, outcomes: FileOutcomes, partition: str | None = None) -> dict[str, Any]:
    """Replace this asset's (and partition's) rows in ``audit.file_outcomes``: per landed file, its
    records in, out, quarantined and removed by rule, so that ``medllm reconcile`` accounts for every file.

    Raises when a file does not balance: a parser that loses or invents records is a bug, not data.
    """
    unbalanced = outcomes.unbalanced()
    if unbalanced:
        first = unbalanced[0]
        raise ValueError(
            f"{outcomes.asset}: {len(unbalanced)} files do not reconcile, e.g. object {first.source_object[:12]}: "
            f"in={first.records_in} out={first.records_out} quarantined={first.quarantined} removed={first.removed_by_rule}"
        )
    frame = outcomes.frame().assign(partition=partition).astype({"partition": "string"})
    warehouse.replace_rows(AUDIT_SCHEMA, FILE_OUTCOMES_TABLE, {"asset": outcomes.asset, "partition": partition}, frame)
    return {"files_accounted": len(frame)}


def reconciliation_by_institution(
    records_in: pd.DataFrame, records_out: pd.DataFrame, quarantine: list[QuarantineRecord]
) -> dict[str, dict[str, int]]:
    """Per institution: in, out, quarantined, and removed by declared rules (the remainder).

    The rule removals are counted exactly per rule at the stage level
    (``Reconciliation``); per institution they are what is left, and a
    negative remainder would mean records were invented, which is refused.
    """
    def counts(frame: pd.DataFrame) -> dict[str, int]:
        if frame.empty or "institution" not in frame.columns:
            return {}
        return {str(k): int(v) for k, v in frame["institution"].fillna("<none>").value_counts().items()}

    seen_in, seen_out = counts(records_in), counts(records_out)
    held: dict[str, int] = {}
    for record in quarantine:
        key = record.institution or "<none>"
        held[key] = held.get(key, 0) + 1
    result = {}
    for institution in sorted(set(seen_in) | set(seen_out) | set(held)):
        n_in, n_out, n_held = seen_in.get(institution, 0), seen_out.get(institution, 0), held.get(institution, 0)
        removed = n_in - n_out - n_held
        if removed < 0:
            raise ValueError(f"institution {institution}: more records out than in")
        result[institution] = {"in": n_in, "out": n_out, "quarantined": n_held, "removed": removed}
    return result


def counts_by(frame: pd.DataFrame, column: str) -> MetadataValue:
    if column not in frame.columns or frame.empty:
        return MetadataValue.json({})
    counts = frame[column].fillna("<none>").astype(str).value_counts().sort_index()
    return MetadataValue.json({str(k): int(v) for k, v in counts.items()})


def run_id_of(context: Any) -> str:
    """The Dagster run id, or a marker when an asset is invoked directly (benchmarks, notebooks)."""
    from dagster._core.errors import DagsterInvalidPropertyError

    try:
        return context.run.run_id
    except DagsterInvalidPropertyError:
        return "direct-invocation"
