"""Recoding quasi-identifiers: the generalisation hierarchies (age bands, addresses to regions), local
recoding to k-anonymity (rows kept, only rare ones coarsened), its policy declaration, and histograms where
one person holds several values."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from medllm_pipelines.lib.deidentify.dp import PrivacyLedger, PrivateStatistics
from medllm_pipelines.lib.deidentify.policy import load_policy
from medllm_pipelines.lib.deidentify.recoding import (
    RecodingStep,
    address_to_region,
    generalise_addresses,
    recode_to_k,
    region_code_to_province,
    suppress_value,
    widen_age_band,
)
from medllm_pipelines.lib.deidentify.risk import k_anonymity, suppress_to_k

QI = ["institution", "sex", "age_band"]
AGE_STEPS = [
    RecodingStep("age_band", "widen_age_band_10", lambda b: widen_age_band(b, 10, 90)),
    RecodingStep("age_band", "suppress", suppress_value),
    RecodingStep("sex", "suppress", suppress_value),
]


def frame_of(rows: list[tuple[str, str, str]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=QI)


@pytest.mark.parametrize(
    ("band", "width", "widened"),
    [("45-49", 10, "40-49"), ("40-44", 10, "40-49"), ("45-49", 20, "40-59"), ("40-49", 20, "40-59"),
     ("85-89", 10, "80-89"), ("85-89", 20, "80+"), ("90+", 20, "90+"), (None, 10, None)],
)
def test_widen_age_band(band, width, widened) -> None:
    assert widen_age_band(band, width, 90) == widened


def test_widen_age_band_refuses_what_is_not_a_band() -> None:
    with pytest.raises(ValueError, match="not an age band"):
        widen_age_band("*", 10)


@pytest.mark.parametrize(
    ("address", "region"),
    [
        ("湖北省武汉市江岸区解放大道100号3栋2单元1502室", "湖北省"),
        ("北京市朝阳区建国路8号", "北京市"),
        ("中国广西壮族自治区南宁市青秀区民族大道1号", "广西壮族自治区"),
        ("陕西省西安市雁塔区", "陕西省"),
        ("山西省太原市小店区", "山西省"),
        ("武汉市洪山区珞喻路1037号", "湖北省"),
        ("内蒙古呼和浩特市", "内蒙古自治区"),
        ("742 Evergreen Terrace, Springfield, OR 97403", "US-OR"),
        ("somewhere unknown", None),
        (None, None),
    ],
)
def test_address_generalises_to_province(address: str | None, region: str | None) -> None:
    assert address_to_region(address) == region


def test_region_codes_and_series() -> None:
    assert region_code_to_province("420102") == "湖北省"
    assert region_code_to_province("99") is None
    series = generalise_addresses(pd.Series(["湖南省长沙市芙蓉区", None]))
    assert series.iloc[0] == "湖南省" and pd.isna(series.iloc[1])


def test_rows_in_classes_of_k_are_left_alone_and_rare_ones_are_coarsened() -> None:
    frame = frame_of([("a", "female", "40-44")] * 4 + [("a", "female", "45-49")] * 2 + [("a", "male", "60-64")] * 3)
    result = recode_to_k(frame, QI, 3, AGE_STEPS)

    assert result.rows_suppressed == 0 and len(result.frame) == 9
    assert result.report.satisfied and k_anonymity(result.frame, QI, k=3).satisfied
    # the 45-49 pair finds no company by widening ("40-49" holds 2), so age then sex are withheld,
    # and the spare row of the 40-44 class (4 > k) completes their class
    assert result.cells_recoded == {"age_band:widen_age_band_10": 2, "age_band:suppress": 2, "sex:suppress": 2}
    assert result.cells_padded == 2
    assert (result.frame["age_band"] == "40-44").sum() == 3
    assert result.frame.loc[result.frame["sex"] == "male", "age_band"].tolist() == ["60-64"] * 3


def test_recoding_keeps_rows_that_global_suppression_would_drop() -> None:
    rng = np.random.default_rng(3)
    lows = 5 * rng.integers(6, 16, size=120)
    frame = pd.DataFrame({"institution": rng.choice(["a", "b"], size=120), "sex": rng.choice(["female", "male"], size=120),
                          "age_band": [f"{low}-{low + 4}" for low in lows]})

    recoded = recode_to_k(frame, QI, 5, AGE_STEPS)
    dropped = suppress_to_k(frame, QI, 5)

    assert recoded.report.satisfied and recoded.report.smallest_class >= 5
    assert len(recoded.frame) + recoded.rows_suppressed == len(frame)
    assert recoded.rows_suppressed < dropped.rows_suppressed
    assert recoded.frame["age_band"].notna().any()


def test_a_class_that_cannot_reach_k_is_dropped_and_counted() -> None:
    frame = frame_of([("a", "female", "40-44")] * 5 + [("b", "male", "70-74")])  # "b" never has company
    result = recode_to_k(frame, QI, 5, AGE_STEPS)

    assert result.rows_suppressed == 1 and len(result.frame) == 5
    assert result.report.satisfied
    assert result.as_metadata()["rows_in"] == 6 and result.as_metadata()["k_before"] == 1


def test_padding_completes_the_fully_recoded_class_from_the_largest_class() -> None:
    frame = frame_of([("a", "female", "40-44")] * 7 + [("a", "male", "70-74")])
    result = recode_to_k(frame, QI, 3, AGE_STEPS)

    assert result.rows_suppressed == 0 and result.report.satisfied
    assert result.cells_padded == 4  # two donor rows, age and sex each
    assert (result.frame["age_band"].isna() & result.frame["sex"].isna()).sum() == 3


def test_steps_may_only_name_quasi_identifiers() -> None:
    with pytest.raises(ValueError, match="not quasi-identifiers"):
        recode_to_k(frame_of([("a", "female", "40-44")]), ["institution"], 2, AGE_STEPS)


def test_policy_declares_the_quasi_identifiers_of_released_patients() -> None:
    rule = load_policy().disclosure["patients"]
    assert set(rule.quasi_identifiers) == {"institution", "sex", "age_band"}
    assert "institution" not in {s.column for s in rule.steps}  # a key of the table's grain, never recoded
    assert [s.name for s in rule.steps][-1] == "suppress"


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ("  patients:\n    quasi_identifiers: [birth_date]\n", "quasi-identifiers must be released"),
        ("  patients:\n    quasi_identifiers: [sex]\n    recode_in_order: [{sex: blur}]\n", "unknown recoding"),
        ("  nowhere:\n    quasi_identifiers: [sex]\n", "undeclared table"),
    ],
)
def test_policy_disclosure_declarations_are_validated(tmp_path: Path, section: str, message: str) -> None:
    text = (
        'version: "0"\npurpose: test\npseudonym: {prefix: "p_", hex_chars: 8}\n'
        "age_bands: {width_years: 5, top_coded_at: 90}\ntables:\n  patients:\n"
        "    gender: {keep: true, as: sex}\n    birth_date: {generalise: age_band, as: age_band}\n"
        "disclosure_control:\n" + section
    )
    path = tmp_path / "policy.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        load_policy(path)


def test_histogram_with_several_values_per_person_scales_the_noise(tmp_path: Path) -> None:
    ledger = PrivacyLedger(tmp_path / "l.json", dataset="d", epsilon_budget=10)
    stats = PrivateStatistics(ledger, rng=np.random.default_rng(0))
    one = stats.histogram(["a", "b"], categories=["a", "b"], epsilon=1.0, query="q1")
    two = stats.histogram(["a", "b"], categories=["a", "b"], epsilon=1.0, query="q2", contributions=2)

    assert (one.sensitivity, one.noise_scale) == (1.0, 1.0)
    assert (two.sensitivity, two.noise_scale) == (2.0, 2.0)
    assert ledger.spent()[0] == pytest.approx(2.0)  # the full epsilon is charged either way
    with pytest.raises(ValueError, match="contributions"):
        stats.histogram(["a"], categories=["a"], epsilon=1.0, query="q4", contributions=0)
    ledger_g = PrivacyLedger(tmp_path / "g.json", dataset="g", epsilon_budget=10, delta_budget=1e-3)
    release = PrivateStatistics(ledger_g, rng=np.random.default_rng(0)).histogram(
        ["a"], categories=["a"], epsilon=1.0, query="g", mechanism="gaussian", delta=1e-6, contributions=4)
    assert release.sensitivity == pytest.approx(math.sqrt(4))
