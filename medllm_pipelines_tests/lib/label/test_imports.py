"""The four annotation imports as one call each: reconciled, measured against the guideline, reported honestly."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest

from medllm_pipelines.lib.common.warehouse import Warehouse
from medllm_pipelines.lib.ingest.intake import LEDGER_COLUMNS, LEDGER_SCHEMA, LEDGER_TABLE
from medllm_pipelines.lib.label.importers import DOCUMENT, PersonLink, RawObject
from medllm_pipelines.lib.label.imports import (
    AGREEMENT_COLUMNS,
    DECISIONS,
    ENTITIES,
    IMAGES,
    RAW_COLUMNS,
    TRIAGE,
    LabelInputs,
    RawTables,
    agreement_rows,
    check_agreement,
    import_annotation_set,
)
from medllm_pipelines.lib.label.registry import load_guidelines, load_registry
from medllm_pipelines.lib.security.raw_zone import RawZone
from medllm_pipelines_tests.lib.label.conftest import Delivery, fake_hmac
from medllm_pipelines_tests.lib.security.fakes import LocalTestKeyProvider

KINDS = (TRIAGE, ENTITIES, IMAGES, DECISIONS)


@dataclass
class DeliverySources:
    """The label importers' sources served from a parsed delivery (the fake of LabelInputs)."""

    delivery: Delivery

    @property
    def annotations(self) -> pd.DataFrame:
        return self.delivery.raw_annotations

    @property
    def dialogues(self) -> pd.DataFrame:
        return self.delivery.dialogues

    @property
    def dicom_index(self) -> pd.DataFrame:
        return self.delivery.dicom_index

    @property
    def person_link(self) -> PersonLink:
        return self.delivery.link

    def objects(self, kinds: tuple[str, ...], *, with_paths: bool) -> list[RawObject]:
        return [o if with_paths else RawObject(o.sha256, o.institution, o.kind, "")
                for o in self.delivery.objects if o.kind in kinds]

    def read_object(self, sha256: str) -> bytes:
        return self.delivery.read(sha256)


@pytest.fixture(scope="module")
def imported(delivery):
    sources = DeliverySources(delivery)
    return {kind: import_annotation_set(kind, sources, load_registry(), load_guidelines(), fake_hmac, f"label/{kind}")
            for kind in KINDS}


@pytest.mark.parametrize("kind", KINDS)
def test_every_import_reconciles_and_names_what_a_record_is(imported, kind):
    meta = imported[kind].as_metadata()
    removed = sum(v for k, v in meta.items() if k.startswith("removed["))
    assert meta["reconciled"] is True
    assert meta["records_in"] == meta["records_out"] + meta["records_quarantined"] + removed > 0
    assert sum(meta["rejected_by_reason"].values()) == meta["records_quarantined"]
    assert meta["records_are"]
    assert all(g["sha256"] for g in meta["guidelines"].values()) and meta["annotator_registry_version"]


def test_entity_records_are_annotations_and_document_rows_are_counted_apart(imported):
    entities = imported[ENTITIES]
    meta = entities.as_metadata()
    frame = entities.frame
    assert meta["rows_by_kind"]["document"] == int((frame["kind"] == DOCUMENT).sum()) > 0
    assert sum(meta["rows_by_kind"].values()) == len(frame)
    assert meta["records_out"] == len(frame) - meta["rows_by_kind"]["document"]
    assert meta["source_files"]["brat_ann"] > 0 and meta["source_files"]["brat_text"] > 0


def test_agreement_is_reported_per_set_and_never_for_decisions(imported):
    assert [r.labelled_set for r in imported[TRIAGE].reports] == ["triage_labels"]
    assert [r.labelled_set for r in imported[ENTITIES].reports] == ["clinical_entities"]
    assert [r.labelled_set for r in imported[IMAGES].reports] == ["lesion_masks", "lesion_boxes"]
    assert imported[DECISIONS].reports == []
    meta = imported[IMAGES].as_metadata()
    for name in ("lesion_masks", "lesion_boxes"):
        assert meta[f"agreement[{name}]"]["thresholds"] and isinstance(meta[f"{name}.agreement_passed"], bool)
    rows = agreement_rows(imported[IMAGES].reports)
    assert [name for name, _ in rows] == ["lesion_masks", "lesion_boxes"]
    assert all(list(row.columns) == AGREEMENT_COLUMNS and len(row) == 1 for _, row in rows)


def test_the_gate_recomputes_agreement_and_names_the_failed_statistic(imported):
    stored = imported[TRIAGE].frame
    assert check_agreement(TRIAGE, stored, load_guidelines()).passed
    scrambled = stored.assign(label=stored["label"].sample(frac=1, random_state=3).to_numpy())
    verdict = check_agreement(TRIAGE, scrambled, load_guidelines())
    assert not verdict.passed
    assert verdict.description.startswith("triage_labels:") and " < " in verdict.description
    assert set(verdict.as_metadata()) == {"triage_labels"}


def test_label_inputs_read_the_raw_zone_and_decrypt_landing_paths_only_when_asked(tmp_path: Path, delivery):
    zone = RawZone(tmp_path / "raw", LocalTestKeyProvider())
    warehouse = Warehouse(f"duckdb:///{tmp_path / 'warehouse.duckdb'}")
    brat = [o for o in delivery.objects if o.kind == "brat_ann"][:2]
    ledger = pd.DataFrame([{"content_sha256": o.sha256, "institution": o.institution, "file_kind": o.kind,
                            "size_bytes": 1, "status": "stored", "reason_code": None,
                            "source_path_ciphertext": "enc:" + o.relpath, "landed_at": "2026-01-01",
                            "dagster_run_id": "r"} for o in brat], columns=LEDGER_COLUMNS)
    try:
        warehouse.write_table(LEDGER_SCHEMA, LEDGER_TABLE, ledger)
        zone.write_partition("ingest_dialogues", "hzsf", delivery.dialogues)
        tables = RawTables("ingest_annotations", "ingest_dialogues", "ingest_dicom_instances",
                           "ingest_medication_requests", "deidentify_pseudonym_map")
        inputs = LabelInputs(zone, warehouse, tables, ("deidentify", "consent_registry"),
                             lambda token: token.removeprefix("enc:").encode())
        assert list(inputs.annotations.columns) == RAW_COLUMNS["annotations"] and inputs.annotations.empty
        assert len(inputs.dialogues) == len(delivery.dialogues)
        assert sorted(o.relpath for o in inputs.objects(("brat_ann",), with_paths=True)) == sorted(o.relpath for o in brat)
        assert {o.relpath for o in inputs.objects(("brat_ann",), with_paths=False)} == {""}
    finally:
        warehouse.dispose()
