"""Entity annotations of the triage dialogues: gold spans, annotator errors, and the brat files they become."""

from __future__ import annotations

import numpy as np

from medllm_pipelines.lib.label.registry import load_guidelines, load_registry
from medllm_pipelines.lib.synth.annotation_text import (
    ENTITY_ERRORS,
    Entity,
    EntityErrors,
    annotate_entities,
    brat_ann,
    dialogue_text,
    gold_entities,
    gold_relations,
)
from medllm_pipelines_tests.lib.synth.conftest import Hospital

DIALOGUE = {"language": "en", "turns": [
    {"speaker": "assistant", "text": "Do you feel tired, Alice Li?"},
    {"speaker": "patient", "text": "Alice Li here, I feel tired; my pills for high blood pressure, call 555-0100."},
]}


def test_brat_text_is_the_dialogue_with_speaker_prefixes() -> None:
    text, regions = dialogue_text({"language": "en", "turns": [{"speaker": "assistant", "text": "Hi."},
                                                               {"speaker": "patient", "text": "I cough."}]})
    assert text == "Assistant: Hi.\nPatient: I cough.\n"
    assert [text[s:e] for s, e in regions] == ["I cough."]


def test_gold_marks_identifiers_everywhere_and_lexicon_terms_only_in_patient_turns() -> None:
    text, regions = dialogue_text(DIALOGUE)
    gold = gold_entities(text, regions, "en", "Alice Li", "555-0100")
    found = [(text[e.start:e.end], e.type) for e in gold]
    assert found == [("Alice Li", "PERSON"), ("Alice Li", "PERSON"), ("feel tired", "SYMPTOM"), ("pills", "DRUG"),
                     ("high blood pressure", "DISEASE"), ("555-0100", "PHONE")]
    assert gold_relations(gold, regions) == [(3, 4)]  # the drug TREATS the disease in the same patient turn


def test_an_error_free_annotator_reproduces_the_gold_standard_in_brat() -> None:
    text, regions = dialogue_text(DIALOGUE)
    gold = gold_entities(text, regions, "en", "Alice Li", "555-0100")
    relations = gold_relations(gold, regions)
    marked, kept = annotate_entities(gold, relations, EntityErrors(0.0, 0.0, 0.0, 0.0), np.random.default_rng(0))
    assert marked == gold and kept == relations
    ann = brat_ann(text, marked, kept, {"annotator_id": "ann-01", "tool": "brat v1.3"}).splitlines()
    assert ann[0] == "#0\tProvenance\tannotator_id=ann-01;tool=brat v1.3"
    assert ann[1] == f"T1\tPERSON {gold[0].start} {gold[0].end}\tAlice Li"
    assert ann[-1] == "R1\tTREATS Arg1:T4 Arg2:T5"


def test_annotator_errors_only_shrink_spans_and_never_retype_identifiers() -> None:
    gold = [Entity(0, 8, "PERSON"), Entity(10, 20, "SYMPTOM"), Entity(22, 30, "DRUG")]
    noisy = EntityErrors(miss=0.0, boundary=1.0, swap=1.0, relation_miss=0.0)
    for seed in range(20):
        marked, _ = annotate_entities(gold, [], noisy, np.random.default_rng(seed))
        assert marked[0] == gold[0]
        for given, truth in zip(marked[1:], gold[1:], strict=True):
            assert given is not None and truth.start <= given.start < given.end <= truth.end
            assert given.type != truth.type
    assert ENTITY_ERRORS["ann-01"].miss < ENTITY_ERRORS["ann-03"].miss, "ann-03 is the noisy one"


def test_every_brat_annotation_pairs_with_its_text_and_names_its_provenance(clean_hospital: Hospital) -> None:
    registered, guidelines = load_registry().annotators, load_guidelines()
    anns = sorted(clean_hospital.root.glob("*/annotations/brat/*/*.ann"))
    assert anns
    for ann in anns:
        text = (ann.parent.parent / f"{ann.stem}.txt").read_text("utf-8")
        lines = ann.read_text("utf-8").splitlines()
        provenance = dict(item.split("=", 1) for item in lines[0].split("\t")[2].split(";"))
        assert provenance["annotator_id"] == ann.parent.name and provenance["annotator_id"] in registered
        assert provenance["guideline_version"] in guidelines
        for line in lines[1:]:
            if line.startswith("T"):
                _, spec, surface = line.split("\t")
                entity_type, start, end = spec.split(" ")
                assert text[int(start):int(end)] == surface
                assert entity_type in guidelines[provenance["guideline_version"]].entity_types


def test_non_identifier_spans_never_contain_a_name_or_phone(clean_hospital: Hospital) -> None:
    identities = clean_hospital.identities
    names = {n for row in identities for n in (row["name_zh"], row["name_en"]) if n}
    phones = {row["phone"] for row in identities}
    marked = 0
    for ann in sorted(clean_hospital.root.glob("*/annotations/brat/*/*.ann")):
        for line in ann.read_text("utf-8").splitlines()[1:]:
            _, spec, surface = line.split("\t") if line.startswith("T") else ("", "", "")
            if spec.startswith(("PERSON", "PHONE")):
                marked += 1
            elif surface:
                assert not any(n in surface for n in names) and not any(p in surface for p in phones)
    assert marked > 0, "identifiers are annotated (offsets only reach the warehouse)"
