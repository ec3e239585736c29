"""The extractive fallback: a note's fields picked out of a dialogue or dictation by rules, with no model.

Why it exists: the service has to draft notes before a note generator has been trained and promoted, and a
deterministic floor is what a trained generator must beat. It copies sentences, never invents: the patient's
first substantive statement is the chief complaint, the patient's other statements the history; the clinician's
sentences with examination or test cues are findings, with diagnostic cues ("this looks like", "consistent with",
"考虑") the assessment, with a known drug name (``terminology.yaml``) the medications, with plan cues ("next steps",
"follow-up", "复查") the plan. A dictation that already carries note headers (``Assessment: ...``) is read as
written. Speakers are recognised as ``Doctor:``/``Patient:`` (any case, ``Dr``/``Pt``/``D``/``P``),
``[doctor]``/``[patient]`` and ``医生：``/``患者：``/``病人：``; text without speakers is treated as the
clinician's dictation.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from medllm_pipelines.lib.common.structured_note import FIELDS, parse_note
from medllm_pipelines.lib.scenarios.ehr.terminology import Terminology

__all__ = ["EXTRACTOR_VERSION", "extract_note_fields"]

EXTRACTOR_VERSION = "1.0.0"
MAX_ITEMS = 12
MAX_ITEM_CHARS = 300
MAX_DX_WORDS = 8
MAX_DOSE_WORDS = 8  # words kept after a drug's name: dose, route, frequency

_SPEAKER = re.compile(
    r"^\s*(?:\[(?P<bracket>doctor|patient|clinician|provider)\]\s*|"
    r"(?P<label>doctor|dr\.?|physician|clinician|d|patient|pt\.?|p|医生|大夫|患者|病人)\s*[:：]\s*)",
    re.IGNORECASE)
_DOCTOR_LABELS = {"doctor", "dr", "dr.", "physician", "clinician", "provider", "d", "医生", "大夫"}
_SENTENCE_END = re.compile(r"(?<=[.!?。！？])\s+|(?<=[。！？])")
_FILLERS = re.compile(r"\b(?:um+|uh+|er+m?|hmm+|mm-hmm|you know|like i said|i mean)\b\s*,?\s*", re.IGNORECASE)
_ACK = re.compile(r"^(?:(?:hi|hello|hey|good (?:morning|afternoon|evening)|thanks?|thank you|ok(?:ay)?|yes|yeah|yep|"
                  r"no|nope|sure|right|alright|all right|mm-hmm|uh-huh|i see|great|bye|see you|doctor|doc|"
                  r"好|好的|嗯|是|是的|对|谢谢|行|没有|不|大夫|医生)[\s,，.。!！?？]*)+$", re.IGNORECASE)
_QUESTION = re.compile(r"[?？]\s*$")

_FINDING_EN = re.compile(
    r"\b(?:blood pressure|bp|temperature|temp|pulse|heart rate|respiratory rate|oxygen|saturation|spo2|sats|"
    r"exam(?:ination)?|auscultation|palpation|tender(?:ness)?|swelling|straight leg raise|x-?ray|ct|mri|"
    r"ultrasound|ecg|ekg|echo(?:cardiogram)?|labs?|results?|hba1c|a1c|glucose|sugar|rales|crackles|wheez\w*|"
    r"rhonchi|murmur|edema|oedema|rash|reflexes|bmi|weight|jvd|abdomen is|lungs? (?:are|is|sound)|"
    r"heart sounds?|shows?|revealed?)\b", re.IGNORECASE)
_FINDING_ZH = re.compile(r"血压|体温|心率|脉搏|呼吸频率|血氧|查体|听诊|触诊|压痛|肿胀|X线|胸片|CT|核磁|B超|超声|"
                         r"心电图|化验|血常规|糖化|血糖|啰音|杂音|水肿|皮疹|反射|阳性|阴性|显示|提示")
_DIAGNOSIS_EN = re.compile(
    r"(?:this (?:looks|sounds|seems) like|(?:i think|i believe|i suspect)(?: that)? (?:this|it)(?: is|'s)|"
    r"(?:is|are) consistent with|consistent with|suggestive of|(?:the )?diagnosis (?:is|of)|diagnosed with|"
    r"my impression is|impression:|assessment:|most likely)\s+(?:an? |the |some )?(?P<dx>[^.;!?]+)", re.IGNORECASE)
_DIAGNOSIS_ZH = re.compile(r"(?:考虑是?|诊断为?|应该是|可能是|初步诊断|印象|像是)[：:]?\s*(?P<dx>[^。；！？，,]+)")
_DX_TAIL = re.compile(r"\s*(?:,|\band\b (?:we|i)|\bso\b|\bwhich\b|\bbecause\b|\bbut\b|\bgiven\b|\bwe'll\b|"
                      r"\bi'll\b|\bi'd\b|\bthat's why\b|[，,]).*$", re.IGNORECASE)
_PLAN_EN = re.compile(
    r"\b(?:next steps?|plan|follow[- ]?up|refer(?:ral|ring)?|schedule|order(?:ing)?|we'll (?:get|do|check|send|"
    r"repeat|arrange|book)|i'd like (?:to|you to)|come back|return|recheck|repeat|monitor|keep (?:a|an)|"
    r"physiotherapy|physical therapy|diary|education|screening|avoid|test(?:s|ing)?)\b", re.IGNORECASE)
_PLAN_ZH = re.compile(r"下一步|处理|复查|复诊|随访|建议|安排|转诊|住院|手术|检查|避免|忌|日记|理疗|教育")
_PLAN_HEADER = re.compile(r"^(?:next steps?|the plan is|plan|处理|下一步)\s*[:：]\s*", re.IGNORECASE)
_HISTORY_DOCTOR = re.compile(r"\b(?:history of|past medical history|known|on (?:long[- ]term )?treatment for)\b|"
                             r"既往|病史", re.IGNORECASE)


@dataclass(frozen=True)
class _Sentence:
    speaker: str | None  # "doctor", "patient" or None (dictation)
    text: str


def _utterances(text: str) -> Iterator[tuple[str | None, str]]:
    speaker: str | None = None
    for line in text.splitlines():
        if not line.strip():
            continue
        match = _SPEAKER.match(line)
        if match:
            label = (match.group("bracket") or match.group("label") or "").casefold()
            speaker = "doctor" if label in _DOCTOR_LABELS else "patient"
            line = line[match.end():]
        yield speaker, line.strip()


def _clean(sentence: str) -> str:
    """Disfluencies and transcript spacing (``word ,``) removed, trailing punctuation dropped."""
    text = _FILLERS.sub("", sentence)
    text = re.sub(r"\s+([,.;:!?'])", r"\1", text)
    text = re.sub(r"\s+(n't|'s|'re|'ll|'ve|'m|'d)\b", r"\1", text)
    text = re.sub(r"\s+", " ", text).strip(" ,;:-")
    return text.rstrip(" .。!！")[:MAX_ITEM_CHARS]


def _sentences(text: str) -> list[_Sentence]:
    out = []
    for speaker, utterance in _utterances(text):
        for piece in _SENTENCE_END.split(utterance):
            cleaned = _clean(piece)
            if cleaned:
                out.append(_Sentence(speaker, cleaned))
    return out


def _substantive(text: str) -> bool:
    if _ACK.match(text):
        return False
    cjk = len(re.findall(r"[\u3400-\u9fff]", text))
    return cjk >= 3 or len(re.findall(r"[^\W\d_]+", text)) >= 2


def _diagnosis(sentence: str, language: str) -> str | None:
    match = (_DIAGNOSIS_ZH if language == "zh" else _DIAGNOSIS_EN).search(sentence)
    if match is None:
        match = _DIAGNOSIS_EN.search(sentence) if language == "zh" else None
    if match is None:
        return None
    dx = _DX_TAIL.sub("", match.group("dx")).strip(" .。")
    return dx if dx and len(dx) <= 80 and len(dx.split()) <= MAX_DX_WORDS else None


def _mention_words(mention: Any, sentence: str) -> list[str]:
    return sentence[mention.start:mention.end].split(" ")


def _medication_items(sentence: str, terminology: Terminology) -> list[str]:
    """One item per drug: from its name to the next drug's name or the end of the sentence."""
    mentions = terminology.find_drugs(sentence)
    items = []
    for i, mention in enumerate(mentions):
        end = mentions[i + 1].start if i + 1 < len(mentions) else len(sentence)
        item = re.sub(r"(?:\s*(?:,|，|、|;|；|\band\b|\bplus\b|和|及|以及|加))+\s*$", "", sentence[mention.start:end],
                      flags=re.IGNORECASE)
        item = item.strip(" ,，;；.。")
        words = item.split(" ")
        item = " ".join(words[:MAX_DOSE_WORDS + len(_mention_words(mention, sentence))])
        if item:
            items.append(item)
    return items


def _plan_items(sentence: str) -> list[str]:
    header = _PLAN_HEADER.match(sentence)
    if not header:
        return [sentence]
    rest = sentence[header.end():]
    return [p.strip(" .。") for p in re.split(r"\s*(?:[;；,，、]|\band\b)\s*", rest, flags=re.IGNORECASE) if p.strip(" .。")]


def _add(fields: dict[str, list[str]], name: str, items: list[str]) -> None:
    for item in items:
        if item and item not in fields[name] and len(fields[name]) < MAX_ITEMS:
            fields[name].append(item)


def extract_note_fields(text: str, language: str, terminology: Terminology) -> dict[str, tuple[str, ...]]:
    """The outpatient-style fields (``structured_note.FIELDS``) of a dialogue or dictation, by rules."""
    written = parse_note(text, language=language)
    if sum(1 for name in FIELDS if written.items(name)) >= 2:  # a dictation that already has the note's headers
        return {name: written.items(name) for name in FIELDS}
    fields: dict[str, list[str]] = {name: [] for name in FIELDS}
    sentences = _sentences(text)
    has_speakers = any(s.speaker for s in sentences)
    finding_cue = _FINDING_ZH if language == "zh" else _FINDING_EN
    plan_cue = _PLAN_ZH if language == "zh" else _PLAN_EN
    for sentence in sentences:
        body = sentence.text
        clinician = sentence.speaker in (None, "doctor") if has_speakers else True
        if sentence.speaker == "patient" or not has_speakers:
            if not fields["chief_complaint"] and _substantive(body) and not _QUESTION.search(body) and (
                    has_speakers or re.search(r"presents? with|complain\w* of|c/o|主诉|因.+就诊", body, re.I)):
                _add(fields, "chief_complaint", [body])
                continue
            if sentence.speaker == "patient":
                if _substantive(body) or re.match(r"^(?:no|not)\b|^(?:没有|不)", body, re.I):
                    if not _QUESTION.search(body) and not _ACK.match(body):
                        _add(fields, "history", [body])
                continue
        if not clinician or _QUESTION.search(body):
            continue
        drugs = _medication_items(body, terminology)
        dx = _diagnosis(body, language)
        if dx:
            code = terminology.code_diagnosis(dx).code
            _add(fields, "assessment", [f"{dx} ({code})" if code else dx])  # written as the generator writes it
        if drugs:
            _add(fields, "medications", drugs)
        elif _PLAN_HEADER.match(body) or (plan_cue.search(body) and not dx):
            _add(fields, "plan", _plan_items(body))
        elif finding_cue.search(body) and not dx:
            _add(fields, "findings", [body])
        elif _HISTORY_DOCTOR.search(body):
            _add(fields, "history", [body])
    if not fields["chief_complaint"] and not has_speakers:
        first = next((s.text for s in sentences if _substantive(s.text)), None)
        if first:
            fields["chief_complaint"].append(first)
    return {name: tuple(items) for name, items in fields.items()}
