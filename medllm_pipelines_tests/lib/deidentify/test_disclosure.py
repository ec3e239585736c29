"""Disclosure control of a released table: recoded before release, assessed by the gate with counts only."""

from __future__ import annotations

import json

import pandas as pd

from medllm_pipelines.lib.deidentify.disclosure import (
    NO_RULE,
    assess_released_table,
    class_size_distribution,
    protect_released_table,
)
from medllm_pipelines.lib.deidentify.policy import DisclosureRule, load_policy

QIS = ("institution", "sex", "age_band")


def patients() -> pd.DataFrame:
    """Two classes of six, and one woman of 90+ alone in hers."""
    rows = [(f"p_{i:03d}", "hzsf", "female", "50-54") for i in range(6)]
    rows += [(f"p_{i:03d}", "hzsf", "male", "60-64") for i in range(6, 12)]
    rows += [("p_999", "hzsf", "female", "90+")]
    return pd.DataFrame(rows, columns=["patient_pseudonym", *QIS])


def test_class_sizes_are_counted_without_naming_a_class() -> None:
    assert class_size_distribution(patients(), QIS) == {"1": 1, "6": 2}
    assert class_size_distribution(patients().iloc[0:0], QIS) == {}


def test_a_table_without_a_rule_is_released_as_is_and_says_so() -> None:
    frame = patients()
    protected = protect_released_table(None, frame, k=5, l=2)
    assert protected.frame is frame and protected.rows_suppressed == 0
    assert protected.as_metadata() == {"k_anonymity": NO_RULE}


def test_the_released_table_passes_the_gate_that_the_raw_one_fails() -> None:
    rule = load_policy().disclosure["patients"]
    before = assess_released_table(patients(), rule, k=5, l=2, policy_version="v")
    assert not before.passed and before.description == "1 classes (1 rows) below k=5"
    protected = protect_released_table(rule, patients(), k=5, l=2)
    after = assess_released_table(protected.frame, rule, k=5, l=2, policy_version="v")
    assert after.passed and after.description.startswith("k=")
    meta = protected.as_metadata()
    assert meta["k_anonymity/k_before"] == 1 and meta["k_anonymity/k_satisfied"] is True
    assert len(protected.frame) + protected.rows_suppressed == len(patients())


def test_gate_metadata_holds_counts_and_versions_never_a_rare_value() -> None:
    rule = DisclosureRule("patients", QIS, (), sensitive="sex")
    meta = assess_released_table(patients(), rule, k=5, l=2, policy_version="1.2.0").as_metadata()
    assert (meta["k_achieved"], meta["classes_below_k"], meta["rows_below_k"]) == (1, 1, 1)
    assert meta["class_sizes"] == {"1": 1, "6": 2} and meta["deidentification_policy_version"] == "1.2.0"
    assert meta["l_required"] == 2 and meta["sensitive_attribute"] == "sex"
    assert "90+" not in json.dumps(meta)
