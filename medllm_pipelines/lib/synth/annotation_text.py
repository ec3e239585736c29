"""Entity annotations of triage dialogues, as brat standoff: the gold spans and each annotator's errors.

The gold standard is the dialogue generator's lexicon (``lib/synth/dialogues.py``)
found in the patient's turns, plus the patient's name and phone number anywhere.
Each of the three annotators misses, shrinks or retypes spans at its own rates
(:data:`ENTITY_ERRORS`), so that agreement varies in a controlled way that the
label stage's span F1 must recover. :mod:`annotation_files` writes the files.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from medllm_pipelines.lib.synth.dialogues import vocabulary_lexicon


@dataclass(frozen=True)
class EntityErrors:
    miss: float
    boundary: float
    swap: float
    relation_miss: float


ENTITY_ERRORS = {
    "ann-01": EntityErrors(miss=0.03, boundary=0.05, swap=0.02, relation_miss=0.05),
    "ann-02": EntityErrors(miss=0.06, boundary=0.10, swap=0.04, relation_miss=0.10),
    "ann-03": EntityErrors(miss=0.12, boundary=0.20, swap=0.08, relation_miss=0.20),
}
TYPE_SWAP = {"SYMPTOM": "DISEASE", "DISEASE": "SYMPTOM", "DRUG": "DISEASE"}
IDENTIFIER_TYPES = ("PERSON", "PHONE")

# Lexicon of the first dialogue templates, kept; the compositional generator's vocabulary is added below.
LEXICON: dict[str, dict[str, str]] = {
    "zh": {
        **{t: "SYMPTOM" for t in (
            "口渴", "喝水特别多", "上厕所", "体重好像也掉了几斤", "没什么力气", "尿多", "口干", "吃得也比以前多",
            "口干舌燥", "小便次数明显增多", "视力最近也有点模糊", "胸口闷痛", "往左肩膀那边放射", "心慌",
            "心跳很快很乱", "胸闷气短", "胸口像压了块石头一样", "咳嗽", "黄痰", "发烧到38度多", "喉咙也痛",
            "浑身酸", "咳个不停", "有点喘", "痰比较多", "发热", "呼吸有点费力", "胃这里隐隐作痛", "反酸", "烧心",
            "拉肚子", "肚子胀", "吃不下东西", "上腹部不舒服", "打嗝", "胃痛", "头痛得厉害", "眼前有闪光", "头晕",
            "天旋地转", "发麻", "睡不着", "头昏脑胀", "记性也变差了", "膝盖疼", "关节有点僵", "腰疼", "弯腰都困难",
            "扭了脚踝", "肿着", "红疹子", "很痒", "长了很多痘", "脱皮", "裂口子", "血糖有点高",
        )},
        **{t: "DISEASE" for t in ("高血压", "血压偏高", "感冒")},
        **{t: "DRUG" for t in ("降压药", "药膏")},
    },
    "en": {
        **{t: "SYMPTOM" for t in (
            "thirsty all the time", "pee constantly", "lost a few pounds", "feel tired", "drinking a lot of water",
            "urinating a lot", "blood sugar was high", "mouth is always dry", "vision has been a bit blurry",
            "squeezing pain in my chest", "spreads to my left shoulder", "heart keeps racing", "short of breath",
            "heavy pressure on my chest", "cough with yellow phlegm", "fever over 38", "throat hurts",
            "ache all over", "can't stop coughing", "wheezy", "a lot of phlegm", "Fever and cough",
            "breathing feels like hard work", "dull ache in my upper stomach", "heartburn", "acid coming up",
            "diarrhoea", "belly is bloated", "can't eat", "upper abdomen feels uncomfortable", "keep burping",
            "stomach pain", "throbbing headaches", "flashing lights", "dizzy", "room is spinning",
            "hand goes numb", "can't sleep", "head feels foggy", "memory has got worse", "knee hurts",
            "stiff in the mornings", "lower back has hurt", "bending is hard", "twisted my ankle", "swollen",
            "hurts to walk", "itchy red patches", "acne", "peeling and cracking", "stings",
        )},
        **{t: "DISEASE" for t in ("high blood pressure", "blood pressure is high", "colds")},
        **{t: "DRUG" for t in ("pills", "Creams")},
    },
}
for _language, _terms in LEXICON.items():  # what lib/synth/dialogues.py can say (dialogue_vocabulary.yaml)
    _terms.update({t: kind for t, kind in vocabulary_lexicon(_language).items() if t not in _terms})
SPEAKER = {"zh": {"patient": "患者：", "assistant": "助手："}, "en": {"patient": "Patient: ", "assistant": "Assistant: "}}


@dataclass(frozen=True)
class Entity:
    start: int
    end: int
    type: str


def dialogue_text(dialogue: dict[str, Any]) -> tuple[str, list[tuple[int, int]]]:
    """The brat .txt of a dialogue and the (start, end) of each patient turn."""
    language = dialogue["language"]
    parts, patient_regions, offset = [], [], 0
    for turn in dialogue["turns"]:
        prefix = SPEAKER[language][turn["speaker"]]
        line = prefix + turn["text"]
        if turn["speaker"] == "patient":
            patient_regions.append((offset + len(prefix), offset + len(line)))
        parts.append(line)
        offset += len(line) + 1
    return "\n".join(parts) + "\n", patient_regions


def _occurrences(text: str, needle: str, lo: int = 0, hi: int | None = None) -> list[int]:
    found, hi = [], len(text) if hi is None else hi
    start = text.find(needle, lo, hi)
    while needle and start != -1:
        found.append(start)
        start = text.find(needle, start + len(needle), hi)
    return found


def gold_entities(text: str, patient_regions: list[tuple[int, int]], language: str, name: str | None,
                  phone: str | None) -> list[Entity]:
    """Identifier mentions first, then lexicon terms (longest first) that overlap nothing taken."""
    taken: list[Entity] = []

    def free(start: int, end: int) -> bool:
        return all(end <= e.start or start >= e.end for e in taken)

    for value, entity_type in ((name, "PERSON"), (phone, "PHONE")):
        if value:
            for start in _occurrences(text, value):
                if free(start, start + len(value)):
                    taken.append(Entity(start, start + len(value), entity_type))
    for term, entity_type in sorted(LEXICON[language].items(), key=lambda kv: (-len(kv[0]), kv[0])):
        for lo, hi in patient_regions:
            for start in _occurrences(text, term, lo, hi):
                if free(start, start + len(term)):
                    taken.append(Entity(start, start + len(term), entity_type))
    return sorted(taken, key=lambda e: (e.start, e.end))


def gold_relations(entities: list[Entity], patient_regions: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """TREATS (drug index, disease index) for a drug and a disease in the same patient turn."""
    relations = []
    for lo, hi in patient_regions:
        inside = [i for i, e in enumerate(entities) if lo <= e.start and e.end <= hi]
        drugs = [i for i in inside if entities[i].type == "DRUG"]
        diseases = [i for i in inside if entities[i].type == "DISEASE"]
        if drugs and diseases:
            relations.append((drugs[0], diseases[0]))
    return relations


def annotate_entities(gold: list[Entity], relations: list[tuple[int, int]], errors: EntityErrors,
                      rng: np.random.Generator) -> tuple[list[Entity | None], list[tuple[int, int]]]:
    """One annotator's version of the gold standard: misses, shrunk boundaries, swapped types.

    Boundaries only ever shrink, so a non-identifier span never reaches into a
    neighbouring name or phone number; identifiers are missed, never retyped.
    """
    marked: list[Entity | None] = []
    for entity in gold:
        if entity.type in IDENTIFIER_TYPES:
            marked.append(None if rng.random() < errors.miss / 2 else entity)
            continue
        if rng.random() < errors.miss:
            marked.append(None)
            continue
        start, end, entity_type = entity.start, entity.end, entity.type
        if rng.random() < errors.boundary and end - start >= 3:
            if rng.random() < 0.5:
                start += 1
            else:
                end -= 1
        if rng.random() < errors.swap:
            entity_type = TYPE_SWAP[entity_type]
        marked.append(Entity(start, end, entity_type))
    kept = [
        (drug, disease) for drug, disease in relations
        if marked[drug] is not None and marked[disease] is not None
        and marked[drug].type == "DRUG" and marked[disease].type == "DISEASE"  # type: ignore[union-attr]
        and rng.random() >= errors.relation_miss
    ]
    return marked, kept


def brat_ann(text: str, marked: list[Entity | None], relations: list[tuple[int, int]], provenance: dict[str, str]) -> str:
    """A brat .ann: the provenance note, then T lines (missed entities skipped) and TREATS R lines."""
    lines = ["#0\tProvenance\t" + ";".join(f"{k}={v}" for k, v in provenance.items())]
    tid: dict[int, str] = {}
    for index, entity in enumerate(marked):
        if entity is None:
            continue
        tid[index] = f"T{len(tid) + 1}"
        lines.append(f"{tid[index]}\t{entity.type} {entity.start} {entity.end}\t{text[entity.start:entity.end]}")
    for number, (drug, disease) in enumerate(relations, start=1):
        lines.append(f"R{number}\tTREATS Arg1:{tid[drug]} Arg2:{tid[disease]}")
    return "\n".join(lines) + "\n"


def span_f1(first: set[tuple[int, int, str]], second: set[tuple[int, int, str]]) -> float:
    """Exact-match F1 of two span sets; NaN when both are empty (nothing to agree on)."""
    if not first and not second:
        return math.nan
    return 2.0 * len(first & second) / (len(first) + len(second))
