"""Curate stage, generative EHR: the note_generator spec's pairs (de-identified transcript -> the doctor's signed
note) and their patient-grouped splits (clauses 5.2.1.1-2, rows M1-M2; scenario 6.2.2). The splits carry a
blocking leakage check."""
# No `from __future__ import annotations` here: Dagster reads the asset functions' annotations.

from dagster import AssetExecutionContext, MaterializeResult, asset

from medllm_pipelines.defs import keys
from medllm_pipelines.defs.curate.spec_datasets import dataset_result, leakage_check_spec, splits_result
from medllm_pipelines.defs.keys import warehouse_location
from medllm_pipelines.defs.metadata import counts_by
from medllm_pipelines.lib.curate.datasets_notes import NOTE_SPEC_ID
from medllm_pipelines.lib.curate.spec import load_spec
from medllm_pipelines.resources.warehouse import WarehouseResource


@asset(
    key=keys.NOTE_PAIRS,
    deps=[keys.DEID_CONSULTATIONS, keys.CONSENT_REGISTRY],
    group_name=keys.CURATE,
    kinds={"python", "duckdb"},
    description="What the note_generator spec asks for: each consented person's de-identified recorded visit as "
    "(transcript, one 'Speaker: text' line per turn; the doctor's signed note); a visit whose record reads back into "
    "no note field, or with an empty transcript, is counted under its reason (records_in = out + removed).",
)
def note_pairs(context: AssetExecutionContext, warehouse: WarehouseResource) -> MaterializeResult:
    from medllm_pipelines.lib.curate.datasets_notes import build_note_pairs

    wh, spec = warehouse.get(), load_spec(NOTE_SPEC_ID)
    pairs = build_note_pairs(wh.read_table(*warehouse_location(keys.DEID_CONSULTATIONS)),
                             wh.read_table(*warehouse_location(keys.CONSENT_REGISTRY)),
                             spec.data_needs.get("consent", "granted"))
    return dataset_result(context, wh, spec, keys.NOTE_PAIRS, pairs.frame, {
        **pairs.as_metadata(), "rows_by_language": counts_by(pairs.frame, "language"),
        "rows_by_visit_kind": counts_by(pairs.frame, "visit_kind")})


@asset(
    key=keys.NOTE_SPLITS,
    deps=[keys.NOTE_PAIRS],
    group_name=keys.CURATE,
    kinds={"python", "duckdb"},
    description="Patient-grouped 70/15/15 split (seeded, stratified as the spec declares) of the note pairs; copies "
    "of one transcript share a split. Blocking check: no patient, visit or near-duplicate transcript in two splits.",
    check_specs=[leakage_check_spec(keys.NOTE_SPLITS, "No patient, visit or near-duplicate transcript is in more "
                                    "than one split.")],
)
def note_splits(context: AssetExecutionContext, warehouse: WarehouseResource) -> MaterializeResult:
    from medllm_pipelines.lib.curate.datasets_notes import NOTE_LEAKAGE_KEYS, split_note_pairs

    wh, spec = warehouse.get(), load_spec(NOTE_SPEC_ID)
    outcome = split_note_pairs(wh.read_table(*warehouse_location(keys.NOTE_PAIRS)), spec.split_config)
    stratum = spec.split_config.stratify_by
    return splits_result(wh, spec, keys.NOTE_SPLITS, outcome, NOTE_LEAKAGE_KEYS,
                         label=stratum if stratum in outcome.splits.columns else None)


ASSETS = [note_pairs, note_splits]
