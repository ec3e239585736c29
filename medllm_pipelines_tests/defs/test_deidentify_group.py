"""The deidentify group materialised alone, in process, on a small seeded raw zone (CONVENTIONS rule 18).

The raw zone holds what ingest and quality would have written for a few
persons of a generated hospital: identifiable patients (two institutions'
registrations), observations, diagnoses, consents (one withdrawal, one
erasure request), notes, dialogues and the hospital's DICOM files plus a
copy with burned-in text. Real OpenBao (keys, pseudonyms, the audit log),
DuckDB warehouse; no other group runs.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pandas as pd
import pytest
from dagster import materialize

from medllm_pipelines.defs import keys
from medllm_pipelines.defs.deidentify import assets as deidentify
from medllm_pipelines.defs.deidentify import disclosure, text
from medllm_pipelines.defs.keys import asset_name, raw_table_name, warehouse_location
from medllm_pipelines.lib.common import codes
from medllm_pipelines.lib.ingest.dicom import DICOM_INDEX_COLUMNS, index_dicom
from medllm_pipelines.lib.security.raw_zone import RawZone
from medllm_pipelines.lib.services.openbao import STATE_FILE_NAME
from medllm_pipelines.resources.artifacts import ArtifactStoreResource
from medllm_pipelines.resources.raw_zone import RawZoneResource
from medllm_pipelines.resources.run_settings import RunSettingsResource
from medllm_pipelines.resources.vault import VaultResource
from medllm_pipelines.resources.warehouse import WarehouseResource
from medllm_pipelines_tests.conftest_lifecycle import plant_burned_in_copy

GROUP_PATIENTS = 24
GROUP_SEED = 5
IDENTITY_FIELDS = ("name_zh", "name_en", "resident_id", "mrn", "phone", "email", "address")
# the only person registered at whsy: no recoding makes their class reach k, so their registration is withheld
LONE_PERSON = {"person_index": 999, "institution": "whsy", "mrn": "WH00000999", "name_zh": "欧阳娜娜",
               "name_en": "Nana Ouyang", "resident_id": None, "birth_date": "1961-06-15", "phone": "13912345678",
               "email": "nana.ouyang@example.com", "address": "湖北省武汉市江汉区解放大道688号"}
GROUP_ASSETS = [*deidentify.ASSETS, *text.ASSETS, *disclosure.ASSETS]
GROUP_CHECKS = [*deidentify.CHECKS, *text.CHECKS, *disclosure.CHECKS]


@dataclass
class GroupRun:
    result: Any
    resources: dict[str, Any]
    identities: list[dict[str, Any]]
    withdrawn: tuple[str, str]  # (institution, patient key) of the person who withdrew consent
    erased: tuple[str, str]  # of the person a sender asked to erase

    def meta(self, asset_key) -> dict[str, Any]:
        (event,) = self.result.asset_materializations_for_node(asset_key.to_python_identifier())
        return {k: getattr(v, "value", v) for k, v in event.metadata.items()}

    def table(self, asset_key) -> pd.DataFrame:
        return self.resources["warehouse"].get().read_table(*warehouse_location(asset_key))

    def pseudonym_of(self, institution: str, patient_key: str) -> str:
        mapping = RawZone(Path(self.resources["raw_zone"].path), self.resources["vault"]).read_table(
            raw_table_name(keys.PSEUDONYM_MAP))
        return mapping.set_index(["institution", "patient_key"]).loc[(institution, patient_key), "patient_pseudonym"]


def _patient_key(row: dict[str, Any]) -> str:
    return f"pat-{row['institution']}-{row['person_index']:03d}"


def _by_institution(zone: RawZone, asset_key, frame: pd.DataFrame) -> None:
    for institution, part in frame.groupby("institution"):
        zone.write_partition(raw_table_name(asset_key), str(institution), part.reset_index(drop=True))


def _language(row: dict[str, Any]) -> str:
    return "zh" if row.get("name_zh") else "en"


def _note(row: dict[str, Any]) -> str:
    if _language(row) == "zh":
        return (f"门诊病历（2024-03-05）\n患者{row['name_zh']}，身份证号{row['resident_id']}，联系电话{row['phone']}，"
                "诉口渴多饮。\n医师：李明")
    return f"Clinic note 2024-03-05\nPatient {row['name_en']} (MRN {row['mrn']}), phone {row['phone']}, reports thirst."


def _turns(row: dict[str, Any]) -> list[dict[str, str]]:
    if _language(row) == "zh":
        return [{"speaker": "nurse", "text": "您好，请问怎么称呼？"},
                {"speaker": "patient", "text": f"我叫{row['name_zh']}，电话{row['phone']}。"}]
    return [{"speaker": "nurse", "text": "Hello, what is your name?"},
            {"speaker": "patient", "text": f"My name is {row['name_en']}, my phone is {row['phone']}."}]


def seed_raw_zone(zone: RawZone, hospital: Path, identities: list[dict[str, Any]]) -> tuple[tuple, tuple]:
    """What ingest and quality would leave in the raw zone for these persons; returns (withdrawn, erased)."""
    patients = pd.DataFrame([{
        "institution": r["institution"], "resource_key": _patient_key(r), "mrn": r["mrn"], "resident_id": r["resident_id"],
        "name_zh": r.get("name_zh"), "name_en": r.get("name_en"), "gender": ("female", "male")[i % 2],
        # one age band for all: classes are (institution, sex), so only a person alone at an institution is rare
        "birth_date": "1961-06-15", "phone": r.get("phone"), "email": r.get("email"), "address": r.get("address"),
    } for i, r in enumerate(identities)])
    keys_ = list(zip(patients["institution"], patients["resource_key"], strict=True))
    _by_institution(zone, keys.RAW_PATIENTS, patients)
    zone.write_table(raw_table_name(keys.CLEAN_PATIENTS), patients)
    zone.write_table(raw_table_name(keys.CLEAN_OBSERVATIONS), pd.DataFrame([
        {"institution": i, "patient_key": k, "concept": concept, "loinc": loinc, "value": value + n % 3, "unit": unit,
         "effective_date": "2024-05-01"}
        for n, (i, k) in enumerate(keys_)
        for concept, loinc, value, unit in (("hba1c", "4548-4", 6.0, "%"), ("fasting_glucose", "1558-6", 6.5, "mmol/L"))]))
    zone.write_table(raw_table_name(keys.CLEAN_CONDITIONS), pd.DataFrame([
        {"institution": i, "patient_key": k, "icd10": "E11.9", "icd10_category": "E11", "clinical_status": "active",
         "onset_date": "2020-01-01"} for i, k in keys_[::3]]))
    withdrawn, erased = keys_[0], keys_[1]
    consents = [{"institution": i, "patient_key": k, "resource_key": f"c-{k}", "status": "active",
                 "provision_type": "permit", "decided_at": "2023-01-01"} for i, k in keys_]
    consents.append({**consents[0], "resource_key": f"c2-{withdrawn[1]}", "status": "inactive",
                     "provision_type": "deny", "decided_at": "2024-02-01"})
    consents.append({**consents[1], "resource_key": f"c2-{erased[1]}", "provision_type": codes.ERASURE_REQUEST,
                     "decided_at": None})
    zone.write_table(raw_table_name(keys.CLEAN_CONSENTS), pd.DataFrame(consents))
    _by_institution(zone, keys.RAW_NOTES, pd.DataFrame([
        {"patient_key": k, "language": _language(r), "institution": r["institution"], "resource_key": f"note-{k}",
         "text": _note(r)} for r, (_, k) in zip(identities, keys_, strict=True)
    ] + [{"patient_key": "nobody", "language": "zh", "institution": "hzsf", "resource_key": "note-x", "text": "无"}]))
    _by_institution(zone, keys.RAW_DIALOGUES, pd.DataFrame([
        {"dialogue_id": f"dlg-{n}", "patient_mrn": r["mrn"], "language": _language(r), "turn_count": 2,
         "institution": r["institution"], "turns_json": orjson.dumps(_turns(r)).decode()}
        for n, r in enumerate(identities)]))
    files = sorted(hospital.glob("*/dicom/*/*.dcm"))
    plant_burned_in_copy(files[0], files[0].with_name("zz-burned-in.dcm"))
    rows = []
    for path in sorted(hospital.glob("*/dicom/*/*.dcm")):
        content, institution = path.read_bytes(), path.relative_to(hospital).parts[0]
        sha = hashlib.sha256(content).hexdigest()
        zone.put_object(sha, content)
        indexed = index_dicom(content, institution=institution, source_object=sha, asset=asset_name(keys.RAW_DICOM_INSTANCES))
        rows.append({**indexed.instance, "institution": institution, "source_object": sha})
    _by_institution(zone, keys.RAW_DICOM_INSTANCES,
                    pd.DataFrame(rows, columns=[*DICOM_INDEX_COLUMNS, "institution", "source_object"]))
    return withdrawn, erased


def group_resources(root: Path, state_dir: Path, **settings: Any) -> dict[str, Any]:
    vault = VaultResource(token_file=str(state_dir / STATE_FILE_NAME))
    return {
        "vault": vault,
        "raw_zone": RawZoneResource(path=str(root / "raw"), vault=vault, audit_log=str(root / "audit.log")),
        "warehouse": WarehouseResource(url=f"duckdb:///{root / 'warehouse.duckdb'}"),
        "artifacts": ArtifactStoreResource(deidentified_dir=str(root / "deid"), models_dir=str(root / "models"),
                                           reports_dir=str(root / "reports"), governance_dir=str(root / "governance")),
        "run_settings": RunSettingsResource(**settings),
    }


@pytest.fixture(scope="module")
def group_run(tmp_path_factory: pytest.TempPathFactory, openbao_state_dir: Path) -> GroupRun:
    from medllm_pipelines.lib.synth import DefectRates, generate_hospital

    hospital = tmp_path_factory.mktemp("deid_group_hospital")
    generate_hospital(hospital, patients=GROUP_PATIENTS, seed=GROUP_SEED, defect_rates=DefectRates.none(),
                      write_identities=True)
    identities = [json.loads(line) for line in (hospital / "_truth" / "identities.jsonl").read_text("utf-8").splitlines()]
    identities.append(LONE_PERSON)
    root = tmp_path_factory.mktemp("deid_group")
    resources = group_resources(root, openbao_state_dir, k_anonymity_k=2, dp_epsilon_budget=5.0)
    withdrawn, erased = seed_raw_zone(RawZone(root / "raw", resources["vault"]), hospital, identities)
    result = materialize([*GROUP_ASSETS, *GROUP_CHECKS], resources=resources, raise_on_error=False)
    return GroupRun(result, resources, identities, withdrawn, erased)


def test_the_group_materialises_alone_and_every_gate_passes(group_run: GroupRun) -> None:
    assert group_run.result.success
    produced = {e.asset_key for e in group_run.result.get_asset_materialization_events()}
    assert produced == {k for a in GROUP_ASSETS for k in a.keys}
    evaluations = group_run.result.get_asset_check_evaluations()
    assert {e.check_name for e in evaluations} == {keys.CHECK_NO_IDENTIFIERS, keys.CHECK_K_ANONYMITY}
    assert all(e.passed for e in evaluations), [(e.asset_key, e.check_name) for e in evaluations if not e.passed]


@pytest.mark.parametrize("asset_key", [keys.DEID_PATIENTS, keys.DEID_OBSERVATIONS, keys.DEID_CONDITIONS,
                                       keys.CONSENT_REGISTRY, keys.DEID_IMAGES, keys.DEID_NOTES, keys.DEID_DIALOGUES])
def test_every_released_table_reconciles_and_holds_no_identity(group_run: GroupRun, asset_key) -> None:
    meta = group_run.meta(asset_key)
    assert meta["reconciled"] is True and meta["records_out"] > 0
    frame = group_run.table(asset_key)
    haystack = "\x00".join("\x00".join(frame[c].astype(str)) for c in frame.columns if frame[c].dtype == object)
    leaked = {f for row in group_run.identities for f in IDENTITY_FIELDS if row.get(f) and str(row[f]) in haystack}
    assert leaked == set()


def test_rows_of_a_withheld_registration_leave_every_person_keyed_table(group_run: GroupRun) -> None:
    patients = group_run.meta(keys.DEID_PATIENTS)
    assert patients["k_anonymity/k_satisfied"] is True and patients["purpose_id"] == "t2d_model_development"
    assert patients["registrations_withheld"] == patients["persons_withheld[k_anonymity_suppressed]"] == 1
    lone = group_run.pseudonym_of("whsy", _patient_key(LONE_PERSON))
    for asset_key in (keys.DEID_PATIENTS, keys.DEID_OBSERVATIONS, keys.DEID_CONDITIONS, keys.CONSENT_REGISTRY):
        assert lone not in set(group_run.table(asset_key)["patient_pseudonym"]), asset_key
    # both of the person's observations (HbA1c, fasting glucose) left under the rule that withheld them
    assert group_run.meta(keys.DEID_OBSERVATIONS)["removed[k_anonymity_suppressed]"] == 2
    assert group_run.meta(keys.CONSENT_REGISTRY)["persons_withheld[k_anonymity_suppressed]"] == 1


def test_withdrawal_and_erasure_are_in_the_registry_and_the_erasure_is_audited(group_run: GroupRun) -> None:
    registry = group_run.table(keys.CONSENT_REGISTRY).set_index("patient_pseudonym")["consent_status"]
    for institution, patient_key in (group_run.withdrawn, group_run.erased):
        pseudonym = group_run.pseudonym_of(institution, patient_key)
        assert registry[pseudonym] == codes.CONSENT_WITHDRAWN
    meta = group_run.meta(keys.CONSENT_REGISTRY)
    assert meta["erasure_requests_applied"] == meta["erasure_requests_audited"] == 1
    audit = Path(group_run.resources["raw_zone"].audit_log).read_text("utf-8")
    assert deidentify.ERASURE_AUDIT_ACTION in audit
    assert not [v for row in group_run.identities for v in (row["name_zh"], row["mrn"]) if v and v in audit]


def test_burned_in_images_are_quarantined_and_released_files_carry_no_name(group_run: GroupRun) -> None:
    import pydicom

    meta = group_run.meta(keys.DEID_IMAGES)
    assert meta["quarantined"] >= 1 and meta["files_written"] == meta["records_out"]
    assert meta["patient_identity_removed_checked"] is True
    quarantine = group_run.resources["warehouse"].get().read_table(keys.AUDIT_SCHEMA, keys.QUARANTINE_TABLE)
    assert asset_name(keys.DEID_IMAGES) in set(quarantine["asset"])
    folder = Path(meta["images_dir"])
    names = {row["name_en"] for row in group_run.identities if row.get("name_en")}
    for file_name in group_run.table(keys.DEID_IMAGES)["dicom_file"]:
        ds = pydicom.dcmread(folder / file_name)
        assert str(ds.get("PatientName", "")) not in names and ds.PatientIdentityRemoved == "YES"


def test_the_tagger_and_the_release_report_their_figures(group_run: GroupRun) -> None:
    tagger = group_run.meta(keys.PHI_TAGGER)
    assert tagger["texts_unlinked_or_empty"] == 1 and tagger["model_storage"].startswith("raw zone")
    assert tagger["texts_train"] + tagger["texts_test"] == tagger["texts_in"] - 1
    released = group_run.meta(keys.RELEASED_STATISTICS)
    assert released["epsilon_spent_this_run"] == pytest.approx(1.0) and released["epsilon_budget"] == 5.0
    assert released["released_statistics_version"] == "2" and released["persons_left_out"].startswith("consent")


def test_the_run_purpose_comes_from_run_settings(group_run: GroupRun, tmp_path: Path) -> None:
    """The same group under a narrower purpose (MEDLLM_PURPOSE -> Settings.purpose -> run_settings)."""
    warehouse = WarehouseResource(url=f"duckdb:///{tmp_path / 'narrow.duckdb'}")
    resources = {**group_run.resources, "warehouse": warehouse,
                 "run_settings": RunSettingsResource(purpose="data_quality_reporting", k_anonymity_k=2)}
    narrow = materialize([deidentify.deidentified_observations], resources=resources)
    (event,) = narrow.asset_materializations_for_node(keys.DEID_OBSERVATIONS.to_python_identifier())
    assert event.metadata["purpose_id"].value == "data_quality_reporting"
    assert "value" not in warehouse.get().read_table(*warehouse_location(keys.DEID_OBSERVATIONS)).columns
    assert "value" in group_run.table(keys.DEID_OBSERVATIONS).columns  # the default purpose's release kept it
