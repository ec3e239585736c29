"""Common Chinese words are never names (jieba's dictionary), and Chinese names are kept."""

from __future__ import annotations

import pytest

from medllm_pipelines.lib.deidentify.text import build_detector
from medllm_pipelines.lib.deidentify.text.detector import whitelist_names
from medllm_pipelines.lib.deidentify.text.spans import NAME, Span
from medllm_pipelines.lib.deidentify.text.zh_words import without_common_words


@pytest.mark.parametrize(("text", "start", "end", "expected"), [
    ("行，谢谢大夫。", 2, 4, None),  # 谢谢 (thanks) is not Dr Xie
    ("复查血常规", 3, 5, None),  # 常规 inside 血常规 (routine blood test)
    ("张伟建议复查", 0, 3, (0, 2)),  # 建议 (suggest) starts inside the span: cut before it
    ("患者王建国，咳嗽", 2, 5, (2, 5)),  # a name (rare in the dictionary) is kept
    ("李娜医生查房", 0, 2, (0, 2)),  # tagged a person name, below the name threshold: kept
])
def test_common_words_are_cut_off_or_dropped_and_names_kept(text, start, end, expected) -> None:
    assert without_common_words(text, start, end) == expected


def test_the_rule_applies_to_proposed_names_only_and_can_be_switched_off() -> None:
    text = "头痛好转，谢谢大夫。"
    proposed = [Span(0, 4, NAME, 0.6, "tagger"), Span(5, 7, NAME, 0.8, "pattern"), Span(5, 7, NAME, 1.0, "known")]
    assert whitelist_names(text, proposed) == [proposed[2]]  # a known identifier of the person is never dropped
    assert whitelist_names(text, proposed, zh_common_words=False) == proposed


def test_the_detector_no_longer_masks_thanks_or_tests_but_still_finds_names() -> None:
    detector = build_detector()
    found = {text: [text[s.start:s.end] for s in detector.detect(text)] for text in (
        "患者：行，谢谢大夫。", "医生：张伟建议复查血常规。", "患者：我叫王建国，咳嗽3天了。")}
    assert found == {"患者：行，谢谢大夫。": [], "医生：张伟建议复查血常规。": ["张伟"],
                     "患者：我叫王建国，咳嗽3天了。": ["王建国"]}
    assert "jieba" in detector.version["zh_name_whitelist"]


@pytest.mark.parametrize("name", ["黄艳丽", "胡诗文", "严明振", "秦国德"])
def test_given_names_that_are_words_are_kept(name: str) -> None:
    for text in (f"医师：{name}", f"患者{name}，女，42岁", f"{name}自述近期饮食不规律"):
        at = text.index(name)
        assert without_common_words(text, at, at + len(name)) == (at, at + len(name)), text


def test_a_span_of_words_alone_is_not_a_name() -> None:
    assert without_common_words("今天头痛好转了", 2, 6) is None  # 头痛 + 好转: "headache better"
