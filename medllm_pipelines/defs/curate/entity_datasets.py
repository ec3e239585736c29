"""Curate stage, text: the clinical_entities spec's dataset (accepted SYMPTOM/DISEASE/DRUG spans realigned to the
de-identified dialogue text) and its leak-proof, patient-grouped splits (clauses 5.2.1.1-2, rows M1-M2)."""
# No `from __future__ import annotations` here: Dagster reads the asset functions' annotations.

from dagster import AssetExecutionContext, MaterializeResult, asset

from medllm_pipelines.defs import keys
from medllm_pipelines.defs.curate.spec_datasets import dataset_result, leakage_check_spec, splits_result
from medllm_pipelines.defs.keys import warehouse_location
from medllm_pipelines.defs.metadata import counts_by
from medllm_pipelines.lib.curate.datasets_entities import ENTITY_SPEC_ID
from medllm_pipelines.lib.curate.spec import load_spec
from medllm_pipelines.resources.warehouse import WarehouseResource


@asset(
    key=keys.ENTITY_DATASET,
    deps=[keys.CLINICAL_ENTITIES, keys.DEID_DIALOGUES],
    group_name=keys.CURATE,
    kinds={"python", "duckdb"},
    description="Accepted SYMPTOM/DISEASE/DRUG spans realigned by surface string to the patient turns of the "
    "de-identified dialogue (one row per dialogue, spans as JSON); PERSON/PHONE never labels; every entity not "
    "realigned counted under its reason (records_in = spans_out + dropped).",
)
def entity_dataset(context: AssetExecutionContext, warehouse: WarehouseResource) -> MaterializeResult:
    from medllm_pipelines.lib.curate.datasets_entities import build_entity_dataset

    wh = warehouse.get()
    spec = load_spec(ENTITY_SPEC_ID)
    dataset = build_entity_dataset(wh.read_table(*warehouse_location(keys.CLINICAL_ENTITIES)),
                                   wh.read_table(*warehouse_location(keys.DEID_DIALOGUES)),
                                   spec.target.get("entity_types"))
    return dataset_result(context, wh, spec, keys.ENTITY_DATASET, dataset.frame, {
        **dataset.as_metadata(), "rows_by_language": counts_by(dataset.frame, "language")})


@asset(
    key=keys.ENTITY_SPLITS,
    deps=[keys.ENTITY_DATASET],
    group_name=keys.CURATE,
    kinds={"python", "duckdb"},
    description="Patient-grouped, language-stratified 70/15/15 split (seeded) of the entity dataset; copies of a "
    "dialogue share a split. Blocking check: no patient, dialogue or near-duplicate text in two splits.",
    check_specs=[leakage_check_spec(keys.ENTITY_SPLITS,
                                    "No patient, dialogue or near-duplicate text is in more than one split.")],
)
def entity_splits(context: AssetExecutionContext, warehouse: WarehouseResource) -> MaterializeResult:
    from medllm_pipelines.lib.curate.datasets_entities import ENTITY_LEAKAGE_KEYS, split_entity_dialogues

    wh = warehouse.get()
    spec = load_spec(ENTITY_SPEC_ID)
    outcome = split_entity_dialogues(wh.read_table(*warehouse_location(keys.ENTITY_DATASET)), spec.split_config)
    return splits_result(wh, spec, keys.ENTITY_SPLITS, outcome, ENTITY_LEAKAGE_KEYS, label="language")


ASSETS = [entity_dataset, entity_splits]
