"""k-anonymity, l-diversity and suppression on hand-checked examples."""

from __future__ import annotations

import pandas as pd
import pytest

from medllm_pipelines.lib.deidentify.risk import (
    SUPPRESSED,
    check_quasi_identifiers,
    k_anonymity,
    l_diversity,
    suppress_to_k,
)

# Ten rows; classes over (age_band, sex, region):
#   (50-54, F, 湖北省) x4   (50-54, M, 湖北省) x3   (60-64, F, 湖南省) x2   (90+, M, 西藏自治区) x1
TABLE = pd.DataFrame(
    {
        "age_band": ["50-54"] * 7 + ["60-64"] * 2 + ["90+"],
        "sex": ["female"] * 4 + ["male"] * 3 + ["female"] * 2 + ["male"],
        "region": ["湖北省"] * 7 + ["湖南省"] * 2 + ["西藏自治区"],
        "diagnosis": ["E11", "E11", "I10", "E11", "E11", "E11", "E11", "I10", "E78", "E11"],
    }
)
QI = ["age_band", "sex", "region"]


def test_k_anonymity_by_hand() -> None:
    report = k_anonymity(TABLE, QI, k=3)
    assert (report.rows, report.classes, report.smallest_class) == (10, 4, 1)
    assert not report.satisfied and report.rows_below_k == 3
    assert report.classes_below_k[QI + ["class_size"]].values.tolist() == [
        ["90+", "male", "西藏自治区", 1],
        ["60-64", "female", "湖南省", 2],
    ]
    assert k_anonymity(TABLE, QI, k=1).satisfied
    assert k_anonymity(TABLE, ["sex"], k=4).smallest_class == 4  # 6 female, 4 male


def test_missing_values_form_their_own_class() -> None:
    frame = pd.DataFrame({"age_band": ["50-54", "50-54", None], "sex": ["female", "female", "female"]})
    report = k_anonymity(frame, ["age_band", "sex"], k=2)
    assert report.classes == 2 and report.rows_below_k == 1


def test_l_diversity_by_hand() -> None:
    report = l_diversity(TABLE, QI, "diagnosis", l=2)
    # (50-54, M) holds only E11; (90+, M) one row; the female classes hold two diagnoses each.
    assert report.lowest_diversity == 1 and report.classes_below_l["class_size"].tolist() == [3, 1]
    assert report.rows_below_l == 4 and not report.satisfied


def test_suppression_reaches_k_and_reports_what_it_did() -> None:
    result = suppress_to_k(TABLE, QI, 3)
    assert result.report.satisfied and result.report.smallest_class >= 3
    # 90+ (1 row), 湖南省 (2) and 西藏自治区 (1) are rarer than k in their columns.
    assert result.suppressed_values == {"age_band": {"60-64": 2, "90+": 1}, "region": {"湖南省": 2, "西藏自治区": 1}}
    # then (*, female, *) x2 and (*, male, *) x1 are still below 3 and are dropped
    assert result.rows_suppressed == 3 and len(result.frame) == 7
    assert SUPPRESSED not in set(result.frame["age_band"])
    assert result.as_metadata()["cells_suppressed[region]"] == 3


def test_value_suppression_keeps_rows_that_record_suppression_would_drop() -> None:
    frame = pd.DataFrame({"age_band": ["50-54"] * 3 + ["60-64"] * 3,
                          "region": ["澳门特别行政区", "西藏自治区", "海南省"] + ["湖北省"] * 3})
    rows_only = suppress_to_k(frame, ["age_band", "region"], 3, value_suppression=False)
    values = suppress_to_k(frame, ["age_band", "region"], 3)
    assert rows_only.rows_suppressed == 3  # three singleton classes dropped
    assert values.rows_suppressed == 0 and values.report.satisfied  # (50-54, *) now holds 3
    assert values.frame["region"].tolist() == [SUPPRESSED] * 3 + ["湖北省"] * 3
    assert suppress_to_k(TABLE, QI, 1).rows_suppressed == 0


def test_too_much_suppression_raises_when_capped() -> None:
    with pytest.raises(ValueError, match="generalise the quasi-identifiers first"):
        suppress_to_k(TABLE, QI, 5, max_row_fraction=0.2)


def test_quasi_identifiers_must_be_named_and_present() -> None:
    """A misspelt column would otherwise be no quasi-identifier at all, and k would hold trivially."""
    with pytest.raises(ValueError, match="at least one quasi-identifier"):
        k_anonymity(TABLE, [], k=2)
    with pytest.raises(ValueError, match=r"lacks quasi-identifier columns \['postcode'\]"):
        check_quasi_identifiers(TABLE, ["sex", "postcode"])
