"""Pre-consultation (triage) dialogues and three annotators' department labels.

A dialogue is a patient describing symptoms to an intake assistant; the gold
label is the department the symptoms belong to. The assistant never names the
department, so the label has to be inferred. Some patient turns give the
patient's name or phone number, as they do in real intake chats.

Annotators err independently with fixed probabilities (ann-03 is the noisy
one) and, when wrong, pick uniformly among the other departments, so the
intended agreement has a closed form that the manifest records.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import numpy as np

from medllm_pipelines.lib.synth import catalog
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
ANNOTATION_TOOL = "label-studio 1.13"
GUIDELINE_VERSION = "triage-guideline-v1.2"

# (symptom description, follow-up detail) per department and language.
_SYMPTOMS: dict[str, dict[str, list[tuple[str, str]]]] = {
    ENDOCRINOLOGY: {
        "zh": [("最近总是口渴，喝水特别多，晚上要起来好几次上厕所。", "体重好像也掉了几斤，人没什么力气。"),
               ("这几个月尿多、口干，吃得也比以前多。", "单位体检说我血糖有点高。"),
               ("老是觉得口干舌燥，小便次数明显增多。", "视力最近也有点模糊。")],
        "en": [("I'm thirsty all the time and I have to pee constantly, even at night.",
                "I've also lost a few pounds without trying and I feel tired."),
               ("For a few months I've been drinking a lot of water and urinating a lot.",
                "A work check-up said my blood sugar was high."),
               ("My mouth is always dry and I'm running to the bathroom all day.",
                "My vision has been a bit blurry lately.")],
    },
    CARDIOLOGY: {
        "zh": [("走快了或者爬楼梯的时候胸口闷痛，休息一会儿能缓解。", "疼的时候会往左肩膀那边放射。"),
               ("最近经常心慌，感觉心跳很快很乱。", "有时候还会胸闷气短。"),
               ("胸口像压了块石头一样，活动后更明显。", "以前查过血压偏高。")],
        "en": [("I get a squeezing pain in my chest when I walk fast or climb stairs; it eases with rest.",
                "Sometimes it spreads to my left shoulder."),
               ("My heart keeps racing and feels irregular.", "Now and then I also feel short of breath."),
               ("There's a heavy pressure on my chest when I exert myself.",
                "I was told before that my blood pressure is high.")],
    },
    RESPIRATORY: {
        "zh": [("咳嗽好几天了，有黄痰，还发烧到38度多。", "喉咙也痛，浑身酸。"),
               ("一直咳个不停，晚上咳得更厉害。", "有点喘，痰比较多。"),
               ("发热、咳嗽，感觉呼吸有点费力。", "家里人最近也感冒了。")],
        "en": [("I've had a cough with yellow phlegm for several days and a fever over 38.",
                "My throat hurts and I ache all over."),
               ("I can't stop coughing, especially at night.", "I'm a bit wheezy and bringing up a lot of phlegm."),
               ("Fever and cough, and breathing feels like hard work.", "My family has had colds too.")],
    },
    GASTROENTEROLOGY: {
        "zh": [("胃这里隐隐作痛，吃完饭更明显。", "经常反酸、烧心。"),
               ("这几天拉肚子，一天好几次。", "肚子胀，吃不下东西。"),
               ("上腹部不舒服，老是打嗝。", "有时候半夜被胃痛醒。")],
        "en": [("I have a dull ache in my upper stomach that gets worse after meals.",
                "I get heartburn and acid coming up."),
               ("I've had diarrhoea several times a day for a few days.", "My belly is bloated and I can't eat."),
               ("My upper abdomen feels uncomfortable and I keep burping.",
                "Sometimes stomach pain wakes me at night.")],
    },
    NEUROLOGY: {
        "zh": [("最近头痛得厉害，一侧太阳穴跳着痛。", "看东西的时候眼前有闪光。"),
               ("经常头晕，感觉天旋地转。", "左手有时候发麻。"),
               ("晚上睡不着，白天头昏脑胀。", "记性也变差了。")],
        "en": [("I've had bad throbbing headaches on one side of my head.", "I see flashing lights before they start."),
               ("I keep getting dizzy, like the room is spinning.", "My left hand goes numb sometimes."),
               ("I can't sleep at night and my head feels foggy all day.", "My memory has got worse too.")],
    },
    ORTHOPEDICS: {
        "zh": [("膝盖疼，上下楼梯的时候特别明显。", "早上起来关节有点僵。"),
               ("腰疼了好几周，弯腰都困难。", "坐久了疼得更厉害。"),
               ("前几天扭了脚踝，现在还肿着。", "走路的时候很痛。")],
        "en": [("My knee hurts, especially going up and down stairs.", "It's stiff in the mornings."),
               ("My lower back has hurt for weeks and bending is hard.", "Sitting for long makes it worse."),
               ("I twisted my ankle a few days ago and it's still swollen.", "It hurts to walk.")],
    },
    DERMATOLOGY: {
        "zh": [("身上起了一片片的红疹子，很痒。", "抓了以后更红了。"),
               ("脸上长了很多痘，反反复复。", "用了药膏也没什么用。"),
               ("手上的皮肤脱皮、裂口子。", "碰水就痛。")],
        "en": [("I've got itchy red patches on my body.", "Scratching makes them redder."),
               ("I keep breaking out in acne on my face.", "Creams haven't helped."),
               ("The skin on my hands is peeling and cracking.", "It stings when it gets wet.")],
    },
}


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


def _turns(plan: PatientPlan, department: str, language: str, rng: np.random.Generator) -> list[dict[str, str]]:
    person = plan.registration.person
    name = person.display_name if language == "zh" else person.name_en
    symptom, detail = _SYMPTOMS[department][language][int(rng.integers(3))]
    days = int(rng.integers(2, 30))
    gives_identity = rng.random() < 0.4
    hypertensive = any(d.condition == catalog.HYPERTENSION for d in plan.diagnoses)
    gives_phone = gives_identity and rng.random() < 0.6
    if language == "zh":
        turns = [("assistant", "您好，我是预问诊助手。请问您哪里不舒服？")]
        if gives_identity:
            intro = f"你好，我叫{name}"
            intro += f"，手机号{person.phone}。" if gives_phone else "。"
            turns += [("patient", intro + symptom), ("assistant", "好的，这种情况持续多久了？")]
        else:
            turns += [("patient", symptom), ("assistant", "明白了，这种情况持续多久了？")]
        turns += [
            ("patient", f"大概{days}天了。{detail}"),
            ("assistant", "以前有什么慢性病吗？目前在吃什么药？"),
            ("patient", "有高血压，一直在吃降压药。" if hypertensive else "没什么大病，也没在吃药。"),
            ("assistant", "好的，信息已记录，医生会根据情况为您安排就诊。"),
        ]
        if not gives_identity and rng.random() < 0.3:
            turns.append(("patient", f"好的，有事可以打我电话{person.phone}，我叫{name}。"))
    else:
        turns = [("assistant", "Hello, I'm the intake assistant. What brings you in today?")]
        if gives_identity:
            intro = f"Hi, this is {name}"
            intro += f", my number is {person.phone}. " if gives_phone else ". "
            turns += [("patient", intro + symptom), ("assistant", "Thanks. How long has this been going on?")]
        else:
            turns += [("patient", symptom), ("assistant", "I see. How long has this been going on?")]
        turns += [
            ("patient", f"About {days} days. {detail}"),
            ("assistant", "Do you have any long-term conditions or take any regular medicines?"),
            ("patient", "I have high blood pressure and take pills for it." if hypertensive
             else "Nothing major, no regular medicines."),
            ("assistant", "Thank you, I've noted everything; the doctor will see you shortly."),
        ]
        if not gives_identity and rng.random() < 0.3:
            turns.append(("patient", f"OK. It's {name}, by the way, you can call me on {person.phone}."))
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
    """Dialogues for the plans that have one, and three annotations of each."""
    output = DialogueOutput()
    for plan in plans:
        if not plan.has_dialogue:
            continue
        number = len(output.dialogues) + 1
        dialogue_id = f"dlg-{institution_code}-{number:05d}"
        department = choose_department(plan, rng)
        output.dialogues.append({
            "dialogue_id": dialogue_id,
            "patient_mrn": plan.registration.mrn,
            "language": language,
            "turns": _turns(plan, department, language, rng),
            "department": department,
        })
        output.gold[dialogue_id] = department
        output.annotations.extend(_annotate(dialogue_id, department, number, rng))
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
