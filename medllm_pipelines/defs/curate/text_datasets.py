"""Curate stage, text: the triage spec's dataset (accepted department labels + de-identified dialogue text)
and its leak-proof splits (clauses 5.2.1.1-2, rows M1-M2).

The splits asset checks its own leakage (a blocking check declared on it):
no patient, dialogue or near-duplicate text is in two splits.
"""
# No `from __future__ import annotations` here: Dagster reads the asset functions' annotations.

from dagster import AssetExecutionContext, MaterializeResult, asset

from medllm_pipelines.defs import keys
from medllm_pipelines.defs.curate.spec_datasets import dataset_result, leakage_check_spec, splits_result
from medllm_pipelines.defs.keys import warehouse_location
from medllm_pipelines.defs.metadata import counts_by
from medllm_pipelines.lib.curate.datasets_text import TRIAGE_SPEC_ID
from medllm_pipelines.lib.curate.spec import load_spec
from medllm_pipelines.resources.warehouse import WarehouseResource


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
    return dataset_result(context, wh, spec, keys.TRIAGE_DATASET, dataset.frame, {
        **dataset.as_metadata(), "rows_by_label": counts_by(dataset.frame, "label"),
        "rows_by_language": counts_by(dataset.frame, "language")})


@asset(
    key=keys.TRIAGE_SPLITS,
    deps=[keys.TRIAGE_DATASET],
    group_name=keys.CURATE,
    kinds={"python", "duckdb"},
    description="Patient-grouped, department-stratified 70/15/15 split (seeded) of the triage dataset; copies of a "
    "dialogue share a split. Blocking check: no patient, dialogue or near-duplicate text in two splits.",
    check_specs=[leakage_check_spec(keys.TRIAGE_SPLITS, "No patient (pseudonym), dialogue or near-duplicate text is "
                                    "in more than one split; reports department balance per split.")],
)
def triage_splits(context: AssetExecutionContext, warehouse: WarehouseResource) -> MaterializeResult:
    from medllm_pipelines.lib.curate.datasets_text import TRIAGE_LEAKAGE_KEYS, split_texts

    wh = warehouse.get()
    spec = load_spec(TRIAGE_SPEC_ID)
    outcome = split_texts(wh.read_table(*warehouse_location(keys.TRIAGE_DATASET)), spec.split_config)
    return splits_result(wh, spec, keys.TRIAGE_SPLITS, outcome, TRIAGE_LEAKAGE_KEYS)


ASSETS = [triage_dataset, triage_splits]
