"""Places named in prose (``text/places.py``): hospitals, listed and cued places, Chinese institutions and regions."""

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
        ("Transferred from Massachusetts General Hospital overnight.", "Massachusetts General Hospital"),
        ("SILVER RIDGE EMERGENCY DEPT VISIT", "SILVER RIDGE EMERGENCY DEPT"),
        ("He moved to Boston, MA last year.", "Boston, MA"),
        ("was on vacation in Portugal", "Portugal"),
        ("He grew up in HELSINKI and moved here in 2001.", "HELSINKI"),  # capitals after a strong cue
        ("Pt is originally from Kenosha.", "Kenosha"),  # a place that is also a name
        ("we moved here from tunisia last year", "tunisia"),  # a listed place in lower case
        ("去年在北京协和医院做过手术", "北京协和医院"),
        ("患者家住湖北省武汉市洪山区", "湖北省武汉市洪山区"),
    ],
)
def test_locations(detector: Detector, text: str, value: str) -> None:
    assert value in labelled(detector, text, "LOCATION"), found(detector, text)


@pytest.mark.parametrize(
    "text",
    ["Pt returned to ICU after the CT.", "Moved to Chair for lunch.", "Returned to Baseline by evening.",
     "I'm in pain", "Pt lives in a group home."],
)
def test_strong_place_cues_stop_at_clinical_words(detector: Detector, text: str) -> None:
    assert labelled(detector, text, "LOCATION") == [], found(detector, text)
