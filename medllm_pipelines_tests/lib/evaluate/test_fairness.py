"""Subgroup metrics, gaps and the fairness gate, checked by hand and against fairlearn's MetricFrame."""

from __future__ import annotations

from functools import partial

import numpy as np
import pandas as pd
import pytest
from fairlearn.metrics import MetricFrame
from sklearn.metrics import accuracy_score, brier_score_loss, recall_score, roc_auc_score

from medllm_pipelines.lib.evaluate.fairness import (
    EMPTY_GROUP_REASON,
    TOO_FEW_GROUPS_REASON,
    age_bands,
    check_fairness,
    fairness_report,
    subgroup_metrics,
)
from medllm_pipelines.lib.evaluate.metrics import SINGLE_CLASS_REASON
from medllm_pipelines.lib.evaluate.task_metrics import binary_metric_set, multiclass_metric_set


def accuracy_at_half(y_true: np.ndarray, y_score: np.ndarray) -> float:
    return float(np.mean((y_score >= 0.5) == y_true))


def random_binary(n: int = 400, seed: int = 0) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, 2, n)
    score = np.clip(0.35 * truth + 0.65 * rng.random(n), 0.0, 1.0)
    features = pd.DataFrame({
        "sex": rng.choice(["F", "M"], n),
        "institution": rng.choice(["north", "south", "east"], n),
    })
    return truth, score, features


def test_hand_computed_groups_and_gap() -> None:
    # F: 4 rows, 3 correct (0.75); M: 2 rows, 1 correct (0.5)
    truth = np.array([1, 0, 1, 0, 1, 0])
    score = np.array([0.9, 0.2, 0.4, 0.1, 0.8, 0.7])
    sex = ["F", "F", "F", "F", "M", "M"]
    result = subgroup_metrics(truth, score, {"sex": sex}, {"accuracy": accuracy_at_half})

    by_label = {group.label: group for group in result.groups}
    assert by_label["sex=F"].size == 4 and by_label["sex=F"].values["accuracy"] == pytest.approx(0.75)
    assert by_label["sex=M"].size == 2 and by_label["sex=M"].values["accuracy"] == pytest.approx(0.5)
    assert result.overall["accuracy"] == pytest.approx(4 / 6)
    gap = result.gaps["accuracy"]
    assert gap.difference == pytest.approx(0.25)
    assert gap.ratio == pytest.approx(0.5 / 0.75)
    assert (gap.highest_group, gap.lowest_group, gap.n_groups_compared) == ("sex=F", "sex=M", 2)


@pytest.mark.parametrize("columns", [["sex"], ["institution"], ["sex", "institution"]])
def test_agrees_with_fairlearn_metricframe(columns: list[str]) -> None:
    truth, score, features = random_binary()
    predicted = (score >= 0.5).astype(int)
    metrics = {
        "accuracy": lambda t, s: accuracy_score(t, s >= 0.5),
        "recall": lambda t, s: recall_score(t, s >= 0.5),
        "roc_auc": roc_auc_score,
        "brier": brier_score_loss,
    }
    ours = subgroup_metrics(truth, score, features[columns], metrics)
    reference = MetricFrame(
        metrics={"accuracy": accuracy_score, "recall": recall_score},
        y_true=truth, y_pred=predicted, sensitive_features=features[columns],
    )
    scored = MetricFrame(metrics={"roc_auc": roc_auc_score, "brier": brier_score_loss},
                         y_true=truth, y_pred=score, sensitive_features=features[columns])
    expected = pd.concat([reference.by_group, scored.by_group], axis=1)

    frame = ours.by_group_frame().set_index(columns)[list(metrics)]
    pd.testing.assert_frame_equal(frame.sort_index(), expected.sort_index()[list(metrics)], check_names=False,
                                  check_index_type=False, atol=1e-12, rtol=0)
    sizes = features.groupby(columns).size()
    assert ours.by_group_frame().set_index(columns)["size"].sort_index().tolist() == sizes.sort_index().tolist()
    for name in ("accuracy", "recall"):
        assert ours.gaps[name].difference == pytest.approx(reference.difference()[name], abs=1e-12)
        assert ours.gaps[name].ratio == pytest.approx(reference.ratio()[name], abs=1e-12)
        assert ours.overall[name] == pytest.approx(reference.overall[name], abs=1e-12)
    for name in ("roc_auc", "brier"):
        assert ours.gaps[name].difference == pytest.approx(scored.difference()[name], abs=1e-12)


def test_metric_set_function_gives_the_same_values_as_scalar_functions() -> None:
    truth, score, features = random_binary(seed=3)
    from_set = subgroup_metrics(truth, score, features[["institution"]], partial(binary_metric_set, threshold=0.5))
    assert set(from_set.metrics) == {"accuracy", "sensitivity", "specificity", "precision", "f1", "roc_auc",
                                     "pr_auc", "brier"}
    reference = MetricFrame(metrics={"accuracy": accuracy_score, "sensitivity": recall_score},
                            y_true=truth, y_pred=(score >= 0.5).astype(int),
                            sensitive_features=features["institution"])
    for group in from_set.groups:
        expected = reference.by_group.loc[group.key["institution"]]
        assert group.values["accuracy"] == pytest.approx(expected["accuracy"], abs=1e-12)
        assert group.values["sensitivity"] == pytest.approx(expected["sensitivity"], abs=1e-12)


def test_single_class_subgroup_is_undefined_with_reason_and_fails_the_gate_closed() -> None:
    truth, score, features = random_binary(seed=1)
    clinic = features["institution"] == "east"
    truth = np.where(clinic, 1, truth)  # every row of one institution is positive
    result = subgroup_metrics(truth, score, features[["institution"]], partial(binary_metric_set, threshold=0.5))

    east = next(group for group in result.groups if group.key["institution"] == "east")
    assert east.values["roc_auc"] is None and east.undefined["roc_auc"] == SINGLE_CLASS_REASON
    assert east.values["specificity"] is None and "no negative cases" in east.undefined["specificity"]
    assert east.values["accuracy"] is not None  # still measurable
    gap = result.gaps["roc_auc"]
    assert gap.undefined_groups == ["institution=east"] and gap.n_groups_compared == 2

    check = check_fairness(result, {"accuracy": 1.0, "roc_auc": 1.0})
    outcome = {item.metric: item for item in check.results}
    assert outcome["accuracy"].passed
    assert not outcome["roc_auc"].passed and "institution=east" in outcome["roc_auc"].reason
    assert not check.passed


def test_empty_declared_subgroup_is_listed_as_undefined_not_zero() -> None:
    truth, score, features = random_binary(seed=2)
    sex = pd.Categorical(features["sex"], categories=["F", "M", "other"])
    result = subgroup_metrics(truth, score, {"sex": sex}, partial(binary_metric_set, threshold=0.5))

    other = next(group for group in result.groups if group.key["sex"] == "other")
    assert other.size == 0
    assert all(value is None for value in other.values.values())
    assert set(other.undefined.values()) == {EMPTY_GROUP_REASON}
    assert result.gaps["accuracy"].small_groups == ["sex=other"]
    assert result.gaps["accuracy"].n_groups_compared == 2  # F and M; the empty group neither 0 nor compared
    row = result.by_group_frame().set_index("sex").loc["other"]
    assert row["size"] == 0 and np.isnan(row["accuracy"])

    declared = subgroup_metrics(truth, score, features[["institution"]], {"accuracy": accuracy_at_half},
                                expected_groups={"institution": ["north", "south", "east", "west"]})
    assert [g.size for g in declared.groups if g.key["institution"] == "west"] == [0]
    with pytest.raises(ValueError, match="not declared"):
        subgroup_metrics(truth, score, features[["institution"]], {"accuracy": accuracy_at_half},
                         expected_groups={"institution": ["north", "south"]})


def test_one_defined_group_gives_no_gap_where_fairlearn_says_zero() -> None:
    truth, score, features = random_binary(seed=4)
    truth = np.where(features["sex"] == "M", 0, truth)  # men: negatives only, so no ROC-AUC
    result = subgroup_metrics(truth, score, features[["sex"]], {"roc_auc": lambda t, s: (
        roc_auc_score(t, s) if len(set(t)) == 2 else None)})
    reference = MetricFrame(metrics=lambda t, s: roc_auc_score(t, s) if len(set(t)) == 2 else np.nan,
                            y_true=truth, y_pred=score, sensitive_features=features["sex"])
    assert reference.difference() == 0.0  # what a report must not show as "no gap"
    gap = result.gaps["roc_auc"]
    assert gap.difference is None and gap.reason == TOO_FEW_GROUPS_REASON
    assert not check_fairness(result, {"roc_auc": 0.5}).passed


def test_min_group_size_leaves_small_groups_out_of_the_gap() -> None:
    truth = np.array([1, 0, 1, 0, 1, 0, 1, 0, 1])
    score = np.array([0.9, 0.1, 0.8, 0.2, 0.9, 0.1, 0.7, 0.3, 0.1])  # the lone "c" row is wrong
    site = ["a"] * 4 + ["b"] * 4 + ["c"]
    with_small = subgroup_metrics(truth, score, {"site": site}, {"accuracy": accuracy_at_half})
    without_small = subgroup_metrics(truth, score, {"site": site}, {"accuracy": accuracy_at_half}, min_group_size=2)
    assert with_small.gaps["accuracy"].difference == pytest.approx(1.0)
    assert without_small.gaps["accuracy"].difference == pytest.approx(0.0)
    assert without_small.gaps["accuracy"].small_groups == ["site=c"]


def test_report_per_attribute_and_intersection_and_its_largest_gap() -> None:
    truth, score, features = random_binary(n=600, seed=5)
    features["age_band"] = age_bands(np.random.default_rng(5).integers(20, 90, len(truth)))
    report = fairness_report(truth, score, features, {"accuracy": accuracy_at_half}, intersectional=True)
    assert list(report.frames) == ["sex", "institution", "age_band", "sex x institution x age_band"]
    per_attribute = {name: frame.gaps["accuracy"].difference for name, frame in report.frames.items()}
    largest = report.largest_gaps()["accuracy"]
    assert largest.difference == pytest.approx(max(per_attribute.values()))
    assert largest.attribute == max(per_attribute, key=per_attribute.get)
    # age bands below 20 are declared but empty
    assert [g.size for g in report.frames["age_band"].groups if g.key["age_band"] == "<18"] == [0]

    check = check_fairness(report, {"accuracy": largest.difference})
    assert check.passed and check.results[0].value == pytest.approx(largest.difference)
    failing = check_fairness(report, {"accuracy": largest.difference - 1e-6})
    assert not failing.passed and "exceeds the limit" in failing.results[0].reason
    assert failing.as_metadata()["fairness_limits"][0]["limit"] == pytest.approx(largest.difference - 1e-6)


def test_ratio_limits() -> None:
    truth = np.array([1, 0, 1, 0, 1, 0])
    score = np.array([0.9, 0.2, 0.4, 0.1, 0.8, 0.7])
    result = subgroup_metrics(truth, score, {"sex": ["F", "F", "F", "F", "M", "M"]}, {"accuracy": accuracy_at_half})
    assert check_fairness(result, {}, min_ratios={"accuracy": 0.6}).passed  # 0.5 / 0.75 = 0.667
    assert not check_fairness(result, {}, min_ratios={"accuracy": 0.7}).passed


def test_multiclass_metric_set_reads_a_probability_matrix() -> None:
    rng = np.random.default_rng(6)
    probabilities = rng.dirichlet(np.ones(4), 200)
    truth = rng.integers(0, 4, 200)
    sex = rng.choice(["F", "M"], 200)
    result = subgroup_metrics(truth, probabilities, {"sex": sex}, partial(multiclass_metric_set, top_k=(1, 3)))
    for group in result.groups:
        rows = sex == group.key["sex"]
        expected = np.mean(probabilities[rows].argmax(axis=1) == truth[rows])
        assert group.values["top1_accuracy"] == pytest.approx(expected)


@pytest.mark.parametrize(
    ("limits", "message"),
    [({}, "no fairness limits"), ({"auc": 0.1}, "not computed"), ({"accuracy": -0.1}, "finite number >= 0")],
)
def test_check_fairness_rejects_bad_limits(limits: dict, message: str) -> None:
    truth, score, features = random_binary(n=50)
    result = subgroup_metrics(truth, score, features[["sex"]], {"accuracy": accuracy_at_half})
    with pytest.raises(ValueError, match=message):
        check_fairness(result, limits)


def test_bad_sensitive_features_are_errors() -> None:
    truth, score, features = random_binary(n=50)
    with pytest.raises(ValueError, match="missing values"):
        subgroup_metrics(truth, score, {"sex": [None, *features["sex"][1:]]}, {"accuracy": accuracy_at_half})
    with pytest.raises(ValueError, match="rows"):
        subgroup_metrics(truth, score, features[["sex"]][:10], {"accuracy": accuracy_at_half})
    with pytest.raises(ValueError, match="probabilities"):  # bad scores surface on the overall evaluation
        subgroup_metrics(truth, score * 3, features[["sex"]], partial(binary_metric_set, threshold=0.5))


def test_age_bands() -> None:
    bands = age_bands([5, 18, 39, 40, 64, 65, 79, 80, 101])
    assert list(bands) == ["<18", "18-39", "18-39", "40-64", "40-64", "65-79", "65-79", ">=80", ">=80"]
    assert list(bands.categories) == ["<18", "18-39", "40-64", "65-79", ">=80"]
    with pytest.raises(ValueError, match="increasing"):
        age_bands([30], edges=(40, 18))
