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


# --- grouped, time-based, external and k-fold splits; the leakage check -----------------------
from medllm_pipelines.lib.curate.splits import (
    EXTERNAL,
    SplitConfig,
    assign_split_rows,
    check_leakage,
    connected_groups,
    image_near_duplicate_key,
    tabular_near_duplicate_key,
)


@pytest.fixture(scope="module")
def images() -> pd.DataFrame:
    """3,000 images of 600 patients in 900 studies; 40 images are near-duplicates of another patient's."""
    rng = np.random.default_rng(11)
    patients = rng.integers(0, 600, 3000)
    frame = pd.DataFrame({
        "image_id": [f"img{i:05d}" for i in range(3000)],
        "patient_pseudonym": [f"p_{p:04d}" for p in patients],
        "study_key": [f"s_{p:04d}_{s}" for p, s in zip(patients, rng.integers(0, 2, 3000), strict=True)],
        "institution": np.where(patients % 3 == 0, "jhsq", np.where(patients % 3 == 1, "hzsf", "rvic")),
        "lesion": rng.random(3000) < 0.3,
        "taken": rng.integers(2018, 2026, 3000),
    })
    dup = np.full(3000, None, dtype=object)
    dup[:20] = [f"d{i}" for i in range(20)]
    dup[1500:1520] = [f"d{i}" for i in range(20)]
    frame["near_duplicate_key"] = dup
    return frame


KEYS = ("patient_pseudonym", "study_key", "near_duplicate_key")


def test_rows_sharing_any_key_form_one_group():
    frame = pd.DataFrame({"p": ["a", "b", "c", "d"], "s": ["s1", "s2", "s2", "s3"], "d": [None, None, "x", "x"]})
    groups = connected_groups(frame, ["p", "s", "d"])
    assert groups[0] != groups[1] and groups[1] == groups[2] == groups[3]
    shuffled = frame.iloc[[3, 1, 0, 2]].reset_index(drop=True)
    assert sorted(pd.Series(connected_groups(shuffled, ["p", "s", "d"])).value_counts()) == [1, 3]


def test_no_patient_study_or_near_duplicate_crosses_splits(images):
    config = SplitConfig(seed=3, stratify_by="lesion", together=("study_key", "near_duplicate_key"), k_folds=5)
    splits = assign_split_rows(images, config)
    report = check_leakage(splits, KEYS, label="lesion")
    assert report.passed and set(report.crossing_by_key.values()) == {0}
    groups = splits.drop_duplicates("split_group")
    assert groups["split"].value_counts(normalize=True)["train"] == pytest.approx(0.70, abs=0.01)
    shares = {s: v["True"] for s, v in report.label_share_per_split.items() if v}
    assert max(shares.values()) - min(shares.values()) < 0.05


def test_a_planted_study_leak_is_found(images):
    splits = assign_split_rows(images, SplitConfig(seed=3, stratify_by="lesion", together=("study_key",)))
    train_study = splits.loc[splits["split"] == "train", "study_key"].iloc[0]
    test_row = splits.index[splits["split"] == "test"][0]
    splits.loc[test_row, "study_key"] = train_study
    report = check_leakage(splits, KEYS, label="lesion")
    assert not report.passed and report.crossing_by_key["study_key"] == 1


def test_k_folds_partition_the_development_persons(images):
    splits = assign_split_rows(images, SplitConfig(seed=5, stratify_by="lesion", k_folds=4))
    development = splits[splits["split"] != "test"]
    assert (splits.loc[splits["split"] == "test", "fold"] == -1).all()
    assert set(development["fold"]) == {0, 1, 2, 3}
    assert (development.groupby("patient_pseudonym")["fold"].nunique() == 1).all()
    sizes = development.drop_duplicates("patient_pseudonym")["fold"].value_counts()
    assert sizes.max() - sizes.min() <= 1
    leaked = splits.copy()
    leaked.loc[development.index[0], "fold"] = (development["fold"].iloc[0] + 1) % 4
    assert check_leakage(leaked, ("patient_pseudonym",), label="lesion").folds_crossing >= 1


def test_institutions_can_be_held_out_for_external_validation(images):
    splits = assign_split_rows(images, SplitConfig(seed=1, stratify_by="lesion", external_institutions=("jhsq",)))
    assert (splits.loc[splits["institution"] == "jhsq", "split"] == EXTERNAL).all()
    assert (splits.loc[splits["institution"] != "jhsq", "split"] != EXTERNAL).all()
    assert check_leakage(splits, KEYS, label="lesion").rows_per_split[EXTERNAL] == (images["institution"] == "jhsq").sum()


def test_time_based_split_trains_on_the_past(images):
    per_patient = images.groupby("patient_pseudonym", as_index=False).agg(taken=("taken", "min"), lesion=("lesion", "max"))
    splits = assign_split_rows(per_patient, SplitConfig(seed=1, strategy="time", time_column="taken", stratify_by=None))
    by_split = splits.groupby("split")["taken"]
    assert by_split.max()["train"] <= by_split.min()["validation"] <= by_split.max()["validation"] <= by_split.min()["test"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"ratios": (0.5, 0.2, 0.2)}, "sum to 1"), ({"strategy": "random"}, "strategy"), ({"strategy": "time"}, "time_column"),
     ({"k_folds": 1}, "k_folds")],
)
def test_split_config_is_validated(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SplitConfig(**kwargs)


def test_near_duplicate_keys_match_copies_not_neighbours():
    rng = np.random.default_rng(0)
    image = rng.normal(500, 50, (64, 64))
    assert image_near_duplicate_key(image) == image_near_duplicate_key(image + rng.normal(0, 0.01, image.shape))
    assert image_near_duplicate_key(image) != image_near_duplicate_key(rng.normal(500, 50, (64, 64)))
    frame = pd.DataFrame({"a": [1.01, 1.04, 2.0, None], "b": [5.0, 5.0, 5.0, None], "c": ["x", "x", "x", None]})
    keys = tabular_near_duplicate_key(frame, ["a", "b", "c"])
    assert keys[0] == keys[1] != keys[2] and keys[3] is None
