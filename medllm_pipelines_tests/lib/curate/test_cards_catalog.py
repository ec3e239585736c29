"""Dataset versions, cards and the catalog behind `medllm datasets`."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from medllm_pipelines.lib.common.records import frame_content_hash
from medllm_pipelines.lib.common.warehouse import Warehouse
from medllm_pipelines.lib.curate.cards import (
    LABELLED_SET,
    SPLIT,
    build_card,
    build_card_set,
    card_markdown,
    training_dataset_version,
    write_card,
)
from medllm_pipelines.lib.curate.catalog import (
    CATALOG_SCHEMA,
    CATALOG_TABLE,
    catalog_frame,
    format_datasets,
    list_datasets,
)
from medllm_pipelines.lib.curate.spec import load_spec

PATIENTS = pd.DataFrame({"patient_pseudonym": ["p1", "p2", "p3", "p4"], "institution": ["a", "a", "b", "b"],
                         "sex": ["female", "male", "male", "female"], "age_band": ["40-44", "40-44", "60-64", "90+"]})


def _splits() -> pd.DataFrame:
    return pd.DataFrame({"patient_pseudonym": ["p1", "p2", "p3", "p4"], "split": ["train", "train", "validation", "test"],
                         "label": [1, 0, 0, 1], "fold": [0, 1, -1, -1], "near_duplicate_key": [None, None, None, None]})


def test_the_training_version_is_what_the_train_stage_logs():
    features = pd.DataFrame({"patient_pseudonym": ["p3", "p1", "p2", "p4"], "bmi": [20.0, 30.0, 25.0, None], "label": [0, 1, 0, 1]})
    splits = _splits()
    merged = features.merge(splits[["patient_pseudonym", "split"]], on="patient_pseudonym").sort_values("patient_pseudonym")
    assert training_dataset_version(features, splits) == frame_content_hash(merged.reset_index(drop=True))
    assert training_dataset_version(features, splits.sample(frac=1, random_state=1)) == training_dataset_version(features, splits)


def test_a_card_counts_per_class_split_site_sex_and_age_band(tmp_path):
    card = build_card(name="curate/x_splits", kind=SPLIT, frame=_splits(), description="d", sources=["s"],
                      label_column="label", split_column="split", patients=PATIENTS, leakage={"passed": True})
    counts = card["counts"]
    assert counts["per_split"] == {"test": 1, "train": 2, "validation": 1}
    assert counts["per_split_class"]["train"] == {"0": 1, "1": 1}
    assert counts["per_site"] == {"a": 2, "b": 2} and counts["per_age_band"]["40-44"] == 2
    assert card["version"] == frame_content_hash(_splits())
    paths = write_card(card, tmp_path)
    assert json.loads(Path(paths["json"]).read_text())["version"] == card["version"]
    assert "## Leakage check" in card_markdown(card) and "| train |" in card_markdown(card)


def test_catalog_round_trips_through_the_warehouse(tmp_path):
    warehouse = Warehouse(f"duckdb:///{tmp_path / 'w.duckdb'}")
    assert list_datasets(warehouse) == []
    assert "no datasets" in format_datasets([])
    features = pd.DataFrame({"patient_pseudonym": ["p1", "p2", "p3", "p4"], "bmi": [1.0, 2.0, 3.0, 4.0], "label": [1, 0, 0, 1]})
    labels = pd.DataFrame({"patient_pseudonym": ["p1", "p2"], "label": [1, 0], "institution": ["a", "a"]})
    agreement = pd.DataFrame([{"labelled_set": "triage_labels", "guideline_versions": "triage-guideline-v1.2",
                               "statistics_json": json.dumps({"fleiss_kappa": 0.7}), "thresholds_json": "[]", "passed": True}])
    triage = pd.DataFrame({"item_key": ["i1"], "patient_pseudonym": ["p1"], "institution": ["a"], "label": ["Cardiology"]})
    cards = build_card_set(
        {"deidentify/patients": PATIENTS, "label/diabetes_labels": labels, "label/triage_labels": triage,
         "curate/diabetes_features": features, "curate/diabetes_splits": _splits()},
        agreement, pd.DataFrame(), specs={"curate/diabetes_splits": load_spec("t2d_risk")},
        leakage_keys={"curate/diabetes_splits": ("patient_pseudonym", "near_duplicate_key")},
    )
    warehouse.write_table(CATALOG_SCHEMA, CATALOG_TABLE, catalog_frame(cards))
    listed = {d["name"]: d for d in list_datasets(warehouse)}
    assert list(listed) == ["label/diabetes_labels", "label/triage_labels", "curate/diabetes_splits"]
    split = listed["curate/diabetes_splits"]
    assert split["version"] == training_dataset_version(features, _splits())
    assert split["counts_per_split"] == {"test": 1, "train": 2, "validation": 1} and split["leakage_passed"] is True
    assert listed["label/triage_labels"]["agreement"]["fleiss_kappa"] == 0.7 and listed["label/triage_labels"]["agreement_passed"]
    assert split["card"]["model_spec"]["id"] == "t2d_risk"
    assert "curate/diabetes_splits" in format_datasets(list(listed.values()))


@pytest.mark.parametrize("kind", [LABELLED_SET, SPLIT])
def test_card_version_changes_with_the_content(kind):
    frame = _splits()
    first = build_card(name="x", kind=kind, frame=frame, description="", sources=[], label_column="label")
    second = build_card(name="x", kind=kind, frame=frame.assign(label=[1, 1, 0, 1]), description="", sources=[], label_column="label")
    assert first["version"] != second["version"]
