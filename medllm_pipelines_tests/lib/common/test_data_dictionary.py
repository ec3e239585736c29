"""The data dictionary: every column of every Python-written warehouse table says what it holds, and nothing else.

``PYTHON_TABLES`` is the column list of each warehouse table a Python asset
writes, read from the warehouse of a full demo run (1,000 synthetic patients:
``information_schema.columns``, dbt models left out, they describe themselves
in dbt/models). A table or column added there needs its words in
``lib/common/data_dictionary.yaml`` and its name here.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pandas as pd
import pytest
import yaml

from medllm_pipelines.lib.common.data_dictionary import (
    DATA_DICTIONARY_PATH,
    DATA_DICTIONARY_VERSION,
    column_descriptions,
    data_dictionary,
    load_data_dictionary,
)
from medllm_pipelines.lib.ingest.sources import load_sources

# The content of each dictionary version. A changed meaning is a new version: bump `version` in
# data_dictionary.yaml and add its digest here (never edit a digest in place).
CONTENT_SHA256 = {"1.0.0": "569a9f4962b03a2a0070ae92d2f96124d119bb285d5d2a37d20c1c865786016a",
                  "1.1.0": "1d8a0c9159f68f1d345cf93f724593eeb8bbef7ecbeab427c1e39c388c2ef35d"}

PYTHON_TABLES: dict[str, tuple[str, ...]] = {
    "deploy.clinical_feedback": (
        "feedback_id", "recorded_at", "scenario", "model_name", "model_version", "agreement", "true_outcome",
        "probability", "predicted_label", "outcome_matches_prediction", "has_comment",
    ),
    "audit.daily_arrivals": ("institution", "file_kind", "status", "files", "bytes", "day"),
    "audit.file_ledger": (
        "content_sha256", "institution", "file_kind", "size_bytes", "status", "reason_code", "source_path_ciphertext",
        "landed_at", "dagster_run_id",
    ),
    "audit.file_outcomes": (
        "asset", "institution", "source_object", "records_in", "records_out", "records_quarantined",
        "records_removed", "removed_by_rule", "quarantined_by_reason", "partition",
    ),
    "audit.quarantine": (
        "stage", "asset", "institution", "source_object", "position", "resource_type", "reason_code", "reason",
        "partition",
    ),
    "curate.data_classification": (
        "patient_pseudonym", "institutions", "sex", "age_band", "icd10_chapters", "disease_type",
        "disease_type_source", "human_disease_type", "decision_tree_prediction", "random_forest_prediction",
    ),
    "curate.dataset_catalog": ("name", "kind", "version", "rows", "card_json"),
    "curate.diabetes_features": (
        "patient_pseudonym", "age_years", "bmi", "hba1c", "fasting_glucose", "systolic_bp", "diastolic_bp",
        "heart_rate", "total_cholesterol", "sex", "label",
    ),
    "curate.diabetes_splits": ("patient_pseudonym", "split", "label", "fold", "near_duplicate_key"),
    "curate.lesion_segmentation_dataset": (
        "image_id", "study_key", "patient_pseudonym", "institution", "rows", "columns", "mask_rle", "lesion",
        "lesion_pixels", "basis", "annotators", "modality", "pixel_file", "near_duplicate_key",
    ),
    "curate.lesion_segmentation_splits": (
        "image_id", "patient_pseudonym", "study_key", "near_duplicate_key", "institution", "lesion", "split", "fold",
    ),
    "deidentify.conditions": (
        "patient_pseudonym", "institution", "icd10", "icd10_category", "clinical_status", "onset_year",
    ),
    "deidentify.consent_registry": ("patient_pseudonym", "consent_status", "decided_year", "consent_records"),
    "deidentify.dialogues": (
        "text_id", "patient_pseudonym", "institution", "language", "turn_count", "text", "turns_json",
        "replaced_name", "replaced_id_number", "replaced_mrn", "replaced_phone", "replaced_email", "replaced_address",
        "replaced_date", "replaced_location", "replaced_organization", "spans_replaced",
    ),
    "deidentify.images": (
        "image_id", "patient_pseudonym", "institution", "modality", "rows", "columns", "number_of_frames",
        "transfer_syntax_uid", "pixel_decodable", "pixel_undecodable_reason", "study_year", "dicom_file",
        "pixel_file",
    ),
    "deidentify.notes": (
        "text_id", "patient_pseudonym", "institution", "language", "text", "replaced_name", "replaced_id_number",
        "replaced_mrn", "replaced_phone", "replaced_email", "replaced_address", "replaced_date", "replaced_location",
        "replaced_organization", "spans_replaced",
    ),
    "deidentify.observations": (
        "patient_pseudonym", "institution", "concept", "loinc", "value", "unit", "effective_year",
    ),
    "deidentify.patients": ("patient_pseudonym", "institution", "sex", "age_band"),
    "deidentify.released_statistics": (
        "query", "statistic", "group_value", "value", "unit", "mechanism", "epsilon", "delta", "sensitivity",
        "noise_scale", "ledger_seq", "dataset", "release_id", "released_at",
    ),
    "label.adjudication_queue": (
        "labelled_set", "item_key", "patient_pseudonym", "institution", "reason_code", "reason", "priority",
        "annotators", "details", "status", "decision", "decided_by", "decided_at",
    ),
    "label.agreement": ("labelled_set", "guideline_versions", "statistics_json", "thresholds_json", "passed"),
    "label.clinical_entities": (
        "item_key", "patient_pseudonym", "institution", "entity_type", "start", "end", "text", "basis",
    ),
    "label.diabetes_labels": ("patient_pseudonym", "label", "label_source", "institutions"),
    "label.entity_annotations": (
        "item_key", "patient_pseudonym", "institution", "text_length", "annotator_id", "kind", "annotation_id",
        "type", "start", "end", "fragments", "identifier", "text", "arg1", "arg2", "annotated_at", "tool",
        "guideline_version",
    ),
    "label.expert_decisions": (
        "labelled_set", "item_key", "patient_pseudonym", "institution", "role", "action", "value", "decided_by",
        "decided_at", "guideline_version",
    ),
    "label.image_annotations": (
        "image_id", "study_key", "patient_pseudonym", "institution", "annotator_id", "shape_kind", "source_format",
        "rows", "columns", "mask_rle", "boxes", "pixels", "annotated_at", "tool", "guideline_version",
    ),
    "label.label_audit": ("item_key", "accepted_label", "audit_label", "audited", "agrees", "labelled_set"),
    "label.lesion_boxes": (
        "image_id", "study_key", "patient_pseudonym", "institution", "rows", "columns", "bbox_x", "bbox_y",
        "bbox_width", "bbox_height", "lesion", "basis", "annotators",
    ),
    "label.lesion_masks": (
        "image_id", "study_key", "patient_pseudonym", "institution", "rows", "columns", "mask_rle", "lesion",
        "lesion_pixels", "basis", "annotators",
    ),
    "label.triage_annotations": (
        "item_key", "patient_pseudonym", "institution", "annotator_id", "label", "annotated_at", "tool",
        "guideline_version", "audit_sample",
    ),
    "label.triage_labels": (
        "item_key", "patient_pseudonym", "institution", "label", "basis", "annotators", "guideline_version",
    ),
    "label.weak_label_comparison": (
        "item_key", "patient_pseudonym", "institution", "human_label", "weak_label", "votes", "agrees",
    ),
}


def content_digest(path: Path) -> str:
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    raw.pop("version")
    return hashlib.sha256(json.dumps(raw, sort_keys=True).encode()).hexdigest()


@pytest.mark.parametrize("table", sorted(PYTHON_TABLES))
def test_every_column_of_every_python_table_is_described(table: str) -> None:
    described = column_descriptions(PYTHON_TABLES[table], table)
    missing = set(PYTHON_TABLES[table]) - set(described)
    assert not missing, f"{table}: no description for {sorted(missing)}"


def test_the_dictionary_describes_only_columns_a_table_has() -> None:
    dictionary = data_dictionary()
    every_column = {c for columns in PYTHON_TABLES.values() for c in columns}
    assert set(dictionary.columns) - every_column == set(), "described columns no table has (stale entries)"
    assert set(dictionary.tables) <= set(PYTHON_TABLES), "table entries for tables that are not written"
    for table, entries in dictionary.tables.items():
        assert set(entries) <= set(PYTHON_TABLES[table]), f"{table}: entries for columns it does not have"
        repeated = [c for c in entries if entries[c] == dictionary.columns.get(c)]
        assert not repeated, f"{table}: entries repeat the shared meaning: {repeated}"


def test_a_table_entry_is_the_meaning_in_its_table_only() -> None:
    dictionary = data_dictionary()
    shared = column_descriptions(["label"])["label"]
    assert shared == dictionary.columns["label"]
    triage = column_descriptions(["label"], "label.triage_labels")["label"]
    assert triage == dictionary.tables["label.triage_labels"]["label"] != shared
    assert column_descriptions(["label"], "label.diabetes_labels")["label"].startswith("1 when")
    pseudonym = column_descriptions(["patient_pseudonym"])
    assert column_descriptions(["patient_pseudonym"], "label.triage_labels") == pseudonym
    assert column_descriptions(["label"], "no_such.table") == {"label": shared}  # a table without entries: shared words


def test_unknown_columns_are_left_out_and_names_are_strings() -> None:
    described = column_descriptions(["patient_pseudonym", "not_a_column", 0])
    assert list(described) == ["patient_pseudonym"]
    assert column_descriptions([]) == {}


# Shapes of values the data holds: pseudonyms and keyed ids, hashes, dates, e-mail addresses, phone/ID numbers.
VALUE_SHAPES = {
    "keyed id": re.compile(r"\b[a-z]_[0-9a-f]{6,}"),
    "hex digest": re.compile(r"\b[0-9a-f]{12,}\b"),
    "date": re.compile(r"\b\d{4}-\d{2}-\d{2}\b"),
    "e-mail": re.compile(r"[\w.+-]+@[\w-]+\.[\w.]+"),
    "long number": re.compile(r"\d{5,}"),
}


def all_descriptions() -> dict[str, str]:
    dictionary = data_dictionary()
    return {
        **{f"columns.{c}": t for c, t in dictionary.columns.items()},
        **{f"{table}.{c}": t for table, entries in dictionary.tables.items() for c, t in entries.items()},
    }


def test_no_description_carries_an_identifier_or_a_value_from_the_data() -> None:
    """The dictionary shows in the UI of anyone who reads metadata: it names formats and rules, never values."""
    registry = load_sources()
    institution_words = {s.code for s in registry.sources} | {s.name for s in registry.sources}
    for where, text in all_descriptions().items():
        for shape, pattern in VALUE_SHAPES.items():
            assert not pattern.search(text), f"{where}: looks like a {shape}: {pattern.search(text).group(0)!r}"
        words = set(re.findall(r"\w+", text))
        assert not words & institution_words and not any(name in text for name in institution_words), where


def test_a_change_of_meaning_comes_with_a_new_version() -> None:
    assert DATA_DICTIONARY_VERSION == data_dictionary().version == load_data_dictionary().version
    assert CONTENT_SHA256.get(DATA_DICTIONARY_VERSION) == content_digest(DATA_DICTIONARY_PATH), (
        "data_dictionary.yaml changed without a new version: bump it and add its digest to CONTENT_SHA256")


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"columns": {"a": "x"}}, "`version` must be a non-empty string"),
        ({"version": "1", "columns": {"a": ""}}, "column a needs a non-empty description"),
        ({"version": "1", "columns": {"a": None}}, "column a needs a non-empty description"),
        ({"version": "1", "tables": {"patients": {"a": "x"}}}, "must be named <schema>.<table>"),
        ({"version": "1", "tables": {"label.x": {"a": " "}}}, "label.x.a needs a non-empty description"),
    ],
)
def test_a_malformed_dictionary_is_refused(tmp_path: Path, raw: dict, message: str) -> None:
    path = tmp_path / "dictionary.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    with pytest.raises(ValueError, match=re.escape(message)):
        load_data_dictionary(path)


def test_a_dictionary_file_is_read_with_folded_whitespace(tmp_path: Path) -> None:
    path = tmp_path / "dictionary.yaml"
    text = 'version: "2"\ncolumns:\n  a: |\n    two\n    lines\ntables:\n  s.t:\n    a: own\n'
    path.write_text(text, encoding="utf-8")
    dictionary = load_data_dictionary(path)
    assert (dictionary.version, dictionary.describe("a"), dictionary.describe("a", "s.t")) == ("2", "two lines", "own")
    assert dictionary.describe("b") is None


def test_the_asset_column_schema_carries_the_dictionary(monkeypatch: pytest.MonkeyPatch) -> None:
    """What the Dagster UI shows: every column of a written frame described, the caller's words first."""
    from medllm_pipelines.defs.metadata import frame_metadata, table_schema

    frame = pd.DataFrame({c: [] for c in PYTHON_TABLES["label.triage_labels"]})
    meta = frame_metadata(frame)
    schema = meta["dagster/column_schema"]
    assert [c.name for c in schema.columns] == list(frame.columns)
    assert all(c.description for c in schema.columns)
    assert meta["data_dictionary_version"] == DATA_DICTIONARY_VERSION
    by_name = {c.name: c.description for c in table_schema(frame, table="label.triage_labels").columns}
    assert by_name["label"] == data_dictionary().tables["label.triage_labels"]["label"]
    assert {c.name: c.description for c in table_schema(frame, {"label": "mine"}).columns}["label"] == "mine"
    odd = pd.DataFrame({"not_a_column": [1]})
    assert table_schema(odd).columns[0].description is None
    assert "dagster/column_schema" not in frame_metadata(frame, with_schema=False)
