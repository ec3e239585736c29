"""Label stage: labelled sets an auditor can trust (clause 5.1.4, rows D10-D11).

Import assets read annotations from the encrypted raw zone (label JSONL,
brat standoff, NIfTI masks, DICOM SEG, COCO boxes), reject what the
guideline or the registry does not allow, and write pseudonymised tables to
the warehouse with agreement statistics; a blocking check fails a set whose
agreement is below its guideline's thresholds. Disagreements feed the
adjudication queue; expert decisions come back as label JSONL from
registered adjudicators; accepted labels are audited on a hash-drawn sample;
weak labels from codes are compared with the human ones.

The domain work is in ``lib/label`` (``imports``, ``adjudication``, ``audit``,
``weak``, ``conditions``); these bodies read, call it, write and report.
"""


import pandas as pd
from dagster import (
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetCheckSeverity,
    AssetExecutionContext,
    AssetKey,
    AssetSpec,
    MaterializeResult,
    MetadataValue,
    asset,
    asset_check,
    multi_asset,
)

from medllm_pipelines.defs import keys
from medllm_pipelines.defs.audit_tables import record_quarantine
from medllm_pipelines.defs.checks import identifier_leak_gate
from medllm_pipelines.defs.keys import asset_name, raw_table_name, warehouse_location
from medllm_pipelines.defs.metadata import frame_metadata, versions_metadata
from medllm_pipelines.lib.common.warehouse import Warehouse
from medllm_pipelines.lib.curate.cards import card_markdown, write_card
from medllm_pipelines.lib.curate.spec import load_spec
from medllm_pipelines.lib.label.adjudication import adjudicate
from medllm_pipelines.lib.label.audit import audit_labelled_set, sampling_rules
from medllm_pipelines.lib.label.conditions import label_from_conditions
from medllm_pipelines.lib.label.imports import (
    DECISIONS,
    ENTITIES,
    IMAGES,
    TRIAGE,
    LabelInputs,
    RawTables,
    agreement_rows,
    check_agreement,
    import_annotation_set,
)
from medllm_pipelines.lib.label.registry import load_guidelines, load_registry
from medllm_pipelines.lib.label.weak import compare_weak_labels, load_weak_rules
from medllm_pipelines.resources.artifacts import ArtifactStoreResource
from medllm_pipelines.resources.raw_zone import RawZoneResource
from medllm_pipelines.resources.vault import VaultResource
from medllm_pipelines.resources.warehouse import WarehouseResource

LABELLED_SET_KEYS = {
    "triage_labels": keys.TRIAGE_LABELS,
    "clinical_entities": keys.CLINICAL_ENTITIES,
    "lesion_masks": keys.LESION_MASKS,
    "lesion_boxes": keys.LESION_BOXES,
}
IMPORT_OF_SET = {
    "triage_labels": keys.TRIAGE_ANNOTATIONS,
    "clinical_entities": keys.ENTITY_ANNOTATIONS,
    "lesion_masks": keys.IMAGE_ANNOTATIONS,
    "lesion_boxes": keys.IMAGE_ANNOTATIONS,
}
IMPORT_KIND = {
    keys.TRIAGE_ANNOTATIONS: TRIAGE,
    keys.ENTITY_ANNOTATIONS: ENTITIES,
    keys.IMAGE_ANNOTATIONS: IMAGES,
    keys.EXPERT_DECISIONS: DECISIONS,
}
RAW_TABLES = RawTables(
    annotations=raw_table_name(keys.RAW_ANNOTATIONS),
    dialogues=raw_table_name(keys.RAW_DIALOGUES),
    dicom_instances=raw_table_name(keys.RAW_DICOM_INSTANCES),
    medication_requests=raw_table_name(keys.RAW_MEDICATION_REQUESTS),
    pseudonym_map=raw_table_name(keys.PSEUDONYM_MAP),
)


def label_inputs(raw_zone: RawZoneResource, warehouse: WarehouseResource) -> LabelInputs:
    """The raw-zone tables, stored files and person link the label assets read (each read once, on first use);
    landing paths are decrypted with the raw zone's own Vault client."""
    return LabelInputs(raw_zone.get(), warehouse.get(), RAW_TABLES, warehouse_location(keys.CONSENT_REGISTRY),
                       raw_zone.vault.decrypt)


def warehouse_table(wh: Warehouse, asset_key: AssetKey) -> pd.DataFrame:
    return wh.read_table(*warehouse_location(asset_key))


@asset(
    key=keys.DIABETES_LABELS,
    deps=[keys.DEID_PATIENTS, keys.DEID_CONDITIONS, keys.CONSENT_REGISTRY],
    group_name=keys.LABEL,
    kinds={"python", "duckdb"},
)
def diabetes_labels(context: AssetExecutionContext, warehouse: WarehouseResource) -> MaterializeResult:
    """Type 2 diabetes labels (ICD-10 E11 from any institution) for persons with a granted research consent."""
    wh = warehouse.get()
    spec = load_spec(keys.DIABETES_SPEC_ID)
    labelled = label_from_conditions(warehouse_table(wh, keys.DEID_PATIENTS), warehouse_table(wh, keys.DEID_CONDITIONS),
                                     warehouse_table(wh, keys.CONSENT_REGISTRY), spec.target_icd10_category)
    wh.write_table(*warehouse_location(keys.DIABETES_LABELS), labelled.frame)
    return MaterializeResult(
        metadata={
            **frame_metadata(labelled.frame),
            **labelled.as_metadata(),
            "label_source": f"ICD-10 {spec.target_icd10_category} (weak label from coded diagnoses)",
            **spec.as_metadata(),
            **versions_metadata(),
        }
    )


# --- imports ----------------------------------------------------------------------------
def annotation_import(asset_key: AssetKey, deps: list[AssetKey], description: str):
    """An import asset: one ``lib/label/imports`` call, then the table, its quarantine and agreement rows."""

    @asset(key=asset_key, deps=deps, group_name=keys.LABEL, kinds={"python", "duckdb"}, description=description)
    def _import(
        context: AssetExecutionContext, raw_zone: RawZoneResource, vault: VaultResource, warehouse: WarehouseResource
    ) -> MaterializeResult:
        wh = warehouse.get()
        imported = import_annotation_set(IMPORT_KIND[asset_key], label_inputs(raw_zone, warehouse),
                                         load_registry(), load_guidelines(), vault.hmac_many, asset_name(asset_key))
        wh.write_table(*warehouse_location(asset_key), imported.frame)
        quarantine_meta = record_quarantine(wh, asset_key, imported.quarantine)
        quarantine_meta.pop("quarantined")  # records_quarantined (the reconciliation's) says it
        for labelled_set, row in agreement_rows(imported.reports):
            wh.replace_rows(keys.LABEL, keys.LABEL_AGREEMENT_TABLE, {"labelled_set": labelled_set}, row)
        return MaterializeResult(
            metadata={**frame_metadata(imported.frame), **imported.as_metadata(), **quarantine_meta, **versions_metadata()}
        )

    return _import


triage_annotations = annotation_import(
    keys.TRIAGE_ANNOTATIONS,
    [keys.RAW_ANNOTATIONS, keys.RAW_DIALOGUES, keys.PSEUDONYM_MAP, keys.CONSENT_REGISTRY],
    "Department labels of pre-consultation dialogues, one row per (item, annotator); "
    "Cohen (pairs), Fleiss and Krippendorff agreement.",
)
entity_annotations = annotation_import(
    keys.ENTITY_ANNOTATIONS,
    [keys.LANDED_FILES, keys.RAW_DIALOGUES, keys.PSEUDONYM_MAP, keys.CONSENT_REGISTRY],
    "brat standoff entities and relations (offsets, type; surface text only for non-identifier types), "
    "one row per annotation and annotator; character-level kappa/alpha and span F1.",
)
image_annotations = annotation_import(
    keys.IMAGE_ANNOTATIONS,
    [keys.LANDED_FILES, keys.RAW_DICOM_INSTANCES, keys.PSEUDONYM_MAP, keys.CONSENT_REGISTRY],
    "Lesion masks (NIfTI, DICOM SEG) and boxes (COCO) per image and annotator, keyed by image_id "
    "(keyed hash of the SOPInstanceUID); pairwise Dice and IoU.",
)
expert_decisions = annotation_import(
    keys.EXPERT_DECISIONS,
    [keys.RAW_ANNOTATIONS, keys.RAW_DIALOGUES, keys.RAW_DICOM_INSTANCES, keys.PSEUDONYM_MAP, keys.CONSENT_REGISTRY],
    "Decisions of registered adjudicators (a label, accept:<annotator> or reject) and auditors' "
    "verdicts, imported back from label JSONL and keyed like the items they decide.",
)


# --- review queue and labelled sets ----------------------------------------------------------------
ADJUDICATION_DEPS = [keys.TRIAGE_ANNOTATIONS, keys.ENTITY_ANNOTATIONS, keys.IMAGE_ANNOTATIONS, keys.EXPERT_DECISIONS,
                     keys.DEID_PATIENTS]
ADJUDICATION_OUTPUTS = {
    keys.ADJUDICATION_QUEUE: "Items needing expert review (annotators disagree beyond the guideline's review rule), "
    "open or resolved by a registered adjudicator's decision.",
    keys.TRIAGE_LABELS: "Accepted department labels: unanimous or adjudicated.",
    keys.CLINICAL_ENTITIES: "Accepted entities: marked by a majority of annotators, or the adjudicated annotator's.",
    keys.LESION_MASKS: "Accepted lesion masks (pixel-wise majority or adjudicated), RLE per image.",
    keys.LESION_BOXES: "Accepted lesion boxes (around the majority region, or adjudicated).",
}


@multi_asset(
    name="adjudication",
    specs=[AssetSpec(key, deps=ADJUDICATION_DEPS, group_name=keys.LABEL, kinds={"python", "duckdb"}, description=text)
           for key, text in ADJUDICATION_OUTPUTS.items()],
)
def adjudication(context: AssetExecutionContext, warehouse: WarehouseResource, artifacts: ArtifactStoreResource):
    wh = warehouse.get()
    guidelines, registry = load_guidelines(), load_registry()
    review = adjudicate(*(warehouse_table(wh, key) for key in ADJUDICATION_DEPS[:4]), guidelines)
    wh.write_table(*warehouse_location(keys.ADJUDICATION_QUEUE), review.queue)
    yield MaterializeResult(
        asset_key=keys.ADJUDICATION_QUEUE,
        metadata={**frame_metadata(review.queue), **review.queue_metadata(),
                  "open_items_preview": MetadataValue.md(review.queue_markdown()), **versions_metadata()},
    )
    patients, folder = warehouse_table(wh, keys.DEID_PATIENTS), artifacts.folder("reports", "datasets")
    for name, accepted in review.sets.items():
        key = LABELLED_SET_KEYS[name]
        wh.write_table(*warehouse_location(key), accepted.frame)
        card = accepted.card(asset=asset_name(key), sources=[asset_name(IMPORT_OF_SET[name]), asset_name(keys.EXPERT_DECISIONS)],
                             patients=patients, guidelines=guidelines)
        paths = write_card(card, folder)
        yield MaterializeResult(
            asset_key=key,
            metadata={
                **frame_metadata(accepted.frame),
                **accepted.as_metadata(card, guidelines, registry),
                "dataset_card": MetadataValue.md(card_markdown(card)),
                "dataset_card_path": MetadataValue.path(paths["json"]),
                **versions_metadata(),
            },
        )


@asset(
    key=keys.LABEL_AUDIT,
    deps=[keys.TRIAGE_LABELS, keys.TRIAGE_ANNOTATIONS, keys.EXPERT_DECISIONS],
    group_name=keys.LABEL,
    kinds={"python", "duckdb"},
    description="Random-sample audit of accepted labels: the auditor's verdict on hash-sampled items, with the error rate.",
)
def label_audit(context: AssetExecutionContext, warehouse: WarehouseResource) -> MaterializeResult:
    wh = warehouse.get()
    result = audit_labelled_set(warehouse_table(wh, keys.TRIAGE_LABELS), warehouse_table(wh, keys.TRIAGE_ANNOTATIONS),
                                warehouse_table(wh, keys.EXPERT_DECISIONS), "triage_labels")
    wh.write_table(*warehouse_location(keys.LABEL_AUDIT), result.frame)
    return MaterializeResult(
        metadata={**frame_metadata(result.frame), **result.as_metadata(),
                  "sampling": MetadataValue.json(sampling_rules(load_guidelines())), **versions_metadata()}
    )


@asset(
    key=keys.WEAK_LABEL_COMPARISON,
    deps=[keys.TRIAGE_LABELS, keys.DEID_CONDITIONS, keys.RAW_MEDICATION_REQUESTS, keys.PSEUDONYM_MAP],
    group_name=keys.LABEL,
    kinds={"python", "duckdb"},
    description="Weak department labels from codes (ICD-10 conditions, medications) against the accepted human labels.",
)
def weak_label_comparison(context: AssetExecutionContext, raw_zone: RawZoneResource, warehouse: WarehouseResource) -> MaterializeResult:
    wh, inputs = warehouse.get(), label_inputs(raw_zone, warehouse)
    comparison = compare_weak_labels(warehouse_table(wh, keys.TRIAGE_LABELS), warehouse_table(wh, keys.DEID_CONDITIONS),
                                     inputs.raw_table("medication_requests"), inputs.pseudonym_map, load_weak_rules())
    wh.write_table(*warehouse_location(keys.WEAK_LABEL_COMPARISON), comparison.frame)
    return MaterializeResult(
        metadata={**frame_metadata(comparison.frame), **comparison.as_metadata(), **versions_metadata()}
    )


# --- checks -----------------------------------------------------------------------------------------
def agreement_gate(import_key: AssetKey):
    """Blocking check: the set's agreement, recomputed from the stored annotations, meets its guideline's thresholds."""

    @asset_check(
        asset=import_key,
        name=keys.CHECK_AGREEMENT,
        blocking=True,
        description="Inter-annotator agreement (recomputed from the warehouse table) meets every threshold of the "
        "guideline versions the annotations name; an undefined statistic fails.",
    )
    def _agreement_gate(context: AssetCheckExecutionContext, warehouse: WarehouseResource) -> AssetCheckResult:
        verdict = check_agreement(IMPORT_KIND[import_key], warehouse_table(warehouse.get(), import_key), load_guidelines())
        return AssetCheckResult(passed=verdict.passed, severity=AssetCheckSeverity.ERROR,
                                description=verdict.description, metadata=verdict.as_metadata())

    return _agreement_gate


ASSETS = [
    diabetes_labels,
    triage_annotations,
    entity_annotations,
    image_annotations,
    expert_decisions,
    adjudication,
    label_audit,
    weak_label_comparison,
]
CHECKS = [
    *(agreement_gate(k) for k in (keys.TRIAGE_ANNOTATIONS, keys.ENTITY_ANNOTATIONS, keys.IMAGE_ANNOTATIONS)),
    identifier_leak_gate(keys.ENTITY_ANNOTATIONS),
    identifier_leak_gate(keys.CLINICAL_ENTITIES),
]
