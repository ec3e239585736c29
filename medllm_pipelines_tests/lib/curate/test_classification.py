"""Classification by disease type, age band and sex; decision tree and random forest vs the human classes."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from medllm_pipelines.lib.curate.classification import (
    HUMAN,
    RANDOM_FOREST,
    class_counts,
    classify_persons,
)

AREAS = {"J06": "Respiratory Medicine", "K29": "Gastroenterology", "M54": "Orthopedics", "E11": "Endocrinology"}


@pytest.fixture(scope="module")
def population():
    rng = np.random.default_rng(4)
    n = 240
    persons = pd.DataFrame({
        "patient_pseudonym": [f"p_{i:04d}" for i in range(n)],
        "institution": rng.choice(["hzsf", "rvic"], n),
        "sex": rng.choice(["female", "male"], n),
        "age_band": rng.choice(["30-34", "50-54", "70-74"], n),
    })
    code = rng.choice(list(AREAS), n)
    conditions = pd.DataFrame({"patient_pseudonym": persons["patient_pseudonym"], "icd10_category": code})
    observations = pd.DataFrame({"patient_pseudonym": persons["patient_pseudonym"], "concept": "hba1c",
                                 "value": rng.normal(6, 1, n)})
    truth = pd.Series([AREAS[c] for c in code], index=persons["patient_pseudonym"])
    noisy = truth.where(rng.random(n) > 0.1, "Neurology")  # humans sometimes see what codes do not say
    labelled = persons["patient_pseudonym"].iloc[:160]
    human = pd.DataFrame({"item_key": [f"i_{i}" for i in range(160)], "patient_pseudonym": labelled, "label": noisy[labelled].to_numpy()})
    return persons, conditions, observations, human


@pytest.fixture(scope="module")
def classified(population):
    return classify_persons(*population, seed=1)


def test_trees_learn_the_human_classes_better_than_the_majority(classified):
    _, report = classified
    assert report.labelled == 160 and report.folds >= 2
    assert report.random_forest_accuracy > report.majority_class_accuracy + 0.3
    assert report.decision_tree_accuracy > report.majority_class_accuracy + 0.3
    assert report.feature_importance, "the forest says which features drive the classes"


def test_human_classes_are_kept_and_the_rest_are_predicted(population, classified):
    persons, _, _, human = population
    frame, _ = classified
    indexed = frame.set_index("patient_pseudonym")
    assert len(frame) == len(persons)
    assert (indexed.loc[human["patient_pseudonym"], "disease_type"].to_numpy() == human["label"].to_numpy()).all()
    assert set(indexed["disease_type_source"]) == {HUMAN, RANDOM_FOREST}
    assert indexed["icd10_chapters"].isin(["respiratory", "digestive", "musculoskeletal", "endocrine_metabolic"]).all()


def test_class_counts_cross_disease_type_age_band_and_sex(classified):
    frame, _ = classified
    counts = class_counts(frame)
    assert sum(counts["by_sex"].values()) == len(frame)
    nested = counts["by_disease_type_age_band_sex"]
    assert sum(n for bands in nested.values() for sexes in bands.values() for n in sexes.values()) == len(frame)


def test_too_few_human_labels_report_no_accuracy(population):
    persons, conditions, observations, human = population
    _, report = classify_persons(persons, conditions, observations, human.head(3), seed=1)
    assert report.random_forest_accuracy is None and report.labelled == 3
