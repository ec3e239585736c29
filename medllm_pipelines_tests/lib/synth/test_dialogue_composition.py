"""The compositional triage-dialogue generator: symptoms in many surface forms, negations, code-switching,
repeat visits, deterministic, entity spans where the annotation stage looks for them, no department named."""

from __future__ import annotations

import re
from collections import Counter
from types import SimpleNamespace

import pytest

from medllm_pipelines.lib.synth.annotation_text import LEXICON, dialogue_text, gold_entities
from medllm_pipelines.lib.synth.determinism import stream
from medllm_pipelines.lib.synth.dialogues import (
    DEPARTMENTS,
    LABELS,
    build_dialogues,
    load_vocabulary,
    spans,
    surface,
    vocabulary_lexicon,
)

LATIN = re.compile(r"[A-Za-z]{2,}")


def _plans(count: int) -> list[SimpleNamespace]:
    plans = []
    for i in range(count):
        person = SimpleNamespace(display_name=f"测试{chr(0x4E00 + i % 50)}人", name_en=f"Testperson{i}",
                                 phone=f"1390000{i:04d}")
        plans.append(SimpleNamespace(has_dialogue=True, diagnoses=[],
                                     registration=SimpleNamespace(mrn=f"MRN{i:05d}", person=person)))
    return plans


@pytest.fixture(scope="module", params=["zh", "en"])
def generated(request):
    return request.param, build_dialogues("tst", request.param, _plans(120), stream(5, "dialogues", request.param))


def _patient(dialogue) -> str:
    return "\n".join(t["text"] for t in dialogue["turns"] if t["speaker"] == "patient")


def test_the_vocabulary_covers_every_department_in_both_languages_without_naming_it() -> None:
    vocabulary = load_vocabulary()
    assert set(vocabulary.departments) == set(LABELS) and vocabulary.version
    names = {*DEPARTMENTS, *DEPARTMENTS.values()}
    for department, entry in vocabulary.departments.items():
        assert len(entry["symptoms"]) >= 7, department
        for concept in entry["symptoms"]:
            for language in ("zh", "en"):
                forms = concept[language]
                assert len(forms) >= 2, (department, forms)
                assert not any(name in surface(form) for form in forms for name in names)
    assert surface("总是<口渴>") == "总是口渴" and spans("总是<口渴>") == ["口渴"] and spans("咳嗽") == ["咳嗽"]


def test_the_same_stream_gives_the_same_dialogues() -> None:
    first = build_dialogues("tst", "zh", _plans(30), stream(9, "dialogues"))
    second = build_dialogues("tst", "zh", _plans(30), stream(9, "dialogues"))
    assert first.dialogues == second.dialogues and first.annotations == second.annotations


def test_patients_come_back_and_every_dialogue_is_worded_its_own_way(generated) -> None:
    language, output = generated
    per_patient = Counter(d["patient_mrn"] for d in output.dialogues)
    assert len(per_patient) == 120 and max(per_patient.values()) > 1  # repeat visits
    texts = [_patient(d) for d in output.dialogues]
    assert len(set(texts)) == len(texts)
    assert set(output.gold.values()) == set(LABELS)


def test_symptoms_come_in_many_forms_with_negations_and_code_switching(generated) -> None:
    language, output = generated
    vocabulary = load_vocabulary()
    used = Counter()
    for dialogue in output.dialogues:
        text = _patient(dialogue)
        for concept in vocabulary.departments[dialogue["department"]]["symptoms"]:
            used.update(surface(form) for form in concept[language] if surface(form) in text)
    assert len(used) >= 80, len(used)  # distinct surface forms across the dialogues
    negation = ("没有", "也没", "倒是没有", "没觉得") if language == "zh" else ("no ", "haven't had any", "nothing like")
    negated = sum(any(n in _patient(d) for n in negation) for d in output.dialogues)
    assert negated >= len(output.dialogues) // 10
    if language == "zh":
        mixed = sum(bool(LATIN.search(_patient(d).replace("Testperson", ""))) for d in output.dialogues)
        assert mixed >= 5, "English terms appear inside Chinese turns"


def test_identifiers_are_placed_as_before_and_the_department_is_never_named(generated) -> None:
    language, output = generated
    names = {*DEPARTMENTS, *DEPARTMENTS.values()}
    with_identity = 0
    for dialogue in output.dialogues:
        text = " ".join(t["text"] for t in dialogue["turns"])
        assert not any(name in text for name in names)
        with_identity += "Testperson" in text or "测试" in text
    assert 0.3 * len(output.dialogues) < with_identity < 0.8 * len(output.dialogues)


def test_the_annotation_lexicon_holds_the_generators_terms_and_finds_them(generated) -> None:
    language, output = generated
    generator_terms = vocabulary_lexicon(language)
    assert all(term in LEXICON[language] for term in generator_terms)
    found = Counter()
    for dialogue in output.dialogues[:40]:
        text, regions = dialogue_text(dialogue)
        for entity in gold_entities(text, regions, language, None, None):
            assert any(lo <= entity.start and entity.end <= hi for lo, hi in regions)
            found[entity.type] += 1
    assert found["SYMPTOM"] >= 40 and found["DRUG"] > 0 and found["DISEASE"] > 0
