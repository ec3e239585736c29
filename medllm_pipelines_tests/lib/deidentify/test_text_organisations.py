"""Organisations named in prose (``text/organisations.py``): by their closing word, a cue or a Chinese suffix."""

from __future__ import annotations

import pytest

from medllm_pipelines.lib.deidentify.text import build_detector
from medllm_pipelines.lib.deidentify.text.detector import Detector
from medllm_pipelines_tests.lib.deidentify.text_spans import labelled


@pytest.fixture(scope="module")
def detector() -> Detector:
    return build_detector()


def test_organisations(detector: Detector) -> None:
    assert "Acme Corp" in labelled(detector, "Works at Acme Corp as a welder.", "ORGANIZATION")
    assert "华为技术有限公司" in labelled(detector, "在华为技术有限公司上班", "ORGANIZATION")
