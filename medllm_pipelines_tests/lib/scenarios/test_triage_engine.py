"""The pre-consultation dialogue: red flags first, negation, follow-ups, the model, privacy, FHIR, bad input."""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Sequence
from pathlib import Path

import pytest
import yaml
from fhir.resources.R4B.questionnaireresponse import QuestionnaireResponse

from medllm_pipelines.lib.common.codes import ICD10_WHO
from medllm_pipelines.lib.scenarios.errors import ScenarioInputError
from medllm_pipelines.lib.scenarios.triage import TriageConfig, TriageEngine, TurnResult, load_knowledge
from medllm_pipelines.lib.scenarios.triage.engine import DEPARTMENT_SYSTEM

DIALOGUES = yaml.safe_load((Path(__file__).parent / "triage_dialogues.yaml").read_text(encoding="utf-8"))["dialogues"]
CJK = re.compile(r"[\u4e00-\u9fff]")
YES = {"en": ["yes", "yeah, a bit", "Yes, I do.", "sometimes"], "zh": ["是的", "有", "有一点", "嗯，有"]}
NO = {"en": ["no", "not really", "No, I don't.", "nope"], "zh": ["没有", "不会", "没", "没有的"]}


class FakeClassifier:
    """Answers the same department whatever it reads, and records what it was given."""

    def __init__(self, department: str = "Dermatology", probability: float = 0.99) -> None:
        self.department, self.probability = department, probability
        self.seen: list[str] = []

    def __call__(self, texts: Sequence[str]) -> list[list[tuple[str, float]]]:
        self.seen.extend(texts)
        rest = "Cardiology" if self.department != "Cardiology" else "Neurology"
        return [[(self.department, self.probability), (rest, 1.0 - self.probability)] for _ in texts]


def talk(engine: TriageEngine, language: str, *messages: str) -> TurnResult:
    result = engine.start(language)
    for message in messages:
        result = engine.turn(result.state, message)
    return result


def present(result: TurnResult) -> dict[str, bool]:
    return dict(result.state["symptoms"])


# ---------------------------------------------------------------------------------------------- red flags
RED_FLAG_MESSAGES = [
    ("en", "I have chest pain and I can't catch my breath", "chest_pain_with_breathlessness_or_sweating"),
    ("en", "there's a squeezing pressure on my chest and I'm drenched in sweat",
     "chest_pain_with_breathlessness_or_sweating"),
    ("en", "Her mouth is drooping on the left side", "stroke_signs"),
    ("en", "he suddenly can't lift his right arm and his speech is slurred", "stroke_signs"),
    ("en", "I've just had the worst headache of my life, it came on suddenly", "thunderclap_headache"),
    ("en", "I've been vomiting blood this morning", "gastrointestinal_bleeding"),
    ("en", "my stools have turned black and tarry", "gastrointestinal_bleeding"),
    ("en", "I want to kill myself", "suicidal_ideation_or_self_harm"),
    ("en", "I don't want to live anymore", "suicidal_ideation_or_self_harm"),
    ("en", "After the bee sting my throat is closing up", "anaphylaxis"),
    ("en", "My husband passed out in the kitchen", "loss_of_consciousness_or_seizure"),
    ("en", "Running a high fever and I've got a really stiff neck", "fever_with_stiff_neck_or_confusion"),
    ("en", "I cut my hand and the bleeding won't stop", "severe_bleeding"),
    ("zh", "胸口疼得厉害，还喘不上气", "chest_pain_with_breathlessness_or_sweating"),
    ("zh", "心口疼，一直冒冷汗", "chest_pain_with_breathlessness_or_sweating"),
    ("zh", "我爸突然嘴歪了，说话也不清楚", "stroke_signs"),
    ("zh", "突然剧烈头痛，从来没有这么疼过", "thunderclap_headache"),
    ("zh", "今天吐血了", "gastrointestinal_bleeding"),
    ("zh", "拉的大便是黑色的", "gastrointestinal_bleeding"),
    ("zh", "我不想活了", "suicidal_ideation_or_self_harm"),
    ("zh", "昨晚割腕了", "suicidal_ideation_or_self_harm"),
    ("zh", "吃了虾以后嘴唇肿了，喉咙发紧", "anaphylaxis"),
    ("zh", "孩子刚才抽搐了，口吐白沫", "loss_of_consciousness_or_seizure"),
    ("zh", "发烧三天了，脖子硬，低不下头", "fever_with_stiff_neck_or_confusion"),
]


@pytest.mark.parametrize(("language", "message", "rule"), RED_FLAG_MESSAGES)
def test_red_flags_escalate_to_emergency_whatever_the_model_says(language, message, rule):
    classifier = FakeClassifier("Dermatology", 0.99)
    result = talk(TriageEngine(classifier, model={"name": "triage", "version": "3"}), language, message)
    assert result.reply["status"] == "escalated"
    report = result.reply["result"]
    assert report["escalated"] is True
    assert report["department"] == {"code": "EMER", "name_en": "Emergency", "name_zh": "急诊科"}
    assert rule in {flag["id"] for flag in report["red_flags"]}
    assert "120" in report["advice"]
    assert result.state["status"] == "escalated"


def test_a_red_flag_confirmed_in_a_follow_up_answer_escalates():
    engine = TriageEngine(FakeClassifier("Dermatology", 0.99))
    first = talk(engine, "en", "My chest has been hurting since this morning")
    assert first.reply["status"] == "asking"
    assert first.reply["question"]["symptom"]["id"] == "shortness_of_breath"  # screened before anything else
    second = engine.turn(first.state, "Yes, a little")
    assert second.reply["status"] == "escalated"


@pytest.mark.parametrize(("language", "message"), [
    ("en", "No chest pain, and I'm not short of breath. Just a bad cough with green phlegm."),
    ("en", "Patient denies chest pain or shortness of breath; productive cough for a week."),
    ("en", "I don't have any chest pain. I've had a cough and a runny nose."),
    ("en", "My chest doesn't hurt and I'm breathing fine, it's this cough that won't go away."),
    ("zh", "没有胸痛，也不气短，就是咳嗽有黄痰。"),
    ("zh", "胸口不疼，呼吸也没问题，主要是咳嗽、流鼻涕。"),
])
def test_negated_red_flag_symptoms_do_not_escalate(language, message):
    result = talk(TriageEngine(None), language, message)
    assert result.reply["status"] != "escalated"
    assert present(result).get("chest_pain") in (False, None)
    assert present(result).get("cough") is True


def test_a_later_yes_overrides_an_earlier_no():
    engine = TriageEngine(None)
    result = talk(engine, "en", "I've got no fever, just a sore throat")
    assert present(result)["fever"] is False
    if result.reply["status"] == "asking":
        result = engine.turn(result.state, "Actually now I do have a fever")
        assert present(result)["fever"] is True


# ---------------------------------------------------------------------------------------------- dialogue
def test_follow_up_questions_until_confident_and_never_the_same_question_twice():
    engine = TriageEngine(None)
    result = talk(engine, "en", "I keep getting headaches")
    assert result.reply["status"] == "asking"
    answers = {"light_sensitivity": "yes, bright light makes it worse", "nausea": "yeah, I feel sick with it",
               "vomiting": "sometimes"}
    asked = []
    while result.reply["status"] == "asking":
        symptom = result.reply["question"]["symptom"]["id"]
        asked.append(symptom)
        result = engine.turn(result.state, answers.get(symptom, "no"))
    assert len(asked) == len(set(asked)) <= engine.config.max_questions
    report = result.reply["result"]
    assert report["department"]["code"] == "NEUR"
    assert report["confidence"] >= engine.config.confident_at
    assert report["candidate_diseases"][0]["icd10"] == "G43.9"  # migraine


def test_questions_are_asked_in_the_session_language():
    engine = TriageEngine(None)
    zh = talk(engine, "zh", "我头疼")
    en = talk(engine, "en", "我头疼")
    assert zh.reply["status"] == en.reply["status"] == "asking"
    assert CJK.search(zh.reply["question"]["text"]) and not CJK.search(en.reply["question"]["text"])
    assert CJK.search(engine.start("zh").reply["message"])


@pytest.mark.parametrize(("language", "yes", "no"), [("en", "Yes.", "Nope, not at all"), ("zh", "是的", "没有")])
def test_yes_and_no_answers_confirm_or_negate_the_asked_symptom(language, yes, no):
    engine = TriageEngine(None)
    asking = talk(engine, language, "I have a headache" if language == "en" else "我头疼")
    symptom = asking.reply["question"]["symptom"]["id"]
    assert present(engine.turn(asking.state, yes))[symptom] is True
    assert present(engine.turn(asking.state, no))[symptom] is False
    unsure = engine.turn(asking.state, "I'm not sure" if language == "en" else "不清楚")
    assert symptom not in present(unsure) and symptom in unsure.state["asked"]


def test_no_that_negates_another_symptom_does_not_answer_the_question():
    engine = TriageEngine(None)
    asking = talk(engine, "en", "I have a headache")
    symptom = asking.reply["question"]["symptom"]["id"]
    other = "cough" if symptom != "cough" else "fever"
    result = engine.turn(asking.state, f"no {other}")
    assert present(result)[other] is False and symptom not in present(result)


def test_the_dialogue_ends_after_max_questions_when_everything_is_denied():
    engine = TriageEngine(None, config=TriageConfig(max_questions=2))
    result = talk(engine, "en", "I feel tired all the time")
    turns = 0
    while result.reply["status"] == "asking":
        result = engine.turn(result.state, "no")
        turns += 1
    assert turns <= 2 and result.reply["status"] == "done"
    assert result.state["questions_asked"] <= 2


def test_without_a_recognised_symptom_the_engine_asks_again_and_never_finishes_on_the_model_alone():
    engine = TriageEngine(FakeClassifier("Cardiology", 0.99))
    result = talk(engine, "en", "Hello, I'd like to see a doctor please")
    assert result.reply["status"] == "asking" and result.reply["question"]["kind"] == "open"
    assert "could not recognise" in result.reply["message"]
    while result.reply["status"] == "asking":
        result = engine.turn(result.state, "I just don't feel right")
    report = result.reply["result"]
    assert report["department"]["code"] == "CARD"  # the model's answer, once the questions are spent
    assert report["symptoms"] == [] and report["candidate_diseases"] == []


# ---------------------------------------------------------------------------------------------- model
def test_the_model_reads_the_de_identified_patient_turns_one_per_line():
    classifier = FakeClassifier("Dermatology", 0.5)  # disagrees with the graph: the engine keeps asking
    engine = TriageEngine(classifier, deidentify=lambda text: text.replace("Zhang Wei", "[NAME]"))
    result = talk(engine, "en", "I'm Zhang Wei and I keep getting headaches", "  yes  ")
    assert classifier.seen[-1] == "I'm [NAME] and I keep getting headaches\nyes"
    assert result.state["turns"] == ["I'm [NAME] and I keep getting headaches", "yes"]


def test_the_model_and_the_graph_are_pooled_and_the_model_is_reported():
    headache = "I keep getting headaches"
    graph_only = talk(TriageEngine(None), "en", headache)
    with_model = talk(TriageEngine(FakeClassifier("Neurology", 0.95), model={"name": "triage", "version": "7"}), "en",
                      headache)
    assert graph_only.reply["status"] == "asking"  # the graph alone is unsure between neurology, cardiology...
    assert with_model.reply["status"] == "done"  # ...the model's agreement settles it
    report = with_model.reply["result"]
    assert report["department"]["code"] == "NEUR" and report["model"] == {"name": "triage", "version": "7"}
    assert report["knowledge_version"] == load_knowledge().version
    # A confidently wrong model cannot overrule clear symptoms: the pool keeps half the weight on the graph.
    eczema = "Itchy red rash on my elbows and my skin is really dry"
    overruled = talk(TriageEngine(FakeClassifier("Orthopedics", 0.99)), "en", eczema)
    assert overruled.reply["result"]["department"]["code"] == "DERM"
    assert talk(TriageEngine(None), "en", eczema).reply["result"]["model"] is None


# ---------------------------------------------------------------------------------------------- privacy, state
def test_the_state_holds_only_de_identified_text_and_is_json():
    engine = TriageEngine(FakeClassifier(), deidentify=lambda text: re.sub(r"1[3-9]\d{9}", "[PHONE]", text))
    raw = "我的电话是13912345678，胸口闷，喘不上气"
    start = engine.start("zh")
    before = copy.deepcopy(start.state)
    result = engine.turn(start.state, raw)
    assert start.state == before  # the caller's state is not changed
    dumped = json.dumps(result.state, ensure_ascii=False) + json.dumps(result.reply, ensure_ascii=False)
    assert "13912345678" not in dumped and "[PHONE]" in json.dumps(result.state, ensure_ascii=False)


# ---------------------------------------------------------------------------------------------- FHIR
@pytest.mark.parametrize(("language", "messages"), [
    ("en", ["I keep getting headaches", "yes", "no", "not sure", "yes"]),
    ("zh", ["胸口疼", "是的"]),
    ("en", ["Itchy red rash on my elbows and my skin is really dry"]),
])
def test_the_questionnaire_response_is_a_valid_fhir_r4_resource(language, messages):
    engine = TriageEngine(None)
    result = engine.start(language)
    for message in messages:
        if result.reply["status"] != "asking":
            break
        result = engine.turn(result.state, message)
    assert result.reply["status"] in ("done", "escalated")
    resource = result.reply["result"]["questionnaire_response"]
    parsed = QuestionnaireResponse.model_validate(resource)
    assert parsed.status == "completed"
    items = {item["linkId"]: item for item in resource["item"]}
    department = items["department"]["answer"][0]["valueCoding"]
    assert department["system"] == DEPARTMENT_SYSTEM
    assert department["code"] == result.reply["result"]["department"]["code"]
    for symptom in result.reply["result"]["symptoms"]:
        answer = items[f"symptom.{symptom['id']}"]["answer"][0]
        assert answer["valueBoolean"] is symptom["present"]
        coding = answer["item"][0]["answer"][0]["valueCoding"]
        assert coding == {"system": ICD10_WHO, "code": symptom["icd10"],
                          "display": load_knowledge().symptoms[symptom["id"]].term_en}
    for asked in result.state["asked"]:
        assert f"symptom.{asked}" in items


# ---------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(("text", "reason"), [
    ("", "empty_message"),
    ("   \n\t", "empty_message"),
    ("x" * 2001, "message_too_long"),
    (None, "invalid_message"),
    (42, "invalid_message"),
])
def test_bad_messages_are_refused_with_a_reason_and_no_echo(text, reason):
    engine = TriageEngine(None)
    with pytest.raises(ScenarioInputError) as caught:
        engine.turn(engine.start("en").state, text)
    assert caught.value.reason == reason and caught.value.status == 422
    assert "xxxx" not in caught.value.detail


def test_a_message_of_exactly_the_limit_is_accepted():
    engine = TriageEngine(None)
    assert engine.turn(engine.start("en").state, "I have a cough. " + "x" * 1984).reply["status"] in ("asking", "done")


def test_bad_language_and_state_are_refused():
    engine = TriageEngine(None)
    with pytest.raises(ScenarioInputError) as caught:
        engine.start("fr")
    assert caught.value.reason == "unsupported_language"
    state = engine.start("en").state
    for broken in ({}, {**state, "schema": 99}, {**state, "symptoms": {"not_a_symptom": True}},
                   {**state, "turns": "text"}, {**state, "pending": {"kind": "yes_no", "symptom": "made_up"}}, "state"):
        with pytest.raises(ScenarioInputError) as caught:
            engine.turn(broken, "I have a cough")
        assert caught.value.reason == "invalid_state"
    finished = talk(engine, "en", "I want to kill myself")
    with pytest.raises(ScenarioInputError) as caught:
        engine.turn(finished.state, "hello?")
    assert caught.value.reason == "session_closed" and caught.value.status == 409


# ---------------------------------------------------------------------------------------------- scripted dialogues
def test_the_scripted_dialogues_are_well_formed():
    symptoms = set(load_knowledge().symptoms)
    assert len(DIALOGUES) >= 40 and len({d["id"] for d in DIALOGUES}) == len(DIALOGUES)
    assert {d["language"] for d in DIALOGUES} == {"en", "zh"}
    assert {d["department"] for d in DIALOGUES} == {"CARD", "DERM", "ENDO", "GAST", "NEUR", "ORTH", "RESP", "EMER"}
    for dialogue in DIALOGUES:
        assert set(dialogue["has"]) <= symptoms, dialogue["id"]
        assert dialogue["escalate"] == (dialogue["department"] == "EMER")


def run_dialogue(engine: TriageEngine, dialogue: dict) -> dict:
    """The simulated patient: says its opening, then answers yes to what it has and no to the rest."""
    language = dialogue["language"]
    result = engine.start(language)
    pending = list(dialogue["says"])
    for turn in range(20):
        if pending:
            message = pending.pop(0)
        elif result.reply["question"]["kind"] == "open":
            message = NO[language][turn % 4]
        else:
            wanted = result.reply["question"]["symptom"]["id"] in dialogue["has"]
            message = (YES if wanted else NO)[language][turn % 4]
        result = engine.turn(result.state, message)
        if result.reply["status"] != "asking":
            return result.reply["result"]
    raise AssertionError(f"{dialogue['id']} did not finish")


def test_the_graph_alone_sends_the_scripted_dialogues_to_the_right_department_and_escalates_every_red_flag():
    engine = TriageEngine(None)
    outcomes = {d["id"]: run_dialogue(engine, d) for d in DIALOGUES}
    correct = [d["id"] for d in DIALOGUES if outcomes[d["id"]]["department"]["code"] == d["department"]]
    accuracy = len(correct) / len(DIALOGUES)
    assert accuracy >= 0.8, sorted(set(outcomes) - set(correct))
    missed = [d["id"] for d in DIALOGUES if d["escalate"] and not outcomes[d["id"]]["escalated"]]
    assert missed == []
    false_alarms = [d["id"] for d in DIALOGUES if not d["escalate"] and outcomes[d["id"]]["escalated"]]
    assert len(false_alarms) <= 2, false_alarms
