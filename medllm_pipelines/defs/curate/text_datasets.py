"""Curate stage, text: the triage spec's dataset (accepted department labels + de-identified dialogue text)
and its leak-proof splits (clauses 5.2.1.1-2, rows M1-M2).

The splits asset checks its own leakage (a blocking check declared on it):
no patient, dialogue or near-duplicate text is in two splits.
"""
# No `from __future__ import annotations` here: Dagster reads the asset functions' annotations.

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    MaterializeResult,
    MetadataValue,
    asset,
)

from medllm_pipelines.defs import keys
from medllm_pipelines.defs.keys import warehouse_location
from medllm_pipelines.defs.metadata import counts_by, frame_metadata, versions_metadata
from medllm_pipelines.lib.curate.datasets_text import TRIAGE_SPEC_ID
from medllm_pipelines.lib.curate.spec import load_spec
from medllm_pipelines.resources.warehouse import WarehouseResource


def _spec_metadata(spec) -> dict:
    return {**spec.as_metadata(), "model_spec_declaration": MetadataValue.json(spec.describe())}


@asset(
    key=keys.TRIAGE_DATASET,
    deps=[keys.TRIAGE_LABELS, keys.DEID_DIALOGUES],
    group_name=keys.CURATE,
    kinds={"python", "duckdb"},
    description="What the triage spec asks for: each accepted department label joined to what the patient said in "
    "the de-identified dialogue (patient turns); every label not kept is counted under its reason.",
)
def triage_dataset(context: AssetExecutionContext, warehouse: WarehouseResource) -> MaterializeResult:
    from medllm_pipelines.lib.curate.datasets_text import build_triage_dataset

    wh = warehouse.get()
    spec = load_spec(TRIAGE_SPEC_ID)
    dataset = build_triage_dataset(wh.read_table(*warehouse_location(keys.TRIAGE_LABELS)),
                                   wh.read_table(*warehouse_location(keys.DEID_DIALOGUES)), spec.target.get("classes"))
    wh.write_table(*warehouse_location(keys.TRIAGE_DATASET), dataset.frame)
    needs = spec.needs_met_by(len(dataset.frame))
    if not needs.met:
        context.log.warning(f"{needs.reason}: the dataset is built, no model will be trained")
    return MaterializeResult(
        metadata={
            **frame_metadata(dataset.frame, table=".".join(warehouse_location(keys.TRIAGE_DATASET))),
            **dataset.as_metadata(),
            **needs.as_metadata(),
            "rows_by_label": counts_by(dataset.frame, "label"),
            "rows_by_language": counts_by(dataset.frame, "language"),
            **_spec_metadata(spec),
            **versions_metadata(),
        }
    )


@asset(
    key=keys.TRIAGE_SPLITS,
    deps=[keys.TRIAGE_DATASET],
    group_name=keys.CURATE,
    kinds={"python", "duckdb"},
    description="Patient-grouped, department-stratified 70/15/15 split (seeded) of the triage dataset; copies of a "
    "dialogue share a split. Blocking check: no patient, dialogue or near-duplicate text in two splits.",
    check_specs=[AssetCheckSpec(keys.CHECK_NO_LEAKAGE, asset=keys.TRIAGE_SPLITS, blocking=True,
                                description="No patient (pseudonym), dialogue or near-duplicate text is in more than "
                                "one split; reports department balance per split.")],
)
def triage_splits(context: AssetExecutionContext, warehouse: WarehouseResource) -> MaterializeResult:
    from medllm_pipelines.lib.curate.datasets_text import TRIAGE_LEAKAGE_KEYS, split_texts
    from medllm_pipelines.lib.curate.splits import check_leakage

    wh = warehouse.get()
    spec = load_spec(TRIAGE_SPEC_ID)
    outcome = split_texts(wh.read_table(*warehouse_location(keys.TRIAGE_DATASET)), spec.split_config)
    wh.write_table(*warehouse_location(keys.TRIAGE_SPLITS), outcome.splits)
    # the gate re-reads what was written: it checks the stored table, not the frame in memory
    report = check_leakage(wh.read_table(*warehouse_location(keys.TRIAGE_SPLITS)), TRIAGE_LEAKAGE_KEYS)
    return MaterializeResult(
        metadata={
            **frame_metadata(outcome.splits, table=".".join(warehouse_location(keys.TRIAGE_SPLITS))),
            **outcome.as_metadata(),
            **_spec_metadata(spec),
            **versions_metadata(),
        },
        check_results=[AssetCheckResult(check_name=keys.CHECK_NO_LEAKAGE, passed=report.passed,
                                        severity=AssetCheckSeverity.ERROR, description=report.verdict,
                                        metadata=report.check_metadata())],
    )


ASSETS = [triage_dataset, triage_splits]
