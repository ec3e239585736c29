"""Free-text de-identification in the lifecycle run: tagger trained and evaluated, notes and
dialogues released without any identifier of the synthetic hospital's persons."""

from __future__ import annotations

import json
import re

import pytest

from medllm_pipelines.defs import keys
from medllm_pipelines.defs.keys import warehouse_location
from medllm_pipelines.lib.common.warehouse import Warehouse

pytestmark = pytest.mark.slow

TARGET_RECALL = 0.99
TARGET_TYPES = ("NAME", "ID_NUMBER", "PHONE", "ADDRESS")
IDENTITY_FIELDS = ("name_zh", "name_en", "resident_id", "mrn", "phone", "email", "address")


def _meta(run, asset_key) -> dict:
    return {k: getattr(v, "value", v) for k, v in run.materialization(asset_key).items()}


def _table(run, asset_key):
    return Warehouse(run.settings.warehouse_url).read_table(*warehouse_location(asset_key))


def _identities(run) -> list[dict]:
    return [json.loads(line) for line in run.hospital.identities.read_text("utf-8").splitlines() if line.strip()]


def test_the_tagger_is_trained_by_person_and_meets_the_recall_target(embedded_run) -> None:
    meta = _meta(embedded_run, keys.PHI_TAGGER)
    assert meta["texts_train"] > meta["texts_test"] > 0 and meta["persons_test"] > 0
    by_type = meta["held_out_by_type"]
    for label in TARGET_TYPES:
        assert by_type[label]["gold"] > 0, label
        assert meta[f"held_out_recall[{label}]"] >= TARGET_RECALL, (label, by_type[label])
    assert meta["held_out_micro_precision"] >= 0.95
    assert meta["tagger_digest"] in json.dumps(meta["detector_version"])
    assert meta["model_storage"].startswith("raw zone")
    # metadata is numbers and versions: no identity of any person in it
    dumped = json.dumps(meta, ensure_ascii=False, default=str)
    assert not [f for row in _identities(embedded_run) for f in IDENTITY_FIELDS
                if row.get(f) and len(str(row[f])) >= 2 and str(row[f]) in dumped]


@pytest.mark.parametrize("asset_key", [keys.DEID_NOTES, keys.DEID_DIALOGUES])
def test_text_tables_reconcile_and_pass_the_leak_gate(embedded_run, asset_key) -> None:
    meta = _meta(embedded_run, asset_key)
    assert meta["reconciled"] is True and meta["records_out"] > 0
    assert meta["records_in"] == meta["records_out"] + sum(v for k, v in meta.items() if k.startswith("removed["))
    gates = [e for e in embedded_run.check_evaluations()
             if e.asset_key == asset_key and e.check_name == keys.CHECK_NO_IDENTIFIERS]
    assert len(gates) == 1 and gates[0].passed
    assert sum(meta["spans_replaced_by_type"].values()) > 0


@pytest.mark.parametrize("asset_key", [keys.DEID_NOTES, keys.DEID_DIALOGUES])
def test_released_text_holds_no_identity_of_any_person(embedded_run, asset_key) -> None:
    frame = _table(embedded_run, asset_key)
    haystack = "\x00".join("\x00".join(frame[c].astype(str)) for c in frame.columns if frame[c].dtype == object)
    leaked = []
    for row in _identities(embedded_run):
        for field in IDENTITY_FIELDS:
            value = row.get(field)
            if not value:
                continue
            if value.isdigit():  # an MRN inside a longer number is not that MRN
                found = re.search(rf"(?<!\d){re.escape(value)}(?!\d)", haystack)
            else:
                found = value in haystack
            if found:
                leaked.append(field)
    assert leaked == []
    assert set(frame.columns) >= {"text_id", "patient_pseudonym", "institution", "language", "text", "replaced_name"}


def test_a_patients_name_gets_one_surrogate_in_all_their_notes(embedded_run) -> None:
    """A patient's notes in one language introduce them under one surrogate name (a person
    registered at a Chinese and an English site has two real names, so two surrogates)."""
    notes = _table(embedded_run, keys.DEID_NOTES)
    zh_intro = re.compile(r"^患者(\S+?)，", re.MULTILINE)
    en_intro = re.compile(r"^(.+?) \((?:身份证号|MRN|ID)", re.MULTILINE)
    names_by_patient: dict[tuple[str, str], list[str]] = {}
    for pseudonym, language, text in zip(notes["patient_pseudonym"], notes["language"], notes["text"], strict=True):
        match = zh_intro.search(text) or en_intro.search(text)
        if match:
            names_by_patient.setdefault((pseudonym, language), []).append(match.group(1))
    several = {p: set(names) for p, names in names_by_patient.items() if len(names) > 1}
    assert several, "no patient with two notes to compare"
    inconsistent = {p for p, names in several.items() if len(names) != 1}
    assert not inconsistent, f"{len(inconsistent)} of {len(several)} patients got two surrogate names"
    surrogate_names = {next(iter(n)) for n in several.values()}
    real_names = {row.get("name_zh") for row in _identities(embedded_run)} | {
        row.get("name_en") for row in _identities(embedded_run)}
    assert not surrogate_names & real_names


def test_dialogue_ids_join_the_triage_annotations(embedded_run) -> None:
    dialogues = _table(embedded_run, keys.DEID_DIALOGUES)
    annotations = _table(embedded_run, keys.TRIAGE_ANNOTATIONS)
    assert dialogues["text_id"].is_unique
    assert set(dialogues["text_id"]) & set(annotations["item_key"])
