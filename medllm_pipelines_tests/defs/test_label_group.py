"""The label group materialised on its own, in process, on a small seeded raw zone and warehouse.

Seeded as the stages before it leave things (no ingest, quality or de-identification run): a small synthetic
hospital's files taken into the encrypted raw zone with the file ledger (landing paths encrypted), its label
JSONL, dialogues and DICOM headers parsed into raw-zone partitions with the ingest stage's own parsers, a
pseudonym map, and the de-identified patients, conditions and consent registry the label stage joins. One
person with annotations has withdrawn consent.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from dagster import materialize

from medllm_pipelines.defs import keys
from medllm_pipelines.defs.keys import raw_table_name, warehouse_location
from medllm_pipelines.defs.label import assets as label
from medllm_pipelines.lib.common.warehouse import Warehouse
from medllm_pipelines.lib.ingest.dicom import index_dicom_object
from medllm_pipelines.lib.ingest.intake import LEDGER_SCHEMA, LEDGER_TABLE, take_in
from medllm_pipelines.lib.ingest.jsonl import parse_jsonl_object
from medllm_pipelines.lib.ingest.landing import ANNOTATIONS, DIALOGUES, DICOM, scan_landing
from medllm_pipelines.lib.synth import generate_hospital
from medllm_pipelines.resources.artifacts import ArtifactStoreResource
from medllm_pipelines.resources.raw_zone import RawZoneResource
from medllm_pipelines.resources.vault import VaultResource
from medllm_pipelines.resources.warehouse import WarehouseResource

HOSPITAL_PATIENTS = 60
HOSPITAL_SEED = 7
ICD10_OF_TRUTH = {"type2_diabetes": "E11", "hypertension": "I10", "hyperlipidemia": "E78", "obesity": "E66",
                  "gastritis": "K29", "low_back_pain": "M54", "upper_respiratory_infection": "J06"}
IMPORTS = (keys.TRIAGE_ANNOTATIONS, keys.ENTITY_ANNOTATIONS, keys.IMAGE_ANNOTATIONS, keys.EXPERT_DECISIONS)


@dataclass
class LabelRun:
    result: Any
    warehouse: Warehouse
    withdrawn: str  # the pseudonym of the person who withdrew consent

    def metadata(self, asset_key: Any) -> dict[str, Any]:
        (event,) = [m for m in self.result.get_asset_materialization_events() if m.asset_key == asset_key]
        return {k: v.value for k, v in event.materialization.metadata.items()}

    def table(self, asset_key: Any) -> pd.DataFrame:
        return self.warehouse.read_table(*warehouse_location(asset_key))


def _pseudonym(institution: str, mrn: str) -> str:
    return "p_" + hashlib.sha256(f"{institution}:{mrn}".encode()).hexdigest()[:24]


def seed_raw_zone(root: Path, zone: Any, vault: VaultResource, warehouse: Warehouse) -> None:
    """Take the delivery in (ledger + encrypted objects) and parse what the label stage reads from the raw zone."""
    landed = scan_landing(root)
    outcome = take_in(landed, zone, set(), lambda text: vault.encrypt(text.encode("utf-8")), run_id="seed",
                      now=dt.datetime(2026, 1, 1, tzinfo=dt.UTC))
    warehouse.write_table(LEDGER_SCHEMA, LEDGER_TABLE, outcome.ledger_frame())
    rows: dict[tuple[str, str], list[dict]] = {}
    for file in landed:
        content = file.path.read_bytes()
        sha = hashlib.sha256(content).hexdigest()
        if file.kind in (ANNOTATIONS, DIALOGUES):
            parsed = parse_jsonl_object(content, kind=file.kind, institution=file.institution, source_object=sha,
                                        asset="ingest/seed")
            rows.setdefault((file.kind, file.institution), []).extend(parsed.rows)
        elif file.kind == DICOM:
            instance, _ = index_dicom_object(content, institution=file.institution, source_object=sha, asset="ingest/seed")
            if instance is not None:
                rows.setdefault((DICOM, file.institution), []).append(
                    {**instance, "institution": file.institution, "source_object": sha})
    table_of = {ANNOTATIONS: keys.RAW_ANNOTATIONS, DIALOGUES: keys.RAW_DIALOGUES, DICOM: keys.RAW_DICOM_INSTANCES}
    for (kind, institution), found in rows.items():
        zone.write_partition(raw_table_name(table_of[kind]), institution, pd.DataFrame(found))


def seed_people(root: Path, zone: Any, warehouse: Warehouse) -> str:
    """Identifiable patients and the pseudonym map (raw zone); de-identified patients, conditions, consent
    (warehouse). Returns the pseudonym of a person with a dialogue who withdrew consent."""
    identities = pd.DataFrame([json.loads(line) for line in (root / "_truth" / "identities.jsonl").read_text().splitlines()])
    truth = pd.DataFrame([json.loads(line) for line in (root / "_truth" / "patients.jsonl").read_text().splitlines()])
    people = identities.merge(truth, on=["person_index", "institution"])
    people["patient_pseudonym"] = [_pseudonym(i, m) for i, m in people[["institution", "mrn"]].itertuples(index=False)]
    for institution, frame in identities.groupby("institution"):
        zone.write_partition(raw_table_name(keys.RAW_PATIENTS), str(institution),
                             frame[["mrn", "resident_id", "name_zh", "name_en", "phone", "email", "address"]]
                             .assign(institution=institution))
    zone.write_table(raw_table_name(keys.PSEUDONYM_MAP),
                     people[["institution", "mrn", "patient_pseudonym"]].assign(patient_key=people["mrn"]))
    withdrawn = people.loc[people["dialogue_id"].notna(), "patient_pseudonym"].iloc[0]
    consent = people[["patient_pseudonym"]].drop_duplicates().assign(consent_status="granted")
    consent.loc[consent["patient_pseudonym"] == withdrawn, "consent_status"] = "withdrawn"
    warehouse.write_table(*warehouse_location(keys.CONSENT_REGISTRY), consent)
    warehouse.write_table(*warehouse_location(keys.DEID_PATIENTS), people[["patient_pseudonym", "institution"]].assign(
        sex="female", age_band="40-44"))
    conditions = [(p, ICD10_OF_TRUTH[c]) for p, cs in people[["patient_pseudonym", "conditions"]].itertuples(index=False)
                   for c in cs if c in ICD10_OF_TRUTH]
    warehouse.write_table(*warehouse_location(keys.DEID_CONDITIONS),
                          pd.DataFrame(conditions, columns=["patient_pseudonym", "icd10_category"]))
    return withdrawn


@pytest.fixture(scope="module")
def label_run(tmp_path_factory: pytest.TempPathFactory, openbao_server) -> Iterator[LabelRun]:
    base = tmp_path_factory.mktemp("label-group")
    generate_hospital(base / "hospital", patients=HOSPITAL_PATIENTS, seed=HOSPITAL_SEED, write_identities=True)
    vault = VaultResource(token_file=str(openbao_server.state_file))  # embedded mode: addr and token from openbao.json
    raw_zone = RawZoneResource(path=str(base / "raw"), vault=vault)
    warehouse = WarehouseResource(url=f"duckdb:///{base / 'warehouse.duckdb'}")
    wh = Warehouse(warehouse.url)
    seed_raw_zone(base / "hospital", raw_zone.get(), vault, wh)
    withdrawn = seed_people(base / "hospital", raw_zone.get(), wh)
    artifacts = ArtifactStoreResource(deidentified_dir=str(base / "deid"), models_dir=str(base / "models"),
                                      reports_dir=str(base / "reports"), governance_dir=str(base / "governance"))
    result = materialize([*label.ASSETS, *label.CHECKS],
                         resources={"raw_zone": raw_zone, "vault": vault, "warehouse": warehouse, "artifacts": artifacts})
    try:
        yield LabelRun(result, wh, withdrawn)
    finally:
        wh.dispose()


def test_the_group_materialises_alone_and_every_gate_passes(label_run) -> None:
    assert label_run.result.success
    evaluations = label_run.result.get_asset_check_evaluations()
    assert len(evaluations) == len(label.CHECKS)
    assert all(e.passed for e in evaluations), [(e.asset_key, e.check_name, e.description) for e in evaluations if not e.passed]


def test_every_import_reconciles_and_counts_its_rejections(label_run) -> None:
    quarantine = label_run.warehouse.read_table(keys.AUDIT_SCHEMA, keys.QUARANTINE_TABLE)
    for key in IMPORTS:
        meta = label_run.metadata(key)
        removed = sum(v for k, v in meta.items() if k.startswith("removed["))
        assert meta["records_in"] == meta["records_out"] + meta["records_quarantined"] + removed, key
        assert meta["reconciled"] is True, key
        assert sum(meta["rejected_by_reason"].values()) == meta["records_quarantined"], key
        assert (quarantine["asset"] == key.to_user_string()).sum() == meta["records_quarantined"], key
    entities = label_run.metadata(keys.ENTITY_ANNOTATIONS)
    assert {"span_out_of_bounds", "overlapping_span"} <= set(entities["rejected_by_reason"])


def test_entity_row_count_is_the_table_and_records_out_the_annotations(label_run) -> None:
    """The table holds one 'document' row per (document, annotator) beside the annotations the delivery sent:
    dagster/row_count counts the table, records_out the annotations, and rows_by_kind says which is which."""
    meta = label_run.metadata(keys.ENTITY_ANNOTATIONS)
    table = label_run.table(keys.ENTITY_ANNOTATIONS)
    assert meta["dagster/row_count"] == len(table)
    assert meta["rows_by_kind"] == {k: int(v) for k, v in table["kind"].value_counts().sort_index().items()}
    assert meta["records_out"] == len(table) - meta["rows_by_kind"]["document"]
    for key in IMPORTS:
        meta = label_run.metadata(key)
        assert meta["dagster/row_count"] == len(label_run.table(key)), key
        assert meta["records_are"], key


def test_a_withdrawn_person_is_counted_out_of_every_set(label_run) -> None:
    triage = label_run.metadata(keys.TRIAGE_ANNOTATIONS)
    assert triage["removed[no_granted_consent:withdrawn]"] > 0
    for key in (keys.TRIAGE_ANNOTATIONS, keys.TRIAGE_LABELS, keys.DIABETES_LABELS, keys.WEAK_LABEL_COMPARISON):
        assert label_run.withdrawn not in set(label_run.table(key)["patient_pseudonym"]), key
    diabetes = label_run.metadata(keys.DIABETES_LABELS)
    assert diabetes["excluded_by_consent_status"] == {"withdrawn": 1}
    assert diabetes["records_in"] == diabetes["records_out"] + 1 and diabetes["reconciled"] is True


def test_accepted_sets_have_cards_and_the_queue_open_and_resolved_items(label_run) -> None:
    queue = label_run.metadata(keys.ADJUDICATION_QUEUE)
    assert queue["items_in_queue"] == queue["open"] + queue["resolved"] and queue["resolved"] > 0
    for key in (keys.TRIAGE_LABELS, keys.CLINICAL_ENTITIES, keys.LESION_MASKS, keys.LESION_BOXES):
        meta = label_run.metadata(key)
        card = json.loads(Path(meta["dataset_card_path"]).read_text())
        assert card["version"] == meta["dataset_version"] and card["name"] == key.to_user_string()
        assert meta["agreement_passed"] is True and sum(meta["accepted_by_basis"].values()) > 0, key
    audit = label_run.metadata(keys.LABEL_AUDIT)
    assert audit["audit.audited"] > 0 and audit["error_rate"] is not None
    weak = label_run.metadata(keys.WEAK_LABEL_COMPARISON)
    assert weak["comparison"]["items"] == len(label_run.table(keys.TRIAGE_LABELS))


def test_the_agreement_gate_fails_when_annotators_disagree(label_run) -> None:
    """The gate recomputes agreement from the stored table: scrambled labels fail it and say which statistic."""
    from dagster import build_asset_check_context

    (gate,) = [c for c in label.CHECKS if {k.asset_key for k in c.check_keys} == {keys.TRIAGE_ANNOTATIONS}]
    stored = label_run.table(keys.TRIAGE_ANNOTATIONS)
    scrambled = stored.assign(label=stored["label"].sample(frac=1, random_state=3).to_numpy())
    url = f"duckdb:///{label_run.warehouse.duckdb_path.parent / 'scrambled.duckdb'}"
    scratch = Warehouse(url)
    try:
        scratch.write_table(*warehouse_location(keys.TRIAGE_ANNOTATIONS), scrambled)
        result = gate(build_asset_check_context(), warehouse=WarehouseResource(url=url))
    finally:
        scratch.dispose()
    assert not result.passed
    assert "triage_labels:" in result.description
