"""Agreement statistics agree with their references and with the textbook."""

from __future__ import annotations

import math

import krippendorff
import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import cohen_kappa_score, f1_score, jaccard_score

from medllm_pipelines.lib.label.agreement import (
    box_dice,
    box_iou,
    character_labels,
    compare_with_thresholds,
    dice,
    entity_agreement,
    fleiss_kappa,
    iou,
    label_agreement,
    mask_agreement,
    span_f1,
)
from medllm_pipelines.lib.label.images import boxes_to_mask

# Fleiss (1971) as reproduced on Wikipedia ("Fleiss' kappa", worked example):
# 10 subjects, 14 raters, 5 categories; P-bar = 0.378, P-e = 0.213, kappa = 0.210.
FLEISS_EXAMPLE = [
    [0, 0, 0, 0, 14],
    [0, 2, 6, 4, 2],
    [0, 0, 3, 5, 6],
    [0, 3, 9, 2, 0],
    [2, 2, 8, 1, 1],
    [7, 7, 0, 0, 0],
    [3, 2, 6, 3, 0],
    [2, 5, 3, 2, 2],
    [6, 5, 2, 1, 0],
    [0, 2, 2, 3, 7],
]


def _random_long(seed: int, items: int = 300, annotators: int = 3, categories: int = 5, missing: float = 0.1) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, categories, items)
    rows = []
    for a in range(annotators):
        noisy = np.where(rng.random(items) < 0.3 + 0.1 * a, rng.integers(0, categories, items), truth)
        for i in range(items):
            if rng.random() >= missing:
                rows.append((f"item{i:04d}", f"ann-{a:02d}", f"c{noisy[i]}"))
    return pd.DataFrame(rows, columns=["item_key", "annotator_id", "label"])


def test_fleiss_kappa_reproduces_the_textbook_example():
    assert fleiss_kappa(FLEISS_EXAMPLE) == pytest.approx(0.2099, abs=5e-5)


def test_fleiss_kappa_needs_a_constant_number_of_ratings():
    with pytest.raises(ValueError, match="same number"):
        fleiss_kappa([[1, 1], [2, 1]])


def test_fleiss_equals_cohen_for_two_raters_with_equal_marginals():
    """With identical marginals, Cohen's kappa and Scott's pi (Fleiss with n=2) coincide."""
    rng = np.random.default_rng(3)
    first = rng.integers(0, 4, 400)
    second = first.copy()
    swap = rng.choice(400, size=120, replace=False)
    second[swap[:60]], second[swap[60:]] = first[swap[60:]], first[swap[:60]]  # same marginals, 120 disagreements
    counts = np.zeros((400, 4))
    np.add.at(counts, (np.arange(400), first), 1)
    np.add.at(counts, (np.arange(400), second), 1)
    assert fleiss_kappa(counts) == pytest.approx(cohen_kappa_score(first, second), abs=1e-12)


@pytest.mark.parametrize("n", [10, 57, 300])
def test_fleiss_and_krippendorff_obey_their_two_rater_identity(n):
    """Two raters, nominal, no missing data: alpha = 1 - (2n-1)/(2n) (1 - pi)."""
    rng = np.random.default_rng(n)
    a = rng.integers(0, 4, n)
    b = np.where(rng.random(n) < 0.6, a, rng.integers(0, 4, n))
    counts = np.zeros((n, 4))
    np.add.at(counts, (np.arange(n), a), 1)
    np.add.at(counts, (np.arange(n), b), 1)
    alpha = krippendorff.alpha(reliability_data=np.vstack([a, b]).astype(float), level_of_measurement="nominal")
    assert alpha == pytest.approx(1 - (2 * n - 1) / (2 * n) * (1 - fleiss_kappa(counts)), abs=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_label_agreement_matches_the_reference_implementations(seed):
    long = _random_long(seed)
    result = label_agreement(long)
    wide = long.pivot(index="annotator_id", columns="item_key", values="label")
    codes = {c: i for i, c in enumerate(sorted(long["label"].unique()))}
    reliability = wide.apply(lambda col, codes=codes: col.map(codes)).to_numpy(dtype=float)
    assert result.krippendorff_alpha == pytest.approx(
        krippendorff.alpha(reliability_data=reliability, level_of_measurement="nominal"), abs=1e-9
    )
    for pair, kappa in result.pairwise_cohen_kappa.items():
        a, b = pair.split("~")
        both = wide.loc[[a, b]].dropna(axis=1)
        assert kappa == pytest.approx(cohen_kappa_score(both.loc[a], both.loc[b]), abs=1e-9)
    complete = wide.dropna(axis=1)
    assert result.fleiss_items == complete.shape[1]
    counts = np.zeros((complete.shape[1], len(codes)))
    for j, column in enumerate(complete.columns):
        for value in complete[column]:
            counts[j, codes[value]] += 1
    assert result.fleiss_kappa == pytest.approx(fleiss_kappa(counts), abs=1e-12)


def test_perfect_and_undefined_agreement():
    perfect = pd.DataFrame({"item_key": ["a", "a", "b", "b"], "annotator_id": ["x", "y", "x", "y"], "label": ["p", "p", "q", "q"]})
    assert label_agreement(perfect).fleiss_kappa == pytest.approx(1.0)
    assert label_agreement(perfect).unanimous_items == 2
    one_category = perfect.assign(label="p")
    result = label_agreement(one_category)
    assert math.isnan(result.krippendorff_alpha) and math.isnan(result.fleiss_kappa)
    checked = compare_with_thresholds(result.statistics(), {"fleiss_kappa": 0.5})
    assert checked[0].passed is False and checked[0].value is None  # undefined never passes


@pytest.mark.parametrize("seed", range(3))
def test_dice_and_iou_match_scikit_learn(seed):
    rng = np.random.default_rng(seed)
    a, b = rng.random((32, 32)) < 0.3, rng.random((32, 32)) < 0.35
    assert dice(a, b) == pytest.approx(f1_score(a.ravel(), b.ravel()), abs=1e-12)
    assert iou(a, b) == pytest.approx(jaccard_score(a.ravel(), b.ravel()), abs=1e-12)


def test_empty_masks_are_undefined_not_perfect():
    empty = np.zeros((4, 4), dtype=bool)
    assert math.isnan(dice(empty, empty)) and math.isnan(iou(empty, empty))
    full = np.ones((4, 4), dtype=bool)
    assert dice(empty, full) == 0.0


def test_box_overlap_by_hand_and_as_filled_masks():
    first, second = (2.0, 2.0, 4.0, 4.0), (4.0, 4.0, 4.0, 4.0)  # overlap 2x2 = 4, union 28
    assert box_iou(first, second) == pytest.approx(4 / 28)
    assert box_dice(first, second) == pytest.approx(2 * 4 / 32)
    masks = boxes_to_mask([first], (12, 12)), boxes_to_mask([second], (12, 12))
    assert iou(*masks) == pytest.approx(box_iou(first, second))
    assert box_iou(first, None) == 0.0 and math.isnan(box_iou(None, None))


def test_mask_agreement_reports_per_item_minimum():
    a = np.zeros((8, 8), dtype=bool)
    a[2:6, 2:6] = True
    shifted = np.roll(a, 1, axis=1)
    result = mask_agreement({"img1": {"x": a, "y": a, "z": shifted}, "img2": {"x": a & False, "y": a & False, "z": a & False}})
    per_item = result.per_item().set_index("item")
    assert per_item.loc["img1", "min_dice"] == pytest.approx(dice(a, shifted))
    assert math.isnan(per_item.loc["img2", "min_dice"])
    assert result.as_dict()["pairs_both_empty"] == 3


def test_span_f1_and_character_level_agreement():
    assert span_f1({(0, 3, "A"), (5, 7, "B")}, {(0, 3, "A"), (5, 8, "B")}) == pytest.approx(0.5)
    assert character_labels(6, [(1, 3, "B")], ["A", "B"]).tolist() == [0, 2, 2, 0, 0, 0]
    docs = {
        "d1": (10, {"x": {(0, 3, "SYMPTOM")}, "y": {(0, 3, "SYMPTOM")}}),
        "d2": (10, {"x": {(2, 5, "DRUG")}, "y": {(2, 4, "DRUG")}}),
    }
    result = entity_agreement(docs, ["DRUG", "SYMPTOM"])
    assert result.pairwise_entity_f1["x~y"] == pytest.approx(2 * 1 / 4)
    assert 0 < result.char_krippendorff_alpha < 1
    assert result.per_document.set_index("document").loc["d1", "min_f1"] == 1.0
