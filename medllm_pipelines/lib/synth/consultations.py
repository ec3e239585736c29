"""Consultations and ward rounds: a doctor-patient dialogue and the structured note a doctor writes from it.

The aligned pairs the note generator learns from (issue 11, text generation). The dialogue is composed from
``consultation_vocabulary.yaml`` (complaint phrasings, durations, associated symptoms asked and affirmed or
denied, comorbidities, findings read out with drawn values, the assessment, medications, plan) in varied order
and wording; the gold note is a deterministic function of what was said (``StructuredNote``):

- chief complaint: the complaint's canonical term and the duration in digits ("cough for 3 days", "咳嗽3天");
- history: each associated symptom asked about, as itself when affirmed and "no <term>" / "无<term>" when
  denied (a symptom never asked about is not in the note), and any comorbidity the patient names;
- findings, medications, plan: what the doctor said, in the note's wording;
- assessment: the condition's display with its ICD-10 code.

Nothing is drawn from the clock or the process: the same seed gives the same pairs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from medllm_pipelines.lib.common.structured_note import StructuredNote, transcript

VOCABULARY_FILE = Path(__file__).with_name("consultation_vocabulary.yaml")
OUTPATIENT_CONSULTATION = "outpatient_consultation"
WARD_ROUND = "ward_round"
KINDS = (OUTPATIENT_CONSULTATION, WARD_ROUND)
LANGUAGES = ("en", "zh")

_GREETING = {"en": ["Good morning, what brings you in today?", "Hello, how can I help you?",
                    "Hi, have a seat. What seems to be the problem?"],
             "zh": ["您好，哪里不舒服？", "你好，今天怎么了？", "请坐，哪里不好？"]}
_COMPLAINT = {"en": ["{say} for {duration}.", "For {duration} now {say}.", "{say}. It started {duration} ago."],
              "zh": ["{say}，{duration}了。", "{duration}了，{say}。", "大概{duration}前开始{say}。"]}
_NAME = {"en": ["I'm {name}. ", "My name is {name}. "], "zh": ["我叫{name}。", "我是{name}，"]}
_COMORBIDITY_ASK = {"en": ["Any other medical problems?", "Do you have any long-term conditions?"],
                    "zh": ["以前有什么病吗？", "有没有慢性病？"]}
_NO_COMORBIDITY = {"en": ["No, nothing else.", "No, I'm otherwise healthy."], "zh": ["没有。", "身体一直挺好的。"]}
_EXAMINE = {"en": ["Let me examine you.", "I'll have a look."], "zh": ["我给您检查一下。", "来，查个体。"]}
_ASSESSMENT = {"en": ["I think this is {display}.", "This looks like {display}.", "It's most likely {display}."],
               "zh": ["考虑是{display}。", "应该是{display}。", "初步诊断{display}。"]}
_MEDICATION = {"en": ["I'll start you on {items}.", "Please take {items}.", "I'm prescribing {items}."],
               "zh": ["先给您开{items}。", "吃{items}。", "给您开点药：{items}。"]}
_PLAN = {"en": ["Next steps: {items}.", "I'm also arranging {items}.", "Plan: {items}."],
         "zh": ["下一步：{items}。", "再安排{items}。", "处理：{items}。"]}
_CLOSING = {"en": ["Thank you, doctor.", "OK, thanks.", "Alright, thank you."], "zh": ["好的，谢谢医生。", "谢谢。", "行，谢谢大夫。"]}
_JOIN = {"en": " and ", "zh": "，"}
# ward round: the doctor asks how a symptom is today; the patient says better, worse or gone
_ROUND_GREETING = {"en": ["Morning, day {day} in hospital now. How are you feeling?",
                          "Good morning. This is your day {day} with us. How was the night?"],
                   "zh": ["早上好，今天住院第{day}天了，感觉怎么样？", "住院第{day}天了，昨晚睡得怎么样？"]}
_ROUND_ASK = {"en": ["And the {term}?", "How is the {term} today?"], "zh": ["{term}怎么样了？", "{term}好点了吗？"]}
_PROGRESS = {  # state -> (patient phrasings, how the note writes it)
    "better": {"en": (["Better than yesterday.", "A lot better, thanks."], "{term} improved"),
               "zh": (["比昨天好多了。", "好一些了。"], "{term}好转")},
    "worse": {"en": (["Worse, to be honest.", "It's got worse overnight."], "{term} worse"),
              "zh": (["比昨天还重。", "更厉害了。"], "{term}加重")},
    "gone": {"en": (["It's gone.", "None at all now."], "no {term}"), "zh": (["没有了。", "已经好了。"], "无{term}")},
}
_CONTINUE = {"en": ["Carry on with {items}.", "We'll continue {items}."], "zh": ["继续用{items}。", "{items}接着用。"]}
_CONTINUE_NOTE = {"en": "continue {item}", "zh": "继续{item}"}
_NEGATION = {"en": "no {term}", "zh": "无{term}"}


@cache
def load_consultation_vocabulary(path: Path = VOCABULARY_FILE) -> dict[str, Any]:
    vocabulary = yaml.safe_load(path.read_text(encoding="utf-8"))
    for key, condition in vocabulary["conditions"].items():
        for part in ("department", "icd10", "display", "complaints", "medications", "plan"):
            if part not in condition:
                raise ValueError(f"{path.name}: condition {key} has no {part}")
    return vocabulary


def duration_in_note(days: int, language: str) -> str:
    """Digits, in the largest whole unit: 3 days, 1 week, 2 weeks, 1 month (3天, 1周, 1个月)."""
    if days % 30 == 0:
        n, unit = days // 30, ("month", "个月")
    elif days % 7 == 0:
        n, unit = days // 7, ("week", "周")
    else:
        n, unit = days, ("day", "天")
    return f"{n}{unit[1]}" if language == "zh" else f"{n} {unit[0]}{'s' if n > 1 else ''}"


@dataclass(frozen=True)
class ConsultationPair:
    """One consultation: its turns (speaker, text) and the gold note."""

    pair_id: str
    language: str
    condition: str
    department: str
    turns: tuple[dict[str, str], ...]
    note: StructuredNote
    kind: str = OUTPATIENT_CONSULTATION

    def dialogue_text(self) -> str:
        return transcript(self.turns, self.language)

    def as_record(self) -> dict[str, Any]:
        return {"pair_id": self.pair_id, "kind": self.kind, "language": self.language, "condition": self.condition,
                "department": self.department, "turns": list(self.turns),
                "note_fields": {name: list(items) for name, items in self.note.fields.items()},
                "icd10_codes": list(self.note.icd10_codes)}


@dataclass
class _Conversation:
    language: str
    rng: np.random.Generator
    turns: list[dict[str, str]] = field(default_factory=list)

    def pick(self, options: list[str]) -> str:
        return options[int(self.rng.integers(len(options)))]

    def say(self, speaker: str, text: str) -> None:
        if self.turns and self.turns[-1]["speaker"] == speaker:  # one speaker's consecutive sentences: one turn
            joiner = "" if self.language == "zh" else " "
            self.turns[-1]["text"] = f"{self.turns[-1]['text']}{joiner}{text}"
        else:
            self.turns.append({"speaker": speaker, "text": text})


def _values(spec: dict[str, list[float]], rng: np.random.Generator) -> dict[str, str]:
    drawn = {}
    for name, (low, high) in spec.items():
        if isinstance(low, int) and isinstance(high, int):
            drawn[name] = str(int(rng.integers(low, high + 1)))
        else:
            drawn[name] = f"{rng.uniform(low, high):.1f}"
    return drawn


def _capitalised(text: str, language: str) -> str:
    return text[:1].upper() + text[1:] if language == "en" else text


def build_consultation(pair_id: str, language: str, rng: np.random.Generator, *, condition: str | None = None,
                       patient_name: str | None = None) -> ConsultationPair:
    """One consultation of ``condition`` (drawn when None) in ``language``; ``patient_name`` is said when given."""
    if language not in LANGUAGES:
        raise ValueError(f"consultation language must be one of {LANGUAGES}, got {language!r}")
    vocabulary = load_consultation_vocabulary()
    keys = sorted(vocabulary["conditions"])
    key = condition or keys[int(rng.integers(len(keys)))]
    spec = vocabulary["conditions"][key]
    talk = _Conversation(language, rng)
    note: dict[str, list[str]] = {name: [] for name in ("chief_complaint", "history", "findings", "assessment",
                                                        "medications", "plan")}

    talk.say("doctor", talk.pick(_GREETING[language]))
    complaint = spec["complaints"][int(rng.integers(len(spec["complaints"])))]
    duration = vocabulary["durations"][int(rng.integers(len(vocabulary["durations"])))]
    opening = talk.pick(_COMPLAINT[language]).format(say=talk.pick(complaint["say"][language]),
                                                      duration=talk.pick(duration[language]))
    if patient_name:
        opening = talk.pick(_NAME[language]).format(name=patient_name) + opening
    talk.say("patient", _capitalised(opening, language))
    term = complaint["term"][language]
    span = duration_in_note(int(duration["days"]), language)
    note["chief_complaint"].append(f"{term}{span}" if language == "zh" else f"{term} for {span}")

    for index in rng.permutation(len(spec.get("associated", []))):
        symptom = spec["associated"][int(index)]
        if rng.random() < 0.2:  # not asked: not in the note
            continue
        talk.say("doctor", talk.pick(symptom["ask"][language]))
        present = rng.random() < 0.5
        talk.say("patient", talk.pick(symptom["affirm" if present else "deny"][language]))
        word = symptom["term"][language]
        note["history"].append(word if present else _NEGATION[language].format(term=word))

    talk.say("doctor", talk.pick(_COMORBIDITY_ASK[language]))
    if rng.random() < 0.4:
        comorbidity = vocabulary["comorbidities"][int(rng.integers(len(vocabulary["comorbidities"])))]
        talk.say("patient", talk.pick(comorbidity["say"][language]))
        note["history"].append(comorbidity["term"][language])
    else:
        talk.say("patient", talk.pick(_NO_COMORBIDITY[language]))

    talk.say("doctor", talk.pick(_EXAMINE[language]))
    for finding in spec.get("findings", []):
        if rng.random() < 0.2:
            continue
        values = _values(finding.get("values", {}), rng)
        talk.say("doctor", talk.pick(finding["say"][language]).format(**values))
        note["findings"].append(finding["note"][language].format(**values))

    display = spec["display"][language]
    talk.say("doctor", talk.pick(_ASSESSMENT[language]).format(
        display=display.lower() if language == "en" else display))
    note["assessment"].append(f"{spec['display'][language]} ({spec['icd10']})")
    for part, phrasing in (("medications", _MEDICATION), ("plan", _PLAN)):
        options = spec[part]
        chosen = sorted(rng.choice(len(options), size=int(rng.integers(1, min(2, len(options)) + 1)), replace=False))
        items = [options[int(i)][language] for i in chosen]
        talk.say("doctor", talk.pick(phrasing[language]).format(items=_JOIN[language].join(items)))
        note[part].extend(items)
    talk.say("patient", talk.pick(_CLOSING[language]))

    gold = StructuredNote({name: tuple(items) for name, items in note.items() if items}, language=language)
    return ConsultationPair(pair_id, language, key, spec["department"], tuple(talk.turns), gold)


def build_ward_round(pair_id: str, language: str, rng: np.random.Generator, *, condition: str | None = None,
                     ) -> ConsultationPair:
    """A ward-round conversation on hospital day 2-9 and the daily progress note written from it.

    Note fields: chief complaint "hospital day N" (住院第N天); history, how each symptom asked about is today
    ("cough improved", "no fever", "咳嗽好转"); findings read out; the assessment; medications continued;
    the plan.
    """
    if language not in LANGUAGES:
        raise ValueError(f"ward-round language must be one of {LANGUAGES}, got {language!r}")
    vocabulary = load_consultation_vocabulary()
    keys = sorted(vocabulary["conditions"])
    key = condition or keys[int(rng.integers(len(keys)))]
    spec = vocabulary["conditions"][key]
    talk = _Conversation(language, rng)
    day = int(rng.integers(2, 10))
    note: dict[str, list[str]] = {"chief_complaint": [f"住院第{day}天" if language == "zh" else f"hospital day {day}"],
                                  "history": [], "findings": [], "assessment": [], "medications": [], "plan": []}
    talk.say("doctor", talk.pick(_ROUND_GREETING[language]).format(day=day))
    symptoms = [c["term"][language] for c in spec["complaints"]] + [a["term"][language] for a in spec.get("associated", [])]
    for index in rng.permutation(len(symptoms))[: max(1, int(rng.integers(1, len(symptoms) + 1)))]:
        term = symptoms[int(index)]
        state = ("better", "worse", "gone")[int(rng.choice(3, p=[0.55, 0.15, 0.30]))]
        phrasings, written = _PROGRESS[state][language]
        talk.say("doctor", talk.pick(_ROUND_ASK[language]).format(term=term))
        talk.say("patient", talk.pick(phrasings))
        note["history"].append(written.format(term=term))
    talk.say("doctor", talk.pick(_EXAMINE[language]))
    for finding in spec.get("findings", []):
        if rng.random() < 0.3:
            continue
        values = _values(finding.get("values", {}), rng)
        talk.say("doctor", talk.pick(finding["say"][language]).format(**values))
        note["findings"].append(finding["note"][language].format(**values))
    note["assessment"].append(f"{spec['display'][language]} ({spec['icd10']})")
    talk.say("doctor", talk.pick(_ASSESSMENT[language]).format(
        display=spec["display"][language].lower() if language == "en" else spec["display"][language]))
    medications = [m[language] for m in spec["medications"]]
    chosen = [medications[int(i)] for i in sorted(rng.choice(len(medications), size=1, replace=False))]
    talk.say("doctor", talk.pick(_CONTINUE[language]).format(items=_JOIN[language].join(chosen)))
    note["medications"].extend(_CONTINUE_NOTE[language].format(item=item) for item in chosen)
    plan = spec["plan"][int(rng.integers(len(spec["plan"])))][language]
    talk.say("doctor", talk.pick(_PLAN[language]).format(items=plan))
    note["plan"].append(plan)
    talk.say("patient", talk.pick(_CLOSING[language]))
    gold = StructuredNote({name: tuple(items) for name, items in note.items() if items}, language=language)
    return ConsultationPair(pair_id, language, key, spec["department"], tuple(talk.turns), gold, kind=WARD_ROUND)


def build_consultations(count: int, rng: np.random.Generator, *, languages: tuple[str, ...] = LANGUAGES,
                        prefix: str = "cons", kinds: tuple[str, ...] = (OUTPATIENT_CONSULTATION,),
                        ) -> list[ConsultationPair]:
    """``count`` pairs, languages, kinds and conditions drawn evenly (conditions cycled, then shuffled)."""
    unknown = set(kinds) - set(KINDS)
    if unknown:
        raise ValueError(f"unknown pair kinds {sorted(unknown)}; known: {list(KINDS)}")
    keys = sorted(load_consultation_vocabulary()["conditions"])
    conditions = [keys[i % len(keys)] for i in range(count)]
    order = rng.permutation(count)
    builders = {OUTPATIENT_CONSULTATION: build_consultation, WARD_ROUND: build_ward_round}
    return [builders[kinds[(n // len(languages)) % len(kinds)]](
        f"{prefix}-{n + 1:05d}", languages[n % len(languages)], rng, condition=conditions[int(order[n])])
        for n in range(count)]


# --- the consultations feed of the synthetic hospital ------------------------
CONSULTATION_RATE = 0.4  # share of an institution's patients with one recorded visit (transcript + signed note)
WARD_ROUND_SHARE = 0.25  # of those, the share recorded on a ward round rather than in clinic
CONSULTATIONS_TRUTH_PATH = "_truth/consultations.jsonl"
SAYS_NAME_RATE = 0.3  # outpatients who give their name at the start (an identifier the release must remove)


@dataclass
class VisitRecords:
    """One institution's recorded visits as its EMR exports them, and the gold notes (``_truth/``)."""

    visits: list[dict[str, Any]] = field(default_factory=list)
    truth: list[dict[str, Any]] = field(default_factory=list)


def build_visit_records(institution_code: str, language: str, plans: list[Any],
                        rng: np.random.Generator) -> VisitRecords:
    """For a share of ``plans``: the visit's transcript and the doctor's signed record (``render_note`` of the gold).

    A record is what an EMR exports with an ambient-scribe transcript: ``visit_id``, ``patient_mrn``, ``kind``
    (outpatient consultation or ward round), ``language``, ``department``, ``turns`` (speaker doctor/patient) and
    ``record_text``. Every draw comes from ``rng`` (its own stream): other feeds are unchanged by this one.
    """
    from medllm_pipelines.lib.common.structured_note import render_note

    output = VisitRecords()
    for plan in plans:
        if rng.random() >= CONSULTATION_RATE:
            continue
        number = len(output.visits) + 1
        visit_id = f"vis-{institution_code}-{number:05d}"
        name = None
        if rng.random() < WARD_ROUND_SHARE:
            pair = build_ward_round(visit_id, language, rng)
        else:
            person = plan.registration.person
            name = (person.display_name if language == "zh" else person.name_en) if rng.random() < SAYS_NAME_RATE else None
            pair = build_consultation(visit_id, language, rng, patient_name=name)
        output.visits.append({"visit_id": visit_id, "patient_mrn": plan.registration.mrn, "kind": pair.kind,
                              "language": language, "department": pair.department, "turns": list(pair.turns),
                              "record_text": render_note(pair.note)})
        record = pair.as_record()
        output.truth.append({"visit_id": visit_id, "institution": institution_code, "said_name": name is not None,
                             **{k: record[k] for k in ("kind", "condition", "note_fields", "icd10_codes")}})
    return output
