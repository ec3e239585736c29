"""What every spec's dataset and splits asset does around its library call: write the table, weigh it against the
spec's data needs, report (frame, reconciliation, spec declaration, versions); for splits, re-read what was written
and gate it with the blocking leakage check. The assets (triage, entities, sequences, note pairs) differ only in
what they read and the library function they call.
"""
# No `from __future__ import annotations` here, as in every defs module.

from collections.abc import Sequence
from typing import Any

import pandas as pd
from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetKey,
    MaterializeResult,
    MetadataValue,
)

from medllm_pipelines.defs import keys
from medllm_pipelines.defs.keys import warehouse_location
from medllm_pipelines.defs.metadata import frame_metadata, versions_metadata


def spec_metadata(spec) -> dict[str, Any]:
    return {**spec.as_metadata(), "model_spec_declaration": MetadataValue.json(spec.describe())}


def dataset_result(context: AssetExecutionContext, wh, spec, asset_key: AssetKey, frame: pd.DataFrame,
                   metadata: dict[str, Any]) -> MaterializeResult:
    """Write ``frame`` as ``asset_key``'s table; warn (no model will train) when it is below the spec's needs."""
    wh.write_table(*warehouse_location(asset_key), frame)
    needs = spec.needs_met_by(len(frame))
    if not needs.met:
        context.log.warning(f"{needs.reason}: the dataset is built, no model will be trained")
    return MaterializeResult(metadata={
        **frame_metadata(frame, table=".".join(warehouse_location(asset_key))), **metadata, **needs.as_metadata(),
        **spec_metadata(spec), **versions_metadata(),
    })


def leakage_check_spec(asset_key: AssetKey, description: str) -> AssetCheckSpec:
    return AssetCheckSpec(keys.CHECK_NO_LEAKAGE, asset=asset_key, blocking=True, description=description)


def splits_result(wh, spec, asset_key: AssetKey, outcome, leakage_keys: Sequence[str],
                  label: str | None = "label") -> MaterializeResult:
    """Write ``outcome.splits``; the gate re-reads the stored table (it checks what was written, not the frame in
    memory): no value of ``leakage_keys`` in two splits, ``label`` balance per split."""
    from medllm_pipelines.lib.curate.splits import check_leakage

    wh.write_table(*warehouse_location(asset_key), outcome.splits)
    report = check_leakage(wh.read_table(*warehouse_location(asset_key)), leakage_keys, label=label)
    return MaterializeResult(
        metadata={**frame_metadata(outcome.splits, table=".".join(warehouse_location(asset_key))),
                  **outcome.as_metadata(), **spec_metadata(spec), **versions_metadata()},
        check_results=[AssetCheckResult(check_name=keys.CHECK_NO_LEAKAGE, passed=report.passed,
                                        severity=AssetCheckSeverity.ERROR, description=report.verdict,
                                        metadata=report.check_metadata())],
    )
