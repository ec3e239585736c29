"""The declared missing-value policy, applied with counts per column."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from medllm_pipelines.lib.quality.imputation import (
    MissingValuePolicy,
    apply_missing_value_policy,
    load_missing_value_policy,
)


def policy(**columns) -> MissingValuePolicy:
    return MissingValuePolicy("test", columns, "effective_date", "patient_key", ("a", "b", "c"), 0)


def test_the_declared_policy_names_a_strategy_for_every_concept():
    from medllm_pipelines.lib.common import codes

    declared = load_missing_value_policy()

    assert {c.name for c in codes.CONCEPTS} <= set(declared.columns)
    assert declared.version


def test_drop_mean_median_and_fallback_with_counts():
    frame = pd.DataFrame({"patient_key": ["p1", "p2", None, "p4", "p5"], "effective_date": ["2024-01-01"] * 5,
                          "a": [1.0, np.nan, 5.0, 3.0, 100.0], "b": [2.0, 4.0, 6.0, np.nan, np.nan]})

    result = apply_missing_value_policy(frame, policy(patient_key={"strategy": "drop"}, a={"strategy": "median"},
                                                      b={"strategy": "mean"}))

    assert result.rows_dropped == 1 and result.dropped_by_column == {"patient_key": 1}
    assert result.frame["a"].tolist() == [1.0, 3.0, 3.0, 100.0]  # median of 1, 3, 100
    assert result.frame["b"].tolist() == [2.0, 4.0, 3.0, 3.0]
    assert result.imputed_per_column == {"patient_key": 0, "a": 1, "b": 2}
    assert result.still_missing == {"patient_key": 0, "a": 0, "b": 0}


def test_interpolation_is_linear_in_time_within_a_patient_and_falls_back_outside_its_span():
    frame = pd.DataFrame({
        "patient_key": ["p1", "p1", "p1", "p2", "p2"],
        "effective_date": ["2024-01-01", "2024-01-31", "2024-01-11", "2024-01-01", "2024-02-01"],
        "a": [10.0, 40.0, np.nan, np.nan, 50.0],
    })

    result = apply_missing_value_policy(frame, policy(a={"strategy": "interpolate", "fallback": "median"}))

    assert result.frame["a"].tolist() == pytest.approx([10.0, 40.0, 20.0, 40.0, 50.0])  # p2's gap: median fallback
    assert result.method_per_column == {"a": {"interpolate": 1, "fallback_median": 1}}


@pytest.mark.parametrize("strategy", ["iterative", "knn"])
def test_model_based_imputation_uses_the_other_columns(strategy):
    rng = np.random.default_rng(0)
    a = rng.normal(50, 10, 200)
    frame = pd.DataFrame({"patient_key": [f"p{i}" for i in range(200)], "effective_date": ["2024-01-01"] * 200,
                          "a": a, "b": 2 * a + rng.normal(0, 0.5, 200), "c": rng.normal(0, 1, 200)})
    hidden = frame.index[::10]
    truth = frame.loc[hidden, "b"].copy()
    frame.loc[hidden, "b"] = np.nan

    result = apply_missing_value_policy(frame, policy(b={"strategy": strategy, "n_neighbors": 5}))

    error = (result.frame.loc[hidden, "b"] - truth).abs().mean()
    assert error < 3.0, error  # far better than the mean (its error would be ~16)
    assert result.imputed_per_column == {"b": 20}
    assert result.report()["method_per_column"] == {"b": {strategy: 20}}


def test_reference_statistics_come_from_the_training_rows():
    train = pd.DataFrame({"patient_key": ["p1", "p2"], "effective_date": ["2024-01-01"] * 2, "a": [1.0, 3.0]})
    test = pd.DataFrame({"patient_key": ["p3", "p4"], "effective_date": ["2024-01-01"] * 2, "a": [100.0, np.nan]})

    result = apply_missing_value_policy(test, policy(a={"strategy": "mean"}), reference=train)

    assert result.frame["a"].tolist() == [100.0, 2.0]


def test_an_unknown_strategy_is_refused():
    with pytest.raises(ValueError):
        policy(a={"strategy": "guess"})
