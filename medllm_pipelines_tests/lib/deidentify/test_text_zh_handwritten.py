"""Chinese clinical sentences written by hand for this test, not by the generator: names without a cue or
after relatives and possessives, compound surnames, relative dates, record numbers of other shapes,
Traditional-script cues; and clinical words that must stay readable (高血压患者 is not a person)."""

from __future__ import annotations

import pytest

from medllm_pipelines.lib.deidentify.text import build_detector


@pytest.fixture(scope="module")
def detector():
    return build_detector()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("老伴儿张桂芬说他昨晚咳得厉害，去年十月在协和医院住过院。", {("张桂芬", "NAME"), ("去年十月", "DATE")}),
        ("病人叫欧阳明辉，住院号ZY20230415，本月20号复查。",
         {("欧阳明辉", "NAME"), ("ZY20230415", "MRN"), ("本月20号", "DATE")}),
        ("邻床患者李建国的家属也在。", {("李建国", "NAME")}),
        ("患者由女儿刘晓燕陪同来院，自述三月五日起胸闷。", {("刘晓燕", "NAME"), ("三月五日", "DATE")}),
        ("病歷號：SK-889201，身分證字號A123456789。", {("SK-889201", "MRN"), ("A123456789", "ID_NUMBER")}),
        ("诸葛亮今年六十五岁，上周三开始发热。", {("诸葛亮", "NAME"), ("上周三", "DATE")}),
        ("司马懿的儿子司马昭陪同就诊。", {("司马懿", "NAME"), ("司马昭", "NAME")}),
        ("王建华，男，58岁，因胸痛入院。", {("王建华", "NAME")}),
        ("上官婉儿主诉头痛三天，前天开始加重。", {("上官婉儿", "NAME"), ("前天", "DATE")}),
    ],
)
def test_identifiers_in_hand_written_sentences_are_found(detector, text: str, expected: set) -> None:
    found = {(text[s.start:s.end], s.label) for s in detector.detect(text)}
    assert expected <= found, found


@pytest.mark.parametrize(
    "text",
    ["高血压患者应低盐饮食。", "糖尿病患者血糖控制尚可。", "高血压的儿子也有高血压。", "安全的家属区域", "今年血糖控制良好。",
     "患者服用二甲双胍和阿司匹林，心电图未见异常。", "患者今年六十五岁，男，既往高血压。"],
)
def test_clinical_words_before_weak_cues_are_not_names(detector, text: str) -> None:
    assert [(text[s.start:s.end], s.label) for s in detector.detect(text) if s.label == "NAME"] == []
