"""Label stage: labelled sets an auditor can trust (clause 5.1.4, rows D10-D11).

Import assets read annotations from the encrypted raw zone (label JSONL,
brat standoff, NIfTI masks, DICOM SEG, COCO boxes), reject what the
guideline or the registry does not allow, and write pseudonymised tables to
the warehouse with agreement statistics; a blocking check fails a set whose
agreement is below its guideline's thresholds. Disagreements feed the
adjudication queue; expert decisions come back as label JSONL from
registered adjudicators; accepted labels are audited on a hash-drawn sample;
weak labels from codes are compared with the human ones.
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
from medllm_pipelines.defs.keys import asset_name, raw_table_name, warehouse_location
from medllm_pipelines.defs.metadata import counts_by, frame_metadata, versions_metadata
from medllm_pipelines.defs.checks import identifier_leak_gate
from medllm_pipelines.lib.ingest.intake import stored_objects
from medllm_pipelines.lib.common.records import Reconciliation
from medllm_pipelines.lib.curate.spec import load_spec
from medllm_pipelines.lib.label.conditions import label_from_conditions
from medllm_pipelines.resources.artifacts import ArtifactStoreResource
from medllm_pipelines.resources.raw_zone import RawZoneResource
from medllm_pipelines.resources.vault import VaultResource
from medllm_pipelines.resources.warehouse import WarehouseResource

BRAT_KINDS = ("brat_ann", "brat_text")
IMAGE_KINDS = ("nifti_mask", "dicom_seg", "coco")
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
    labelled = label_from_conditions(
        wh.read_table(*warehouse_location(keys.DEID_PATIENTS)),
        wh.read_table(*warehouse_location(keys.DEID_CONDITIONS)),
        wh.read_table(*warehouse_location(keys.CONSENT_REGISTRY)),
        spec.target_icd10_category,
    )
    frame = labelled.frame
    excluded = sum(labelled.excluded_by_consent.values())
    wh.write_table(*warehouse_location(keys.DIABETES_LABELS), frame)
    return MaterializeResult(
        metadata={
            **frame_metadata(frame),
            "records_in": labelled.persons_in,
            "records_out": len(frame),
            "removed[no_granted_consent]": excluded,
            "reconciled": labelled.persons_in == len(frame) + excluded,
            "excluded_by_consent_status": MetadataValue.json(labelled.excluded_by_consent),
            "rows_by_label": counts_by(frame, "label"),
            "label_source": f"ICD-10 {spec.target_icd10_category} (weak label from coded diagnoses)",
            **spec.as_metadata(),
            **versions_metadata(),
        }
    )


# --- shared helpers -------------------------------------------------------------------
def _raw_table(raw_zone: RawZoneResource, asset_key: AssetKey, columns: list[str]) -> pd.DataFrame:
    """A raw-zone table (all institution partitions), or an empty frame when nothing was ingested."""
    try:
        return raw_zone.get().read_partitions(raw_table_name(asset_key))
    except FileNotFoundError:
        return pd.DataFrame(columns=columns)


def _person_link(raw_zone: RawZoneResource, warehouse: WarehouseResource):
    from medllm_pipelines.lib.label.importers import PersonLink

    pseudonyms = raw_zone.get().read_table(raw_table_name(keys.PSEUDONYM_MAP))
    consent = warehouse.get().read_table(*warehouse_location(keys.CONSENT_REGISTRY))
    return PersonLink.build(pseudonyms, consent)


def _dialogues(raw_zone: RawZoneResource) -> pd.DataFrame:
    return _raw_table(raw_zone, keys.RAW_DIALOGUES, ["dialogue_id", "patient_mrn", "institution"])


def _dicom_index(raw_zone: RawZoneResource) -> pd.DataFrame:
    return _raw_table(raw_zone, keys.RAW_DICOM_INSTANCES,
                      ["sop_instance_uid", "rows", "columns", "institution", "study_uid", "patient_id"])


def _raw_annotations(raw_zone: RawZoneResource) -> pd.DataFrame:
    columns = ["item_id", "annotator_id", "label", "annotated_at", "tool", "guideline_version", "institution",
               "source_object", "source_position"]
    return _raw_table(raw_zone, keys.RAW_ANNOTATIONS, columns)


def _raw_objects(warehouse: WarehouseResource, vault: VaultResource, kinds: tuple[str, ...], with_paths: bool) -> list:
    """Stored annotation files; landing paths decrypted (in memory only) when pairing needs them."""
    from medllm_pipelines.lib.label.importers import RawObject

    ledger = stored_objects(warehouse.get(), kinds)
    return [
        RawObject(row.content_sha256, row.institution, row.file_kind,
                  vault.decrypt(row.source_path_ciphertext).decode("utf-8") if with_paths else "")
        for row in ledger.itertuples(index=False)
    ]


def _guideline_metadata(versions: set[str] | list[str]) -> dict:
    from medllm_pipelines.lib.label.registry import load_guidelines, load_registry

    guidelines = load_guidelines()
    return {
        "guidelines": MetadataValue.json({v: guidelines[v].describe() for v in sorted(versions) if v in guidelines}),
        "annotator_registry_version": load_registry().version,
    }


def _import_metadata(result, frame: pd.DataFrame, records_out: int, quarantine_meta: dict) -> dict:
    recon = Reconciliation(result.records_in, records_out, len(result.quarantine), result.removed)
    return {
        **frame_metadata(frame),
        **recon.as_metadata(),
        "rejected_by_reason": MetadataValue.json(result.quarantined_by_reason),
        "removed_by_reason": MetadataValue.json(result.removed),
        **{k: v for k, v in quarantine_meta.items() if k != "quarantined"},
        "rows_by_institution": counts_by(frame, "institution"),
        **_guideline_metadata(result.guideline_versions),
    }


def _write_agreement(warehouse: WarehouseResource, reports: list) -> None:
    from medllm_pipelines.lib.label.sets import AGREEMENT_COLUMNS

    wh = warehouse.get()
    for report in reports:
        row = pd.DataFrame([report.as_row()], columns=AGREEMENT_COLUMNS)
        wh.replace_rows(keys.LABEL, keys.LABEL_AGREEMENT_TABLE, {"labelled_set": report.labelled_set}, row)


def _agreement_metadata(report) -> dict:
    stats = report.as_dict()
    headline = {k: v for k, v in stats.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    return {
        f"agreement[{report.labelled_set}]": MetadataValue.json(stats),
        **{f"{report.labelled_set}.{k}": v for k, v in headline.items() if v is not None},
        f"{report.labelled_set}.agreement_passed": report.passed,
    }


# --- imports ----------------------------------------------------------------------------
@asset(
    key=keys.TRIAGE_ANNOTATIONS,
    deps=[keys.RAW_ANNOTATIONS, keys.RAW_DIALOGUES, keys.PSEUDONYM_MAP, keys.CONSENT_REGISTRY],
    group_name=keys.LABEL,
    kinds={"python", "duckdb"},
    description="Department labels of pre-consultation dialogues, one row per (item, annotator); "
    "Cohen (pairs), Fleiss and Krippendorff agreement.",
)
def triage_annotations(
    context: AssetExecutionContext, raw_zone: RawZoneResource, vault: VaultResource, warehouse: WarehouseResource
) -> MaterializeResult:
    from medllm_pipelines.lib.label.importers import import_triage_annotations
    from medllm_pipelines.lib.label.registry import load_guidelines, load_registry
    from medllm_pipelines.lib.label.sets import triage_agreement

    guidelines = load_guidelines()
    raw = _raw_annotations(raw_zone)
    result = import_triage_annotations(raw, _dialogues(raw_zone), _person_link(raw_zone, warehouse), load_registry(),
                                       guidelines, vault.hmac_many, asset_name(keys.TRIAGE_ANNOTATIONS))
    frame = result.frame
    warehouse.get().write_table(*warehouse_location(keys.TRIAGE_ANNOTATIONS), frame)
    quarantine_meta = record_quarantine(warehouse.get(), keys.TRIAGE_ANNOTATIONS, result.quarantine)
    report, _ = triage_agreement(frame, guidelines)
    _write_agreement(warehouse, [report])
    return MaterializeResult(
        metadata={
            **_import_metadata(result, frame, len(frame), quarantine_meta),
            "items": int(frame["item_key"].nunique()),
            "annotations_by_annotator": counts_by(frame, "annotator_id"),
            "audit_sample_items": int(frame.loc[frame["audit_sample"], "item_key"].nunique()),
            **_agreement_metadata(report),
            **versions_metadata(),
        }
    )


@asset(
    key=keys.ENTITY_ANNOTATIONS,
    deps=[keys.LANDED_FILES, keys.RAW_DIALOGUES, keys.PSEUDONYM_MAP, keys.CONSENT_REGISTRY],
    group_name=keys.LABEL,
    kinds={"python", "duckdb"},
    description="brat standoff entities and relations (offsets, type; surface text only for non-identifier types), "
    "one row per annotation and annotator; character-level kappa/alpha and span F1.",
)
def entity_annotations(
    context: AssetExecutionContext, raw_zone: RawZoneResource, vault: VaultResource, warehouse: WarehouseResource
) -> MaterializeResult:
    from medllm_pipelines.lib.label.importers import DOCUMENT, import_brat
    from medllm_pipelines.lib.label.registry import load_guidelines, load_registry
    from medllm_pipelines.lib.label.sets import entity_agreement_report

    guidelines = load_guidelines()
    zone = raw_zone.get()
    objects = _raw_objects(warehouse, vault, BRAT_KINDS, with_paths=True)
    result = import_brat(objects, zone.get_object, _dialogues(raw_zone), _person_link(raw_zone, warehouse), load_registry(),
                         guidelines, vault.hmac_many, asset_name(keys.ENTITY_ANNOTATIONS))
    frame = result.frame
    warehouse.get().write_table(*warehouse_location(keys.ENTITY_ANNOTATIONS), frame)
    quarantine_meta = record_quarantine(warehouse.get(), keys.ENTITY_ANNOTATIONS, result.quarantine)
    report, _ = entity_agreement_report(frame, guidelines)
    _write_agreement(warehouse, [report])
    records = frame[frame["kind"] != DOCUMENT]
    return MaterializeResult(
        metadata={
            **_import_metadata(result, frame, len(records), quarantine_meta),
            "source_files": MetadataValue.json({k: sum(o.kind == k for o in objects) for k in BRAT_KINDS}),
            "documents": int(frame["item_key"].nunique()),
            "entities_by_type": counts_by(records[records["kind"] == "entity"], "type"),
            "relations_by_type": counts_by(records[records["kind"] == "relation"], "type"),
            "span_text_policy": "offsets and type always; surface text only for non-identifier entity types "
            "(guideline entity_types.identifier: false) and never over characters marked as an identifier",
            **_agreement_metadata(report),
            **versions_metadata(),
        }
    )


@asset(
    key=keys.IMAGE_ANNOTATIONS,
    deps=[keys.LANDED_FILES, keys.RAW_DICOM_INSTANCES, keys.PSEUDONYM_MAP, keys.CONSENT_REGISTRY],
    group_name=keys.LABEL,
    kinds={"python", "duckdb"},
    description="Lesion masks (NIfTI, DICOM SEG) and boxes (COCO) per image and annotator, keyed by image_id "
    "(keyed hash of the SOPInstanceUID); pairwise Dice and IoU.",
)
def image_annotations(
    context: AssetExecutionContext, raw_zone: RawZoneResource, vault: VaultResource, warehouse: WarehouseResource
) -> MaterializeResult:
    from medllm_pipelines.lib.label.importers import import_images
    from medllm_pipelines.lib.label.registry import load_guidelines, load_registry
    from medllm_pipelines.lib.label.sets import image_agreement_reports

    guidelines = load_guidelines()
    zone = raw_zone.get()
    objects = _raw_objects(warehouse, vault, IMAGE_KINDS, with_paths=False)
    result = import_images(objects, zone.get_object, _dicom_index(raw_zone), _person_link(raw_zone, warehouse), load_registry(),
                           guidelines, vault.hmac_many, asset_name(keys.IMAGE_ANNOTATIONS))
    frame = result.frame
    warehouse.get().write_table(*warehouse_location(keys.IMAGE_ANNOTATIONS), frame)
    quarantine_meta = record_quarantine(warehouse.get(), keys.IMAGE_ANNOTATIONS, result.quarantine)
    reports = [report for report, _ in image_agreement_reports(frame, guidelines).values()]
    _write_agreement(warehouse, reports)
    meta = {}
    for report in reports:
        meta.update(_agreement_metadata(report))
    return MaterializeResult(
        metadata={
            **_import_metadata(result, frame, len(frame), quarantine_meta),
            "source_files": MetadataValue.json({k: sum(o.kind == k for o in objects) for k in IMAGE_KINDS}),
            "images": int(frame["image_id"].nunique()),
            "rows_by_source_format": counts_by(frame, "source_format"),
            "rows_by_shape_kind": counts_by(frame, "shape_kind"),
            **meta,
            **versions_metadata(),
        }
    )


@asset(
    key=keys.EXPERT_DECISIONS,
    deps=[keys.RAW_ANNOTATIONS, keys.RAW_DIALOGUES, keys.RAW_DICOM_INSTANCES, keys.PSEUDONYM_MAP, keys.CONSENT_REGISTRY],
    group_name=keys.LABEL,
    kinds={"python", "duckdb"},
    description="Decisions of registered adjudicators (a label, accept:<annotator> or reject) and auditors' "
    "verdicts, imported back from label JSONL and keyed like the items they decide.",
)
def expert_decisions(
    context: AssetExecutionContext, raw_zone: RawZoneResource, vault: VaultResource, warehouse: WarehouseResource
) -> MaterializeResult:
    from medllm_pipelines.lib.label.importers import import_expert_decisions
    from medllm_pipelines.lib.label.registry import load_guidelines, load_registry

    result = import_expert_decisions(_raw_annotations(raw_zone), _dialogues(raw_zone), _dicom_index(raw_zone),
                                     _person_link(raw_zone, warehouse), load_registry(), load_guidelines(),
                                     vault.hmac_many, asset_name(keys.EXPERT_DECISIONS))
    frame = result.frame
    warehouse.get().write_table(*warehouse_location(keys.EXPERT_DECISIONS), frame)
    quarantine_meta = record_quarantine(warehouse.get(), keys.EXPERT_DECISIONS, result.quarantine)
    return MaterializeResult(
        metadata={
            **_import_metadata(result, frame, len(frame), quarantine_meta),
            "decisions_by_set": counts_by(frame, "labelled_set"),
            "decisions_by_role": counts_by(frame, "role"),
            "decisions_by_action": counts_by(frame, "action"),
            **versions_metadata(),
        }
    )


# --- review queue and labelled sets ----------------------------------------------------------------
ADJUDICATION_DEPS = [keys.TRIAGE_ANNOTATIONS, keys.ENTITY_ANNOTATIONS, keys.IMAGE_ANNOTATIONS, keys.EXPERT_DECISIONS,
                     keys.DEID_PATIENTS]


@multi_asset(
    name="adjudication",
    specs=[
        AssetSpec(keys.ADJUDICATION_QUEUE, deps=ADJUDICATION_DEPS, group_name=keys.LABEL, kinds={"python", "duckdb"},
                  description="Items needing expert review (annotators disagree beyond the guideline's review rule), "
                  "open or resolved by a registered adjudicator's decision."),
        AssetSpec(keys.TRIAGE_LABELS, deps=ADJUDICATION_DEPS, group_name=keys.LABEL, kinds={"python", "duckdb"},
                  description="Accepted department labels: unanimous or adjudicated."),
        AssetSpec(keys.CLINICAL_ENTITIES, deps=ADJUDICATION_DEPS, group_name=keys.LABEL, kinds={"python", "duckdb"},
                  description="Accepted entities: marked by a majority of annotators, or the adjudicated annotator's."),
        AssetSpec(keys.LESION_MASKS, deps=ADJUDICATION_DEPS, group_name=keys.LABEL, kinds={"python", "duckdb"},
                  description="Accepted lesion masks (pixel-wise majority or adjudicated), RLE per image."),
        AssetSpec(keys.LESION_BOXES, deps=ADJUDICATION_DEPS, group_name=keys.LABEL, kinds={"python", "duckdb"},
                  description="Accepted lesion boxes (around the majority region, or adjudicated)."),
    ],
)
def adjudication(context: AssetExecutionContext, warehouse: WarehouseResource, artifacts: ArtifactStoreResource):
    from medllm_pipelines.lib.curate.cards import (
        LABELLED_SET,
        build_card,
        card_markdown,
        write_card,
    )
    from medllm_pipelines.lib.label.registry import load_guidelines
    from medllm_pipelines.lib.label.sets import (
        combine_queues,
        entity_agreement_report,
        entity_set,
        image_agreement_reports,
        image_sets,
        triage_agreement,
        triage_set,
    )

    wh = warehouse.get()
    guidelines = load_guidelines()
    read = lambda key: wh.read_table(*warehouse_location(key))
    triage, entities, images, decisions = (read(k) for k in ADJUDICATION_DEPS[:4])
    patients = read(keys.DEID_PATIENTS)
    triage_report, _ = triage_agreement(triage, guidelines)
    entity_report, entity_stats = entity_agreement_report(entities, guidelines)
    image_reports = image_agreement_reports(images, guidelines)
    outcomes = {"triage_labels": (triage_set(triage, decisions), triage_report)}
    entity_outcome, entity_frame = entity_set(entities, decisions, guidelines, entity_stats)
    outcomes["clinical_entities"] = (entity_outcome, entity_report)
    frames = {"clinical_entities": entity_frame, "triage_labels": outcomes["triage_labels"][0].accepted}
    for name, (outcome, frame) in image_sets(images, decisions, guidelines, image_reports).items():
        outcomes[name] = (outcome, image_reports[name][0])
        frames[name] = frame
    queue = combine_queues([o for o, _ in outcomes.values()])
    wh.write_table(*warehouse_location(keys.ADJUDICATION_QUEUE), queue)
    open_items = queue[queue["status"] == "open"]
    yield MaterializeResult(
        asset_key=keys.ADJUDICATION_QUEUE,
        metadata={
            **frame_metadata(queue),
            "items_in_queue": len(queue),
            "open": len(open_items),
            "resolved": int((queue["status"] == "resolved").sum()),
            "open_by_set": counts_by(open_items, "labelled_set"),
            "queued_by_reason": counts_by(queue, "reason_code"),
            "open_items_preview": MetadataValue.md(_queue_markdown(open_items)),
            **versions_metadata(),
        },
    )
    descriptions = {
        "triage_labels": ("department of a pre-consultation dialogue (7 classes)", "label"),
        "clinical_entities": ("clinical entities in pre-consultation dialogues (brat)", "entity_type"),
        "lesion_masks": ("lesion outlines on CT/MR slices", "lesion"),
        "lesion_boxes": ("lesion bounding boxes on CT/MR slices", "lesion"),
    }
    folder = artifacts.folder("reports", "datasets")
    for name, (outcome, report) in outcomes.items():
        frame = frames[name]
        key = LABELLED_SET_KEYS[name]
        wh.write_table(*warehouse_location(key), frame)
        pending = outcome.by_basis.get("pending_review", 0)
        card = build_card(
            name=asset_name(key), kind=LABELLED_SET, frame=frame, description=descriptions[name][0],
            sources=[asset_name(IMPORT_OF_SET[name]), asset_name(keys.EXPERT_DECISIONS)],
            label_column=descriptions[name][1], patients=patients, agreement=report.as_dict(),
            guidelines={v: guidelines[v].describe() for v in report.guideline_versions},
            known_defects={"items_pending_review": pending, "items_rejected_by_expert": outcome.by_basis.get("rejected", 0)},
            extra={"accepted_by_basis": outcome.by_basis},
        )
        paths = write_card(card, folder)
        yield MaterializeResult(
            asset_key=key,
            metadata={
                **frame_metadata(frame),
                "dataset_version": card["version"],
                "accepted_by_basis": MetadataValue.json(outcome.by_basis),
                "items_pending_review": pending,
                "agreement_passed": report.passed,
                "agreement": MetadataValue.json(report.as_dict()),
                "dataset_card": MetadataValue.md(card_markdown(card)),
                "dataset_card_path": MetadataValue.path(paths["json"]),
                **_guideline_metadata(report.guideline_versions),
                **versions_metadata(),
            },
        )


def _queue_markdown(open_items: pd.DataFrame, limit: int = 25) -> str:
    if open_items.empty:
        return "No open items."
    head = "| set | item | reason | priority | annotators |\n|---|---|---|---|---|\n"
    rows = "".join(
        f"| {r.labelled_set} | `{r.item_key}` | {r.reason} | {r.priority} | {r.annotators} |\n"
        for r in open_items.head(limit).itertuples(index=False)
    )
    more = f"\n… and {len(open_items) - limit} more" if len(open_items) > limit else ""
    return head + rows + more


@asset(
    key=keys.LABEL_AUDIT,
    deps=[keys.TRIAGE_LABELS, keys.TRIAGE_ANNOTATIONS, keys.EXPERT_DECISIONS],
    group_name=keys.LABEL,
    kinds={"python", "duckdb"},
    description="Random-sample audit of accepted labels: the auditor's verdict on hash-sampled items, with the error rate.",
)
def label_audit(context: AssetExecutionContext, warehouse: WarehouseResource) -> MaterializeResult:
    from medllm_pipelines.lib.label.audit import audit_accepted_labels
    from medllm_pipelines.lib.label.registry import AUDITOR, load_guidelines

    wh = warehouse.get()
    accepted = wh.read_table(*warehouse_location(keys.TRIAGE_LABELS))
    annotations = wh.read_table(*warehouse_location(keys.TRIAGE_ANNOTATIONS))
    decisions = wh.read_table(*warehouse_location(keys.EXPERT_DECISIONS))
    sampled = set(annotations.loc[annotations["audit_sample"].astype(bool), "item_key"])
    verdicts = decisions[(decisions["role"] == AUDITOR) & (decisions["labelled_set"] == "triage_labels")]
    verdicts = verdicts.sort_values("decided_at").rename(columns={"value": "label"})
    result = audit_accepted_labels(accepted, sampled, verdicts)
    frame = result.frame.assign(labelled_set="triage_labels")
    wh.write_table(*warehouse_location(keys.LABEL_AUDIT), frame)
    audit_rules = {v: g.audit for v, g in load_guidelines().items() if g.audit}
    return MaterializeResult(
        metadata={
            **frame_metadata(frame),
            **{f"audit.{k}": v for k, v in result.as_dict().items() if not isinstance(v, list)},
            "audit": MetadataValue.json(result.as_dict()),
            "error_rate": result.error_rate,
            "sampling": MetadataValue.json(audit_rules),
            **versions_metadata(),
        }
    )


@asset(
    key=keys.WEAK_LABEL_COMPARISON,
    deps=[keys.TRIAGE_LABELS, keys.DEID_CONDITIONS, keys.RAW_MEDICATION_REQUESTS, keys.PSEUDONYM_MAP],
    group_name=keys.LABEL,
    kinds={"python", "duckdb"},
    description="Weak department labels from codes (ICD-10 conditions, medications) against the accepted human labels.",
)
def weak_label_comparison(context: AssetExecutionContext, raw_zone: RawZoneResource, warehouse: WarehouseResource) -> MaterializeResult:
    from medllm_pipelines.lib.label.weak import (
        ICD10,
        compare_with_human,
        load_weak_rules,
        medication_codes,
        weak_labels,
    )

    wh = warehouse.get()
    rules = load_weak_rules()
    human = wh.read_table(*warehouse_location(keys.TRIAGE_LABELS))
    conditions = wh.read_table(*warehouse_location(keys.DEID_CONDITIONS))
    medications = _raw_table(raw_zone, keys.RAW_MEDICATION_REQUESTS, ["patient_key", "institution", "code_system", "code"])
    pseudonyms = raw_zone.get().read_table(raw_table_name(keys.PSEUDONYM_MAP))
    codes = pd.concat(
        [
            pd.DataFrame({"patient_pseudonym": conditions["patient_pseudonym"], "system": ICD10, "code": conditions["icd10_category"]}),
            medication_codes(medications, pseudonyms),
        ],
        ignore_index=True,
    )
    codes = codes[codes["patient_pseudonym"].isin(set(human["patient_pseudonym"]))]
    weak = weak_labels(codes, rules) if len(codes) else pd.DataFrame(columns=["patient_pseudonym", "weak_label", "votes"])
    frame = human[["item_key", "patient_pseudonym", "institution", "label"]].rename(columns={"label": "human_label"})
    frame = frame.merge(weak, on="patient_pseudonym", how="left")
    frame["weak_label"] = frame["weak_label"].fillna("abstain")
    frame["votes"] = frame["votes"].fillna("{}")
    frame["agrees"] = frame["weak_label"] == frame["human_label"]
    wh.write_table(*warehouse_location(keys.WEAK_LABEL_COMPARISON), frame)
    comparison = compare_with_human(frame)
    return MaterializeResult(
        metadata={
            **frame_metadata(frame),
            "comparison": MetadataValue.json(comparison),
            "coverage": comparison["coverage"],
            "accuracy_where_covered": comparison["accuracy_where_covered"],
            "cohen_kappa_where_covered": comparison["cohen_kappa_where_covered"],
            "weak_label_rules_version": rules.version,
            **versions_metadata(),
        }
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
        from medllm_pipelines.lib.label.registry import load_guidelines
        from medllm_pipelines.lib.label.sets import (
            entity_agreement_report,
            image_agreement_reports,
            triage_agreement,
        )

        guidelines = load_guidelines()
        frame = warehouse.get().read_table(*warehouse_location(import_key))
        if import_key == keys.TRIAGE_ANNOTATIONS:
            reports = [triage_agreement(frame, guidelines)[0]]
        elif import_key == keys.ENTITY_ANNOTATIONS:
            reports = [entity_agreement_report(frame, guidelines)[0]]
        else:
            reports = [r for r, _ in image_agreement_reports(frame, guidelines).values()]
        failed = [f"{r.labelled_set}:{t.statistic}={t.value} < {t.threshold}" for r in reports for t in r.thresholds if not t.passed]
        return AssetCheckResult(
            passed=not failed,
            severity=AssetCheckSeverity.ERROR,
            description="agreement meets the guideline thresholds" if not failed else "; ".join(failed),
            metadata={r.labelled_set: MetadataValue.json(r.as_dict()) for r in reports},
        )

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
