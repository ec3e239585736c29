"""The quality group materialised on its own, in process, on a small seeded raw zone.

Seeded as the ingest stage leaves things (no ingest run): a small synthetic hospital with its planted
defects, its FHIR Bundles, Bulk NDJSON and HL7 v2 feeds parsed with the ingest parsers into the encrypted
raw zone's per-institution partitions of patients, observations, conditions and consents.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from dagster import AssetKey, MaterializeResult, asset, build_asset_check_context, materialize

from medllm_pipelines.defs import keys
from medllm_pipelines.defs.keys import raw_table_name
from medllm_pipelines.defs.quality import assets as quality
from medllm_pipelines.lib.common.warehouse import Warehouse
from medllm_pipelines.lib.ingest.fhir import parse_fhir_object
from medllm_pipelines.lib.ingest.hl7 import parse_hl7_object
from medllm_pipelines.lib.ingest.landing import FHIR_BUNDLE, FHIR_NDJSON, HL7V2, scan_landing
from medllm_pipelines.lib.ingest.tables import rows_to_frame
from medllm_pipelines.lib.synth import generate_hospital
from medllm_pipelines.resources.artifacts import ArtifactStoreResource
from medllm_pipelines.resources.raw_zone import RawZoneResource
from medllm_pipelines.resources.vault import VaultResource
from medllm_pipelines.resources.warehouse import WarehouseResource

HOSPITAL_PATIENTS = 40
HOSPITAL_SEED = 3
RAW_KEY_OF_TABLE = {"patients": keys.RAW_PATIENTS, "observations": keys.RAW_OBSERVATIONS,
                    "conditions": keys.RAW_CONDITIONS, "consents": keys.RAW_CONSENTS}
CLEANED = (keys.CLEAN_PATIENTS, keys.CLEAN_OBSERVATIONS, keys.CLEAN_CONDITIONS, keys.CLEAN_CONSENTS)


@dataclass
class QualityRun:
    result: Any
    raw_zone: RawZoneResource
    warehouse: Warehouse
    resources: dict[str, Any]

    def metadata(self, asset_key: AssetKey) -> dict[str, Any]:
        (event,) = [m for m in self.result.get_asset_materialization_events() if m.asset_key == asset_key]
        return {k: v.value for k, v in event.materialization.metadata.items()}

    def evaluations(self, check_name: str) -> dict[AssetKey, Any]:
        return {e.asset_key: e for e in self.result.get_asset_check_evaluations() if e.check_name == check_name}


def seed_raw_partitions(root: Path, zone: Any) -> None:
    """Parse every clinical feed of the hospital and write the four tables the quality stage reads."""
    rows: dict[tuple[str, str], list[dict]] = {}
    for landed in scan_landing(root):
        if landed.kind not in (FHIR_BUNDLE, FHIR_NDJSON, HL7V2) or landed.institution is None:
            continue
        content = landed.path.read_bytes()
        lineage = {"institution": landed.institution, "source_object": hashlib.sha256(content).hexdigest(),
                   "asset": "ingest/seed"}
        if landed.kind == HL7V2:
            parsed = parse_hl7_object(content, **lineage)
        else:
            parsed = parse_fhir_object(content, kind=landed.kind, **lineage)
        for table in RAW_KEY_OF_TABLE:
            rows.setdefault((table, landed.institution), []).extend(parsed.rows.get(table, []))
    for (table, institution), found in rows.items():
        zone.write_partition(raw_table_name(RAW_KEY_OF_TABLE[table]), institution, rows_to_frame(table, found))


def build_resources(base: Path, openbao_server: Any) -> dict[str, Any]:
    vault = VaultResource(token_file=str(openbao_server.state_file))  # embedded mode: addr and token from openbao.json
    return {
        "vault": vault,
        "raw_zone": RawZoneResource(path=str(base / "raw"), vault=vault),
        "warehouse": WarehouseResource(url=f"duckdb:///{base / 'warehouse.duckdb'}"),
        "artifacts": ArtifactStoreResource(deidentified_dir=str(base / "deid"), models_dir=str(base / "models"),
                                           reports_dir=str(base / "reports"), governance_dir=str(base / "governance")),
    }


@pytest.fixture(scope="module")
def quality_run(tmp_path_factory: pytest.TempPathFactory, openbao_server) -> Iterator[QualityRun]:
    base = tmp_path_factory.mktemp("quality-group")
    generate_hospital(base / "hospital", patients=HOSPITAL_PATIENTS, seed=HOSPITAL_SEED)  # planted defects included
    resources = build_resources(base, openbao_server)
    seed_raw_partitions(base / "hospital", resources["raw_zone"].get())
    result = materialize([*quality.ASSETS, *quality.CHECKS], resources=resources)
    warehouse = Warehouse(resources["warehouse"].url)
    try:
        yield QualityRun(result, resources["raw_zone"], warehouse, resources)
    finally:
        warehouse.dispose()


def test_the_group_materialises_alone_and_every_gate_passes(quality_run) -> None:
    assert quality_run.result.success
    evaluations = quality_run.result.get_asset_check_evaluations()
    assert len(evaluations) == len(quality.CHECKS)
    assert all(e.passed for e in evaluations), [(e.asset_key, e.check_name, e.description) for e in evaluations if not e.passed]
    assert set(quality_run.evaluations(keys.CHECK_RECONCILED)) == set(CLEANED)


def test_every_table_reconciles_per_institution_and_its_quarantine_is_recorded(quality_run) -> None:
    quarantine = quality_run.warehouse.read_table(keys.AUDIT_SCHEMA, keys.QUARANTINE_TABLE)
    for key in CLEANED:
        meta = quality_run.metadata(key)
        per_institution = meta["reconciliation_by_institution"]
        assert meta["reconciled"] is True, key
        for field, total in (("in", "records_in"), ("out", "records_out"), ("quarantined", "records_quarantined")):
            assert sum(c[field] for c in per_institution.values()) == meta[total], (key, field)
        assert (quarantine["asset"] == key.to_user_string()).sum() == meta["records_quarantined"], key
        assert sum(meta["quarantined_by_reason"].values()) == meta["records_quarantined"], key
    assert quality_run.metadata(keys.CLEAN_OBSERVATIONS)["records_quarantined"] > 0, "planted implausible values"
    assert quality_run.metadata(keys.CLEAN_PATIENTS)["removed[duplicate_record]"] > 0, "planted re-sent patients"


def test_cleaned_tables_stay_in_the_encrypted_raw_zone(quality_run) -> None:
    zone = quality_run.raw_zone.get()
    tables = {schema for schema, _ in quality_run.warehouse.list_tables()}
    assert tables == {keys.AUDIT_SCHEMA}, "nothing identifiable reaches the warehouse"
    for key in CLEANED:
        meta = quality_run.metadata(key)
        assert meta["dagster/row_count"] == meta["records_out"] == len(zone.read_table(raw_table_name(key))), key
        assert meta["storage"].startswith("raw zone") and meta["cleaning_rules_version"], key


def test_accuracy_checks_report_addresses_never_values(quality_run) -> None:
    patients = quality_run.metadata(keys.CLEAN_PATIENTS)
    assert patients["near_duplicate_match_rule"] and isinstance(patients["near_duplicate_pairs_by_status"], dict)
    observations = quality_run.metadata(keys.CLEAN_OBSERVATIONS)
    examples = observations["double_verification_examples"]
    assert observations["double_verification_disagreements"] >= len(examples["records"])
    assert examples["tolerances"]
    for record in examples["records"]:
        assert "patient_key" not in record and "value" not in record
        assert "#" in record["record_a"]


def test_expectation_gates_publish_data_docs_per_suite(quality_run) -> None:
    for key, evaluation in quality_run.evaluations(keys.CHECK_GE_SUITE).items():
        meta = {k: v.value for k, v in evaluation.metadata.items()}
        assert meta["suite"] == key.path[-1] and meta["expectations_failed"] == 0
        assert meta["rows_validated"] == quality_run.metadata(key)["records_out"]
        assert Path(meta["data_docs"]).name == "index.html" and Path(meta["data_docs"]).exists()


def test_a_failing_expectation_gate_names_the_records_by_address(quality_run) -> None:
    (gate,) = [c for c in quality.CHECKS
               if {(k.asset_key, k.name) for k in c.check_keys} == {(keys.CLEAN_PATIENTS, keys.CHECK_GE_SUITE)}]
    zone = quality_run.raw_zone.get()
    clean = zone.read_table(raw_table_name(keys.CLEAN_PATIENTS))
    broken = clean.assign(gender=clean["gender"].where(clean.index != 0, "not-a-sex"))
    zone.write_table(raw_table_name(keys.CLEAN_PATIENTS), broken)
    try:
        result = gate(build_asset_check_context(), raw_zone=quality_run.raw_zone,
                      artifacts=quality_run.resources["artifacts"])
    finally:
        zone.write_table(raw_table_name(keys.CLEAN_PATIENTS), clean)
    meta = {k: v.value for k, v in result.metadata.items()}
    assert not result.passed and meta["expectations_failed"] >= 1
    failure = next(iter(meta["failures"].values()))
    assert failure["unexpected_count"] == 1 and failure["records"] and "not-a-sex" not in str(meta)


def test_the_reconciliation_gate_fails_when_records_are_lost() -> None:
    """A materialisation whose counts do not balance (one record neither out nor quarantined) is refused."""

    @asset(key=keys.CLEAN_CONSENTS)
    def lossy() -> MaterializeResult:
        return MaterializeResult(metadata={
            "records_in": 3, "records_out": 2, "records_quarantined": 0, "reconciled": False,
            "reconciliation_by_institution": {"hzsf": {"in": 3, "out": 2, "quarantined": 0, "removed": 0}},
        })

    gate = quality.reconciliation_gate(keys.CLEAN_CONSENTS)
    result = materialize([lossy, gate], raise_on_error=False)
    (evaluation,) = result.get_asset_check_evaluations()
    assert not evaluation.passed and evaluation.description == "records were lost or invented"
    assert evaluation.metadata["records_in"].value == 3
