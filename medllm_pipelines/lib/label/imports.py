"""The label stage's four annotation imports as one step: read, import, measure agreement, report.

Every import asset (triage labels, brat entities, lesion masks and boxes, expert decisions) does the same:
read what its importer needs from the encrypted raw zone and the file ledger, import (validate against
registry and guideline, pseudonymise, reconcile), compute the set's agreement, then write the table, its
quarantine rows and its agreement rows. ``import_annotation_set`` does all of it except the writes and
returns an ``AnnotationImport`` whose ``as_metadata()`` is what the asset reports, so the four assets
differ only in their kind and the blocking gate recomputes agreement with the same ``agreement_reports``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Protocol

import pandas as pd

from medllm_pipelines.lib.common.records import QuarantineRecord, Reconciliation
from medllm_pipelines.lib.common.warehouse import Warehouse
from medllm_pipelines.lib.ingest.intake import stored_objects
from medllm_pipelines.lib.label.importers import (
    DOCUMENT,
    HmacMany,
    ImportResult,
    PersonLink,
    RawObject,
    import_brat,
    import_expert_decisions,
    import_images,
    import_triage_annotations,
)
from medllm_pipelines.lib.label.registry import Guideline, Registry
from medllm_pipelines.lib.label.sets import (
    AGREEMENT_COLUMNS,
    AgreementReport,
    entity_agreement_report,
    image_agreement_reports,
    triage_agreement,
)
from medllm_pipelines.lib.security.raw_zone import RawZone

TRIAGE, ENTITIES, IMAGES, DECISIONS = "triage", "entities", "images", "decisions"
BRAT_KINDS = ("brat_ann", "brat_text")
IMAGE_KINDS = ("nifti_mask", "dicom_seg", "coco")
# What one record of ``records_in`` / ``records_out`` is, per import (``dagster/row_count`` counts table rows).
RECORDS_ARE = {
    TRIAGE: "label JSONL lines of registered annotators (adjudicator and auditor lines are removed here and "
    "imported by label/expert_decisions); one table row each",
    ENTITIES: "brat annotations (T and R lines); the table also holds one 'document' row per (document, "
    "annotator), which is not a delivered record (see rows_by_kind)",
    IMAGES: "image entries of mask and box files (NIfTI / DICOM SEG slices, COCO images); one table row per "
    "(image, annotator, shape kind)",
    DECISIONS: "label JSONL lines of registered adjudicators and auditors; one table row each",
}
SPAN_TEXT_POLICY = ("offsets and type always; surface text only for non-identifier entity types "
                    "(guideline entity_types.identifier: false) and never over characters marked as an identifier")
RAW_COLUMNS = {
    "annotations": ["item_id", "annotator_id", "label", "annotated_at", "tool", "guideline_version", "institution",
                    "source_object", "source_position"],
    "dialogues": ["dialogue_id", "patient_mrn", "institution"],
    "dicom_instances": ["sop_instance_uid", "rows", "columns", "institution", "study_uid", "patient_id"],
    "medication_requests": ["patient_key", "institution", "code_system", "code"],
}


def counts_by_value(frame: pd.DataFrame, column: str) -> dict[str, int]:
    """Rows per value of ``column`` (missing as ``<none>``), sorted; empty when there is no such column."""
    if column not in frame.columns or frame.empty:
        return {}
    counts = frame[column].fillna("<none>").astype(str).value_counts().sort_index()
    return {str(k): int(v) for k, v in counts.items()}


def guideline_metadata(versions: Sequence[str] | set[str], guidelines: dict[str, Guideline], registry: Registry) -> dict[str, Any]:
    """The guideline files (with their SHA-256) a set was annotated under, and the annotator registry's version."""
    return {
        "guidelines": {v: guidelines[v].describe() for v in sorted(versions) if v in guidelines},
        "annotator_registry_version": registry.version,
    }


@dataclass(frozen=True)
class RawTables:
    """Raw-zone table names the label stage reads (the wiring's asset keys name them)."""

    annotations: str
    dialogues: str
    dicom_instances: str
    medication_requests: str
    pseudonym_map: str


class LabelSources(Protocol):
    """What the importers read: raw-zone tables, stored annotation files and the person link."""

    @property
    def annotations(self) -> pd.DataFrame: ...

    @property
    def dialogues(self) -> pd.DataFrame: ...

    @property
    def dicom_index(self) -> pd.DataFrame: ...

    @property
    def person_link(self) -> PersonLink: ...

    def objects(self, kinds: tuple[str, ...], *, with_paths: bool) -> list[RawObject]: ...

    def read_object(self, sha256: str) -> bytes: ...


class LabelInputs:
    """What the label assets read from the raw zone and the warehouse, each table read once on first use.

    Raw tables no ingest asset has written yet read as empty frames of the columns the importers use.
    Landing paths are decrypted (in memory only) where brat pairing needs them.
    """

    def __init__(self, zone: RawZone, warehouse: Warehouse, tables: RawTables, consent_registry: tuple[str, str],
                 decrypt: Callable[[str], bytes]) -> None:
        self.zone, self.warehouse, self.tables = zone, warehouse, tables
        self._consent_registry, self._decrypt = consent_registry, decrypt

    def raw_table(self, name: str) -> pd.DataFrame:
        try:
            return self.zone.read_partitions(getattr(self.tables, name))
        except FileNotFoundError:
            return pd.DataFrame(columns=RAW_COLUMNS[name])

    @cached_property
    def annotations(self) -> pd.DataFrame:
        return self.raw_table("annotations")

    @cached_property
    def dialogues(self) -> pd.DataFrame:
        return self.raw_table("dialogues")

    @cached_property
    def dicom_index(self) -> pd.DataFrame:
        return self.raw_table("dicom_instances")

    @cached_property
    def pseudonym_map(self) -> pd.DataFrame:
        return self.zone.read_table(self.tables.pseudonym_map)

    @cached_property
    def person_link(self) -> PersonLink:
        return PersonLink.build(self.pseudonym_map, self.warehouse.read_table(*self._consent_registry))

    def objects(self, kinds: tuple[str, ...], *, with_paths: bool) -> list[RawObject]:
        """Stored annotation files of these kinds (from the file ledger)."""
        ledger = stored_objects(self.warehouse, kinds)
        return [
            RawObject(row.content_sha256, row.institution, row.file_kind,
                      self._decrypt(row.source_path_ciphertext).decode("utf-8") if with_paths else "")
            for row in ledger.itertuples(index=False)
        ]

    def read_object(self, sha256: str) -> bytes:
        return self.zone.get_object(sha256)


def agreement_reports(kind: str, frame: pd.DataFrame, guidelines: dict[str, Guideline]) -> list[AgreementReport]:
    """Agreement of the labelled sets an import table feeds (none for expert decisions)."""
    if kind == TRIAGE:
        return [triage_agreement(frame, guidelines)[0]]
    if kind == ENTITIES:
        return [entity_agreement_report(frame, guidelines)[0]]
    if kind == IMAGES:
        return [report for report, _ in image_agreement_reports(frame, guidelines).values()]
    return []


def agreement_rows(reports: Sequence[AgreementReport]) -> list[tuple[str, pd.DataFrame]]:
    """(labelled set, its one-row ``label.agreement`` frame) per report."""
    return [(r.labelled_set, pd.DataFrame([r.as_row()], columns=AGREEMENT_COLUMNS)) for r in reports]


def agreement_metadata(report: AgreementReport) -> dict[str, Any]:
    """The full statistics as JSON, the numeric ones as their own entries (plotted across runs), the verdict."""
    stats = report.as_dict()
    headline = {k: v for k, v in stats.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    return {
        f"agreement[{report.labelled_set}]": stats,
        **{f"{report.labelled_set}.{k}": v for k, v in headline.items() if v is not None},
        f"{report.labelled_set}.agreement_passed": report.passed,
    }


@dataclass
class AgreementVerdict:
    """The blocking gate's answer: every threshold of every set met, or which ones were not."""

    reports: list[AgreementReport]

    @property
    def failures(self) -> list[str]:
        return [f"{r.labelled_set}:{t.statistic}={t.value} < {t.threshold}"
                for r in self.reports for t in r.thresholds if not t.passed]

    @property
    def passed(self) -> bool:
        return not self.failures

    @property
    def description(self) -> str:
        return "agreement meets the guideline thresholds" if self.passed else "; ".join(self.failures)

    def as_metadata(self) -> dict[str, Any]:
        return {r.labelled_set: r.as_dict() for r in self.reports}


def check_agreement(kind: str, frame: pd.DataFrame, guidelines: dict[str, Guideline]) -> AgreementVerdict:
    """Agreement recomputed from a stored import table (the gate never trusts the asset's own numbers)."""
    return AgreementVerdict(agreement_reports(kind, frame, guidelines))


@dataclass
class AnnotationImport:
    """One import's outcome: the table to write, its quarantine and agreement, and the metadata that says so."""

    kind: str
    result: ImportResult
    reports: list[AgreementReport]
    guidelines: dict[str, Guideline]
    registry: Registry
    source_files: dict[str, int] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def frame(self) -> pd.DataFrame:
        return self.result.frame

    @property
    def quarantine(self) -> list[QuarantineRecord]:
        return self.result.quarantine

    @property
    def records_out(self) -> int:
        """Delivered records kept: every table row, except the entity table's per-document rows."""
        if self.kind == ENTITIES and len(self.frame):
            return int((self.frame["kind"] != DOCUMENT).sum())
        return len(self.frame)

    @property
    def reconciliation(self) -> Reconciliation:
        return Reconciliation(self.result.records_in, self.records_out, len(self.quarantine), self.result.removed)

    def as_metadata(self) -> dict[str, Any]:
        meta: dict[str, Any] = {
            **self.reconciliation.as_metadata(),
            "records_are": RECORDS_ARE[self.kind],
            "rejected_by_reason": self.result.quarantined_by_reason,
            "removed_by_reason": self.result.removed,
            "rows_by_institution": counts_by_value(self.frame, "institution"),
            **guideline_metadata(self.result.guideline_versions, self.guidelines, self.registry),
        }
        if self.source_files is not None:
            meta["source_files"] = self.source_files
        meta.update(self.extra)
        for report in self.reports:
            meta.update(agreement_metadata(report))
        return meta


def _extra_metadata(kind: str, frame: pd.DataFrame) -> dict[str, Any]:
    """Per-import counts beside the reconciliation."""
    if kind == TRIAGE:
        return {
            "items": int(frame["item_key"].nunique()),
            "annotations_by_annotator": counts_by_value(frame, "annotator_id"),
            "audit_sample_items": int(frame.loc[frame["audit_sample"].astype(bool), "item_key"].nunique()),
        }
    if kind == ENTITIES:
        return {
            "rows_by_kind": counts_by_value(frame, "kind"),
            "documents": int(frame["item_key"].nunique()),
            "entities_by_type": counts_by_value(frame[frame["kind"] == "entity"], "type"),
            "relations_by_type": counts_by_value(frame[frame["kind"] == "relation"], "type"),
            "span_text_policy": SPAN_TEXT_POLICY,
        }
    if kind == IMAGES:
        return {
            "images": int(frame["image_id"].nunique()),
            "rows_by_source_format": counts_by_value(frame, "source_format"),
            "rows_by_shape_kind": counts_by_value(frame, "shape_kind"),
        }
    return {
        "decisions_by_set": counts_by_value(frame, "labelled_set"),
        "decisions_by_role": counts_by_value(frame, "role"),
        "decisions_by_action": counts_by_value(frame, "action"),
    }


def import_annotation_set(
    kind: str,
    inputs: LabelSources,
    registry: Registry,
    guidelines: dict[str, Guideline],
    hmac_many: HmacMany,
    asset: str,
) -> AnnotationImport:
    """Import one kind of annotation delivery and measure its agreement; the caller writes the results."""
    common = (inputs.person_link, registry, guidelines, hmac_many, asset)
    objects: list[RawObject] | None = None
    if kind == TRIAGE:
        result = import_triage_annotations(inputs.annotations, inputs.dialogues, *common)
    elif kind == ENTITIES:
        objects = inputs.objects(BRAT_KINDS, with_paths=True)
        result = import_brat(objects, inputs.read_object, inputs.dialogues, *common)
    elif kind == IMAGES:
        objects = inputs.objects(IMAGE_KINDS, with_paths=False)
        result = import_images(objects, inputs.read_object, inputs.dicom_index, *common)
    elif kind == DECISIONS:
        result = import_expert_decisions(inputs.annotations, inputs.dialogues, inputs.dicom_index, *common)
    else:
        raise ValueError(f"unknown annotation import {kind!r}")
    file_kinds = BRAT_KINDS if kind == ENTITIES else IMAGE_KINDS
    source_files = None if objects is None else {k: sum(o.kind == k for o in objects) for k in file_kinds}
    return AnnotationImport(kind, result, agreement_reports(kind, result.frame, guidelines), guidelines, registry,
                            source_files, _extra_metadata(kind, result.frame))
