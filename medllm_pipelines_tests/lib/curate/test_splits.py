"""Patient-level stratified splits, and the leakage check that proves them."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from medllm_pipelines.lib.curate.splits import assign_splits, check_no_patient_leakage

RATIOS = (0.70, 0.15, 0.15)


@pytest.fixture(scope="module")
def dataset() -> pd.DataFrame:
    """1,000 persons, 18% positive; a third of them have two or three rows."""
    rng = np.random.default_rng(5)
    persons = pd.DataFrame(
        {"patient_pseudonym": [f"p_{i:04d}" for i in range(1000)], "label": (rng.random(1000) < 0.18).astype(int)}
    )
    repeats = rng.choice([1, 1, 2, 3], size=len(persons))
    return persons.loc[persons.index.repeat(repeats)].reset_index(drop=True)


@pytest.fixture(scope="module")
def splits(dataset) -> pd.DataFrame:
    return assign_splits(dataset, RATIOS, seed=20240601)


def test_every_person_is_in_exactly_one_split(dataset, splits):
    assert sorted(splits["patient_pseudonym"]) == sorted(dataset["patient_pseudonym"].unique())
    assert splits["patient_pseudonym"].is_unique


def test_split_sizes_follow_the_ratios(splits):
    sizes = splits["split"].value_counts().to_dict()

    assert sizes["train"] == pytest.approx(700, abs=2)
    assert sizes["validation"] == pytest.approx(150, abs=2)
    assert sizes["test"] == pytest.approx(150, abs=2)


def test_splits_are_stratified_by_label(splits):
    overall = splits["label"].mean()

    for split, rate in splits.groupby("split")["label"].mean().items():
        assert rate == pytest.approx(overall, abs=0.02), split


def test_same_seed_same_splits_other_seed_other_splits(dataset, splits):
    again = assign_splits(dataset.sample(frac=1.0, random_state=3), RATIOS, seed=20240601)
    other = assign_splits(dataset, RATIOS, seed=1)

    pd.testing.assert_frame_equal(again, splits)
    assert not other["split"].equals(splits["split"])


def test_leakage_check_passes_on_assigned_splits(splits):
    report = check_no_patient_leakage(splits)

    assert report.passed
    assert report.persons == 1000
    assert sum(report.rows_per_split.values()) == 1000
    assert sum(report.positives_per_split.values()) == int(splits["label"].sum())


def test_leakage_check_finds_a_planted_leak(splits):
    person = splits.loc[splits["split"] == "train"].iloc[0]
    leaked = pd.concat([splits, pd.DataFrame([{**person.to_dict(), "split": "test"}])], ignore_index=True)

    report = check_no_patient_leakage(leaked)

    assert not report.passed
    assert report.persons_in_several_splits == 1


def test_tiny_single_class_sets_still_split():
    frame = pd.DataFrame({"patient_pseudonym": [f"p{i}" for i in range(10)], "label": [0] * 10})

    result = assign_splits(frame, RATIOS, seed=1)

    assert result["patient_pseudonym"].is_unique and len(result) == 10
    assert set(result["split"]) == {"train", "validation", "test"}
