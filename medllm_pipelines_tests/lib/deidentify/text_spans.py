"""What a detector found in a text, as (value, label) pairs: the view the prose tests assert on."""

from __future__ import annotations

from medllm_pipelines.lib.deidentify.text.detector import Detector


def found(detector: Detector, text: str) -> list[tuple[str, str]]:
    return [(text[s.start:s.end], s.label) for s in detector.detect(text)]


def labelled(detector: Detector, text: str, label: str) -> list[str]:
    return [value for value, kind in found(detector, text) if kind == label]
