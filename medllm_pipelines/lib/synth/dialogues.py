"""Pre-consultation (triage) dialogues and three annotators' department labels.

A dialogue is a patient describing symptoms to an intake assistant; the gold
label is the department the symptoms belong to. The assistant never names the
department, so the label has to be inferred. Some patient turns give the
patient's name or phone number, as they do in real intake chats.

Generator 2 is compositional (docs/models_text.md): each dialogue is put
together from ``dialogue_vocabulary.yaml`` (symptom concepts in several
clinical, colloquial and code-switched forms per language, conditions,
medicines, tests, negated symptoms of other departments, comorbidities,
durations, modifiers) with the assistant's questions in a random subset and
order, so that a model has to learn symptoms rather than sentences. Patients
come back (repeat visits). The first dialogue of each patient draws its
department, identifiers and annotator labels from the institution's stream
exactly as generator 1 did; wording and repeat visits come from spawned
streams.

Annotators err independently with fixed probabilities (ann-03 is the noisy
one) and, when wrong, pick uniformly among the other departments, so the
intended agreement has a closed form that the manifest records.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from medllm_pipelines.lib.synth import catalog
from medllm_pipelines.lib.synth.determinism import child_seed, stream
from medllm_pipelines.lib.synth.plans import PatientPlan

ENDOCRINOLOGY = "Endocrinology"
CARDIOLOGY = "Cardiology"
RESPIRATORY = "Respiratory Medicine"
GASTROENTEROLOGY = "Gastroenterology"
NEUROLOGY = "Neurology"
ORTHOPEDICS = "Orthopedics"
DERMATOLOGY = "Dermatology"

DEPARTMENTS: dict[str, str] = {  # label -> Chinese department name
    ENDOCRINOLOGY: "内分泌科",
    CARDIOLOGY: "心内科",
    RESPIRATORY: "呼吸内科",
    GASTROENTEROLOGY: "消化内科",
    NEUROLOGY: "神经内科",
    ORTHOPEDICS: "骨科",
    DERMATOLOGY: "皮肤科",
}
LABELS = tuple(DEPARTMENTS)

ANNOTATOR_ERROR_RATES: dict[str, float] = {"ann-01": 0.05, "ann-02": 0.10, "ann-03": 0.25}
# Repeat pre-consultations of a patient who has one: Binomial(n, p) more, each with its own complaint.
REPEAT_VISITS = (3, 0.5)
ANNOTATION_TOOL = "label-studio 1.13"
GUIDELINE_VERSION = "triage-guideline-v1.2"

VOCABULARY_FILE = Path(__file__).with_name("dialogue_vocabulary.yaml")
_SPAN = re.compile(r"<([^<>]+)>")


@dataclass(frozen=True)
class Vocabulary:
    """The generator's phrase lists (dialogue_vocabulary.yaml), forms with their entity spans marked by < >."""

    version: str
    departments: dict[str, dict[str, Any]]
    negatable: dict[str, dict[str, list[str]]]
    negation: dict[str, list[str]]
    comorbidity: dict[str, dict[str, Any]]
    durations: dict[str, list[str]]
    modifiers: dict[str, list[str]]


@cache
def load_vocabulary(path: Path = VOCABULARY_FILE) -> Vocabulary:
    raw = yaml.safe_load(Path(path).read_text("utf-8"))
    missing = sorted(set(LABELS) - set(raw["departments"]))
    if missing:
        raise ValueError(f"{path}: no vocabulary for departments {missing}")
    return Vocabulary(str(raw["version"]), raw["departments"], raw["negatable"], raw["negation"], raw["comorbidity"],
                      raw["durations"], raw["modifiers"])


def surface(form: str) -> str:
    """A vocabulary form as spoken: the span marks removed."""
    return _SPAN.sub(r"\1", form)


def spans(form: str) -> list[str]:
    """The entity terms of a form: its marked parts, or the whole form when none is marked."""
    return _SPAN.findall(form) or [form]


def vocabulary_lexicon(language: str, vocabulary: Vocabulary | None = None) -> dict[str, str]:
    """Entity term -> type (SYMPTOM, DISEASE, DRUG) of everything the generator can say in ``language``."""
    vocabulary = vocabulary or load_vocabulary()
    lexicon: dict[str, str] = {}
    for department in vocabulary.departments.values():
        for concept in department["symptoms"]:
            for form in concept[language]:
                lexicon.update({term: "SYMPTOM" for term in spans(form)})
        lexicon.update({term: "DISEASE" for term in department["conditions"][language]})
        lexicon.update({term: "DRUG" for term in department["drugs"][language]})
    lexicon.update({term: "SYMPTOM" for terms in vocabulary.negatable.values() for term in terms[language]})
    for key, value in vocabulary.comorbidity[language].items():
        for disease, drug in ([value] if key != "other" else value):
            lexicon.setdefault(disease, "DISEASE")
            lexicon.setdefault(drug, "DRUG")
    return lexicon


@dataclass
class DialogueOutput:
    dialogues: list[dict[str, Any]] = field(default_factory=list)
    annotations: list[dict[str, Any]] = field(default_factory=list)
    gold: dict[str, str] = field(default_factory=dict)  # dialogue_id -> label


def choose_department(plan: PatientPlan, rng: np.random.Generator) -> str:
    """Diabetics come more often for thirst and polyuria; others spread across departments."""
    conditions = {d.condition for d in plan.diagnoses}
    weights = {label: 1.0 for label in LABELS}
    if catalog.T2D in conditions:
        weights[ENDOCRINOLOGY] = 6.0
    else:
        weights[ENDOCRINOLOGY] = 0.5
    if catalog.HYPERTENSION in conditions:
        weights[CARDIOLOGY] += 1.5
    if catalog.UPPER_RESPIRATORY_INFECTION in conditions:
        weights[RESPIRATORY] += 2.0
    if catalog.GASTRITIS in conditions:
        weights[GASTROENTEROLOGY] += 2.0
    if catalog.LOW_BACK_PAIN in conditions:
        weights[ORTHOPEDICS] += 2.0
    p = np.array([weights[label] for label in LABELS])
    return LABELS[int(rng.choice(len(LABELS), p=p / p.sum()))]


_PHRASES: dict[str, dict[str, list[str]]] = {
    "zh": {
        "open": ["您好，我是预问诊助手。请问您哪里不舒服？", "您好，请简单说说今天因为什么来看病？",
                 "你好，这里是线上预问诊，请描述一下您的情况。"],
        "lead": ["", "", "医生，", "是这样的，", "这段时间", "嗯，", "我想咨询一下，", "最近"],
        "ask_duration": ["这种情况持续多久了？", "多长时间了？", "什么时候开始的？"],
        "duration": ["大概{d}了。", "差不多有{d}了。", "{d}了吧。", "有{d}了。"],
        "ask_more": ["还有别的不舒服吗？", "还有其他症状吗？", "除了这个还有什么？"],
        "ask_feel": ["严重吗？", "具体是什么感觉？", "什么时候更明显？"],
        "ask_history": ["以前有什么慢性病吗？目前在吃什么药？", "有没有什么基础病？平时吃药吗？"],
        "ask_drug": ["自己用过什么药吗？", "吃过什么药没有？"],
        "drug": ["吃了点{m}，不太管用。", "用过{m}，好一点点。", "自己买了{m}，没什么效果。"],
        "no_drug": ["还没用过药。", "没有，想先问问。"],
        "condition": ["我怀疑是{c}。", "以前得过{c}。", "会不会是{c}？"],
        "test": ["之前{t}，", "上个月{t}，"],
        "comorbid": ["有{d}，一直在吃{m}。", "{d}好几年了，在吃{m}。"],
        "healthy": ["没什么大病，也没在吃药。", "身体一直挺好的。", "没有，平时不吃药。"],
        "close": ["好的，信息已记录，医生会根据情况为您安排就诊。", "明白了，已经帮您记下，请稍等。", "好的，谢谢您，马上为您安排。"],
        "and": "，", "stop": "。",
    },
    "en": {
        "open": ["Hello, I'm the intake assistant. What brings you in today?", "Hi there, how can we help you today?",
                 "Welcome to online pre-consultation. Please tell me what's wrong."],
        "lead": ["", "", "Well, ", "So ", "Basically ", "Lately ", "Um, "],
        "ask_duration": ["How long has this been going on?", "When did it start?", "How long have you had this?"],
        "duration": ["About {d}.", "It's been {d}.", "Going on {d} now.", "Roughly {d}, I think."],
        "ask_more": ["Anything else bothering you?", "Any other symptoms?", "Is there anything else?"],
        "ask_feel": ["How bad is it?", "Can you describe it a bit more?", "When is it worst?"],
        "ask_history": ["Do you have any long-term conditions or take any regular medicines?",
                        "Any medical history I should know about?"],
        "ask_drug": ["Have you taken anything for it?", "Tried any medicine yet?"],
        "drug": ["I took some {m} but it didn't help.", "I've tried {m}, it helps a little.", "Only {m}, with no luck."],
        "no_drug": ["Nothing yet.", "No, I wanted to ask first."],
        "condition": ["I'm worried it's {c}.", "I had {c} before.", "Could it be {c}?"],
        "test": ["I {t} a while ago. ", "Last month I {t}. "],
        "comorbid": ["I have {d} and take {m} for it.", "I've had {d} for years; I'm on {m}."],
        "healthy": ["Nothing major, no regular medicines.", "No, I'm generally healthy.",
                    "None, and I don't take anything regularly."],
        "close": ["Thank you, I've noted everything; the doctor will see you shortly.",
                  "Thanks, that's all recorded. Please wait to be called.", "Got it, thank you. We'll arrange your visit."],
        "and": ", and ", "stop": ".",
    },
}
_CLAUSE_STARTS = ("I ", "I'm", "I've", "my ", "it ", "there's", "the ")
_NOUN_FRAMES = ["I have {x}", "I've got {x}", "I've been having {x}"]


class _Composer:
    """Draws the phrases of one dialogue from its own stream (symptoms, order of questions, wording)."""

    def __init__(self, department: str, language: str, rng: np.random.Generator) -> None:
        self.vocabulary = load_vocabulary()
        self.entry = self.vocabulary.departments[department]
        self.department, self.language, self.rng = department, language, rng
        self.phrases = _PHRASES[language]

    def pick(self, options: list[Any]) -> Any:
        return options[int(self.rng.integers(len(options)))]

    def say(self, key: str, **values: str) -> str:
        return self.pick(self.phrases[key]).format(**values)

    def symptom(self, concept: dict[str, list[str]]) -> str:
        text = surface(self.pick(concept[self.language]))
        if self.language == "en" and not text.startswith(_CLAUSE_STARTS):
            text = self.pick(_NOUN_FRAMES).format(x=text)
        return text

    def sentence(self, clauses: list[str], lead: str = "") -> str:
        text = lead + self.phrases["and"].join(clauses)
        if self.language == "en":
            text = text[:1].upper() + text[1:] if not lead else text
        return text + self.phrases["stop"]

    def duration(self) -> str:
        n = str(int(self.rng.integers(2, 30)))
        return self.pick(self.vocabulary.durations[self.language]).replace("{n}", n)

    def negation(self) -> str:
        others = [d for d in self.vocabulary.negatable if d != self.department]
        term = self.pick(self.vocabulary.negatable[self.pick(others)][self.language])
        return self.pick(self.vocabulary.negation[self.language]).format(x=term)

    def history(self, conditions: set[str]) -> str:
        table = self.vocabulary.comorbidity[self.language]
        if catalog.HYPERTENSION in conditions:
            disease, drug = table["hypertension"]
        elif catalog.T2D in conditions:
            disease, drug = table["diabetes"]
        elif self.rng.random() < 0.25:
            disease, drug = self.pick(table["other"])
        else:
            return self.say("healthy")
        return self.say("comorbid", d=disease, m=drug)


def _turns(plan: PatientPlan, department: str, language: str, rng: np.random.Generator,
           text_rng: np.random.Generator) -> list[dict[str, str]]:
    """One dialogue: identifiers placed from ``rng`` (as before), everything else composed from ``text_rng``.

    The patient's complaint is 1-3 symptom concepts of the department, each in
    one of its surface forms; the assistant asks a random subset of follow-up
    questions in a random order (duration, other symptoms, character, history,
    medicines), and the answers add durations, modifiers, a negated symptom of
    another department, a comorbidity, a medicine or test, or a condition the
    patient suspects.
    """
    person = plan.registration.person
    name = person.display_name if language == "zh" else person.name_en
    rng.integers(3), rng.integers(2, 30)  # the first generator's template and duration draws, kept so that the
    # department, identifier and annotator draws of ``rng`` (and so the labels) are those of generator 1
    gives_identity = rng.random() < 0.4
    gives_phone = gives_identity and rng.random() < 0.6
    ends_with_identity = not gives_identity and rng.random() < 0.3
    conditions = {d.condition for d in plan.diagnoses}

    c = _Composer(department, language, text_rng)
    concepts = c.entry["symptoms"]
    order = text_rng.permutation(len(concepts))
    count = 1 + int(text_rng.random() < 0.75) + int(text_rng.random() < 0.35)
    chosen = [concepts[int(i)] for i in order[:count]]
    first = 1 + int(len(chosen) > 1 and text_rng.random() < 0.4)
    complaint = c.sentence([c.symptom(x) for x in chosen[:first]], c.pick(c.phrases["lead"]))
    merged_duration = text_rng.random() < 0.25
    if merged_duration:
        complaint += " " + c.say("duration", d=c.duration()) if language == "en" else c.say("duration", d=c.duration())
    if text_rng.random() < 0.2:
        complaint += (" " if language == "en" else "") + c.say("condition", c=c.pick(c.entry["conditions"][language]))

    follow: list[tuple[str, str]] = []
    if not merged_duration:
        answer = c.say("duration", d=c.duration())
        if text_rng.random() < 0.4:
            answer += (" " if language == "en" else "") + c.sentence([c.pick(c.vocabulary.modifiers[language])])
        follow.append((c.say("ask_duration"), answer))
    rest = [c.symptom(x) for x in chosen[first:]]
    if rest or text_rng.random() < 0.5:
        clauses = rest + ([c.negation()] if text_rng.random() < 0.45 or not rest else [])
        follow.append((c.say("ask_more"), c.sentence(clauses)))
    if text_rng.random() < 0.4:
        follow.append((c.say("ask_feel"), c.sentence([c.pick(c.vocabulary.modifiers[language])])))
    if text_rng.random() < 0.5:
        answer = c.say("drug", m=c.pick(c.entry["drugs"][language])) if text_rng.random() < 0.7 else c.say("no_drug")
        if text_rng.random() < 0.3:
            answer = c.say("test", t=c.pick(c.entry["tests"][language])) + answer
        follow.append((c.say("ask_drug"), answer))
    follow = [follow[int(i)] for i in text_rng.permutation(len(follow))]
    follow.append((c.say("ask_history"), c.history(conditions)))

    if language == "zh":
        intro = f"你好，我叫{name}" + (f"，手机号{person.phone}。" if gives_phone else "。") if gives_identity else ""
        ending = f"好的，有事可以打我电话{person.phone}，我叫{name}。"
    else:
        intro = f"Hi, this is {name}" + (f", my number is {person.phone}. " if gives_phone else ". ") \
            if gives_identity else ""
        ending = f"OK. It's {name}, by the way, you can call me on {person.phone}."
    turns = [("assistant", c.say("open")), ("patient", intro + complaint)]
    for question, answer in follow:
        turns += [("assistant", question), ("patient", answer)]
    turns.append(("assistant", c.say("close")))
    if ends_with_identity:
        turns.append(("patient", ending))
    return [{"speaker": speaker, "text": text} for speaker, text in turns]


def _annotate(dialogue_id: str, gold: str, number: int, rng: np.random.Generator) -> list[dict[str, Any]]:
    rows = []
    base = datetime(2025, 11, 3, 9, 0) + timedelta(minutes=7 * number)
    for offset, (annotator, error_rate) in enumerate(ANNOTATOR_ERROR_RATES.items()):
        label = gold
        if rng.random() < error_rate:
            others = [candidate for candidate in LABELS if candidate != gold]
            label = others[int(rng.integers(len(others)))]
        when = base + timedelta(days=offset, seconds=int(rng.integers(0, 3600)))
        rows.append({
            "item_id": dialogue_id,
            "annotator_id": annotator,
            "label": label,
            "annotated_at": when.strftime("%Y-%m-%dT%H:%M:%S") + "+08:00",
            "tool": ANNOTATION_TOOL,
            "guideline_version": GUIDELINE_VERSION,
        })
    return rows


def build_dialogues(institution_code: str, language: str, plans: list[PatientPlan],
                    rng: np.random.Generator) -> DialogueOutput:
    """Dialogues for the plans that have one (a first one, then repeat visits), and three annotations of each.

    The first dialogue of a patient draws its department, identifiers and
    annotations from ``rng`` exactly as generator 1 did; repeat visits
    (:data:`REPEAT_VISITS`) and the wording of every dialogue come from
    streams spawned from ``rng``, which draw nothing from it.
    """
    output = DialogueOutput()
    text_seed = child_seed(rng.spawn(1)[0])  # the wording of each dialogue comes from its own stream
    repeat_rng = rng.spawn(1)[0]

    def add(plan: PatientPlan, draw: np.random.Generator) -> None:
        number = len(output.dialogues) + 1
        dialogue_id = f"dlg-{institution_code}-{number:05d}"
        department = choose_department(plan, draw)
        output.dialogues.append({
            "dialogue_id": dialogue_id,
            "patient_mrn": plan.registration.mrn,
            "language": language,
            "turns": _turns(plan, department, language, draw, stream(text_seed, "dialogue-phrasing", number)),
            "department": department,
        })
        output.gold[dialogue_id] = department
        output.annotations.extend(_annotate(dialogue_id, department, number, draw))

    for plan in plans:
        if not plan.has_dialogue:
            continue
        add(plan, rng)
        for _ in range(int(repeat_rng.binomial(*REPEAT_VISITS))):
            add(plan, repeat_rng)
    # Exports come per annotator, as labelling tools write them.
    order = {annotator: rank for rank, annotator in enumerate(ANNOTATOR_ERROR_RATES)}
    output.annotations.sort(key=lambda row: (order[row["annotator_id"]], row["item_id"]))
    return output


def intended_agreement() -> dict[str, Any]:
    """Per-annotator accuracy and expected pairwise agreement under uniform errors."""
    k = len(LABELS)
    annotators = list(ANNOTATOR_ERROR_RATES.items())
    pairwise = {}
    for i, (a, ea) in enumerate(annotators):
        for b, eb in annotators[i + 1:]:
            pairwise[f"{a}~{b}"] = round((1 - ea) * (1 - eb) + ea * eb / (k - 1), 4)
    return {
        "error_model": "each annotator independently mislabels with probability error_rate, "
        "choosing uniformly among the other departments",
        "accuracy": {a: round(1 - e, 4) for a, e in annotators},
        "error_rates": dict(ANNOTATOR_ERROR_RATES),
        "pairwise_agreement": pairwise,
    }


def realised_agreement(output_rows: list[dict[str, Any]], gold: dict[str, str]) -> dict[str, Any]:
    """Observed accuracy per annotator and pairwise agreement, for the manifest."""
    labels: dict[str, dict[str, str]] = {}
    for row in output_rows:
        labels.setdefault(row["annotator_id"], {})[row["item_id"]] = row["label"]
    accuracy = {
        annotator: round(sum(given[i] == gold[i] for i in given) / len(given), 4) if given else None
        for annotator, given in sorted(labels.items())
    }
    names = sorted(labels)
    pairwise = {}
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            shared = sorted(set(labels[a]) & set(labels[b]))
            pairwise[f"{a}~{b}"] = (round(sum(labels[a][x] == labels[b][x] for x in shared) / len(shared), 4)
                                    if shared else None)
    return {"accuracy": accuracy, "pairwise_agreement": pairwise}
