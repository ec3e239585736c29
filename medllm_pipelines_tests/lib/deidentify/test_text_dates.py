"""Dates written in prose (``text/dates.py``): every common form, and the numbers that only look like dates."""

from __future__ import annotations

import pytest

from medllm_pipelines.lib.deidentify.text import build_detector
from medllm_pipelines.lib.deidentify.text.detector import Detector
from medllm_pipelines_tests.lib.deidentify.text_spans import found, labelled


@pytest.fixture(scope="module")
def detector() -> Detector:
    return build_detector()


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("admitted on 3/14 with chest pain", "3/14"),
        ("VISIT DATE: 07/20/83", "07/20/83"),
        ("stenosis on 8-09-83, who now", "8-09-83"),
        ("last colonoscopy 3/80", "3/80"),
        ("MI in '98, CABG x3", "'98"),
        ("seen Jan 5 by cardiology", "Jan 5"),
        ("returned 5 January after travel", "5 January"),
        ("diagnosed in January of 2020", "January of 2020"),
        ("f/u Tuesday in clinic", "Tuesday"),
        ("I have not seen him since November.", "November"),
        ("s/p appendectomy in 1998", "1998"),
        ("Oct. 3rd, 2019: fell at home", "Oct. 3rd, 2019"),
        ("seen Jan 5 at 10:30 by ortho", "Jan 5 at 10:30"),
        ("D:07/20/83", "07/20/83"),
    ],
)
def test_dates_in_every_common_form(detector: Detector, text: str, value: str) -> None:
    assert value in labelled(detector, text, "DATE"), found(detector, text)


@pytest.mark.parametrize(
    "text",
    ["pain 5/10 at rest", "strength 4/5 in the left arm", "take 1/2 tab daily", "BP 120/80, HR 72",
     "May take with food.", "Na 140 K 4.0 Cl 102", "gave 1500 mL NS", "ratio 2024-13-45 and 2023-02-30"],
)
def test_scores_doses_and_ratios_are_not_dates(detector: Detector, text: str) -> None:
    assert labelled(detector, text, "DATE") == []


@pytest.mark.parametrize(
    ("text", "value"),
    [("去年十月开始", "去年十月"), ("本月20号复查", "本月20号"), ("三月五日发热", "三月五日"), ("上周三加重", "上周三"),
     ("前天来院", "前天")],
)
def test_chinese_relative_dates(detector: Detector, text: str, value: str) -> None:
    assert value in labelled(detector, text, "DATE")
