"""AI pre-consultation (clause 6.2.1, row A1): a multi-turn dialogue that collects symptoms and recommends a department.

Each turn, in this order:

1. the message is checked (empty, too long) and de-identified before anything reads it; only the
   de-identified text is kept in the session state;
2. symptoms are found (both languages' synonyms, with negation) and a pending yes/no question is read;
3. red flags are checked FIRST, over everything said so far: a fired rule escalates to Emergency whatever
   the model or the graph says;
4. the knowledge graph gives a disease posterior (naive Bayes over the said symptoms) and, summed per
   department, a department distribution; the triage model gives another from the patient's turns;
5. the engine either asks the next question (red-flag screening first, then the symptom whose answer is
   expected to lower the uncertainty about the department most) or finishes.

How the two opinions are combined: a linear opinion pool, ``p = (1 - w) * p_graph + w * p_model`` with
``w = TriageConfig.model_weight``. Linear (not a product of experts) so that neither source can veto the
other: a confidently wrong model cannot push a department the symptoms rule out to zero, nor can the graph's
sharp posterior on one symptom silence the model. Before any symptom is recognised the graph knows nothing
(its distribution is just the priors), so the model's distribution is used alone; but the engine never
finishes on confidence without at least one recognised symptom.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from medllm_pipelines.lib.common.codes import ICD10_WHO
from medllm_pipelines.lib.scenarios.errors import ScenarioInputError
from medllm_pipelines.lib.scenarios.triage.knowledge import (
    ANSWER_NO,
    ANSWER_UNKNOWN,
    ANSWER_YES,
    LANGUAGES,
    KnowledgeGraph,
    Mention,
    load_knowledge,
)

__all__ = [
    "DEPARTMENT_SYSTEM",
    "MAX_MESSAGE_CHARS",
    "QUESTIONNAIRE_URL",
    "RED_FLAG_SYSTEM",
    "Classify",
    "TriageConfig",
    "TriageEngine",
    "TurnResult",
]

Classify = Callable[[Sequence[str]], list[list[tuple[str, float]]]]

MAX_MESSAGE_CHARS = 2000
STATE_SCHEMA = 1
MAX_STATE_TURNS = 64
STATUS_ASKING, STATUS_DONE, STATUS_ESCALATED = "asking", "done", "escalated"
OPEN_QUESTION = "open"
DEPARTMENT_SYSTEM = "urn:medllm:codesystem:triage-department"
RED_FLAG_SYSTEM = "urn:medllm:codesystem:triage-red-flag"
QUESTIONNAIRE_URL = "urn:medllm:questionnaire:triage-pre-consultation"
# A question whose expected entropy reduction is below this (nats) is not worth the patient's time.
MIN_INFORMATION_GAIN = 0.01
# Questions come from the diseases holding at least this share of the leading disease's probability.
RELEVANT_SHARE = 0.02
# Disease-level entropy only breaks ties between questions that separate departments equally well.
DISEASE_GAIN_WEIGHT = 0.05


@dataclass(frozen=True)
class TriageConfig:
    """When to stop asking, how many answers to report and how much the model counts against the graph."""

    confident_at: float = 0.6
    max_questions: int = 4
    top_k: int = 3
    model_weight: float = 0.5
    max_message_chars: int = MAX_MESSAGE_CHARS

    def __post_init__(self) -> None:
        if not 0.0 < self.confident_at <= 1.0:
            raise ValueError("confident_at must lie in (0, 1]")
        if self.max_questions < 0 or self.top_k < 1 or self.max_message_chars < 1:
            raise ValueError("max_questions must be >= 0, top_k and max_message_chars >= 1")
        if not 0.0 <= self.model_weight <= 1.0:
            raise ValueError("model_weight must lie in [0, 1]")


@dataclass
class TurnResult:
    """The new session state (store it, send it back next turn) and the reply for the patient."""

    state: dict[str, Any]
    reply: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return {"state": self.state, "reply": self.reply}


@dataclass(frozen=True)
class _Assessment:
    """The graph's and the model's opinions after a turn, and their combination."""

    posterior: list[float]  # aligned with KnowledgeGraph.diseases
    graph_departments: dict[str, float]
    model_departments: dict[str, float] | None
    departments: dict[str, float]  # the combined distribution
    evidence: bool  # at least one present symptom
    model_weight: float = 0.0

    @property
    def best(self) -> tuple[str, float]:
        code = max(self.departments, key=lambda c: (self.departments[c], c))
        return code, self.departments[code]


def _entropy(probabilities: Sequence[float]) -> float:
    return -sum(p * math.log(p) for p in probabilities if p > 0.0)


def _normalise_logs(logs: Sequence[float]) -> list[float]:
    top = max(logs)
    weights = [math.exp(v - top) for v in logs]
    total = sum(weights)
    return [w / total for w in weights]


class TriageEngine:
    """The pre-consultation dialogue over a loaded model (or none) and the triage knowledge.

    ``classify`` is the champion triage model's ``TextClassifierPredictor.top_k`` (pass all classes, e.g.
    ``functools.partial(predictor.top_k, k=len(predictor.classes))``; missing classes share the rest of the
    probability): it reads the de-identified patient turns, one per line, as the model was trained
    (lib/curate/datasets_text.py ``patient_text``). None: the knowledge graph alone decides.
    ``deidentify`` is applied to every message before anything else reads it.
    """

    def __init__(self, classify: Classify | None = None, *, knowledge: KnowledgeGraph | None = None,
                 config: TriageConfig | None = None, model: Mapping[str, Any] | None = None,
                 deidentify: Callable[[str], str] | None = None) -> None:
        self.classify = classify
        self.knowledge = knowledge or load_knowledge()
        self.config = config or TriageConfig()
        self.deidentify = deidentify
        self.model = None if classify is None else {
            "name": str((model or {}).get("name", "unknown")), "version": str((model or {}).get("version", "unknown"))}
        kg = self.knowledge
        self._departments = kg.clinical_departments
        self._disease_department = [self._departments.index(d.department) for d in kg.diseases]
        self._linked = {s for d in kg.diseases for s in d.symptoms}

    # ------------------------------------------------------------------ public API
    def start(self, language: str = "en") -> TurnResult:
        """A new session: the greeting and the first (open) question, in ``language`` ("en" or "zh")."""
        if language not in LANGUAGES:
            raise ScenarioInputError("unsupported_language", f"language must be one of {', '.join(LANGUAGES)}")
        state = {
            "schema": STATE_SCHEMA,
            "language": language,
            "status": STATUS_ASKING,
            "turns": [],
            "symptoms": {},
            "asked": [],
            "pending": {"kind": OPEN_QUESTION},
            "questions_asked": 0,
            "knowledge_version": self.knowledge.version,
        }
        question = self._open_question(language, again=False)
        message = f"{self.knowledge.message('greeting', language)} {question['text']}"
        return TurnResult(state, {"status": STATUS_ASKING, "message": message, "question": question, "result": None})

    def turn(self, state: Mapping[str, Any], text: str) -> TurnResult:
        """One patient message: the updated state and the next question, the recommendation or the escalation."""
        text = self._check_message(text)
        current = self._read_state(state)
        if self.deidentify is not None:
            text = self.deidentify(text)
        kg = self.knowledge
        language = current["language"]
        current["turns"].append(text.strip())
        mentions = kg.matcher.find(text)
        pending = current.get("pending") or {}
        recognised = self._apply_mentions(current, mentions)
        if pending.get("kind") == "yes_no":
            recognised |= self._apply_answer(current, pending["symptom"], text, mentions)
        current["pending"] = None
        symptoms: dict[str, bool] = current["symptoms"]
        present = {s for s, v in symptoms.items() if v}

        fired = kg.fired_red_flags(present)
        assessment = self._assess(current)
        if fired:
            current["status"] = STATUS_ESCALATED
            result = self._result(current, assessment, fired)
            return TurnResult(current, {"status": STATUS_ESCALATED, "message": result["advice"], "question": None,
                                        "result": result})

        next_symptom = self._screening_question(current, present)
        if next_symptom is None and not present:
            if current["questions_asked"] < self.config.max_questions:
                current["questions_asked"] += 1
                current["pending"] = {"kind": OPEN_QUESTION}
                question = self._open_question(language, again=not recognised)
                return TurnResult(current, {"status": STATUS_ASKING, "message": question["text"], "question": question,
                                            "result": None})
        elif next_symptom is None:
            _, confidence = assessment.best
            if confidence < self.config.confident_at and current["questions_asked"] < self.config.max_questions:
                next_symptom = self._most_informative(current, assessment)
        if next_symptom is not None and current["questions_asked"] < self.config.max_questions:
            current["questions_asked"] += 1
            current["asked"].append(next_symptom)
            current["pending"] = {"kind": "yes_no", "symptom": next_symptom}
            question = self._symptom_question(next_symptom, language)
            return TurnResult(current, {"status": STATUS_ASKING, "message": question["text"], "question": question,
                                        "result": None})

        current["status"] = STATUS_DONE
        result = self._result(current, assessment, [])
        return TurnResult(current, {"status": STATUS_DONE, "message": result["advice"], "question": None,
                                    "result": result})

    # ------------------------------------------------------------------ input and state
    def _check_message(self, text: Any) -> str:
        if not isinstance(text, str):
            raise ScenarioInputError("invalid_message", "the message must be text")
        if not text.strip():
            raise ScenarioInputError("empty_message", "the message is empty")
        if len(text) > self.config.max_message_chars:
            raise ScenarioInputError("message_too_long",
                                     f"the message is longer than {self.config.max_message_chars} characters")
        return text

    def _read_state(self, state: Any) -> dict[str, Any]:
        """A deep copy of a well-formed state (the caller's object is never changed)."""
        kg = self.knowledge
        try:
            ok = (isinstance(state, Mapping) and state.get("schema") == STATE_SCHEMA
                  and state.get("language") in LANGUAGES
                  and state.get("status") in (STATUS_ASKING, STATUS_DONE, STATUS_ESCALATED)
                  and isinstance(state.get("turns"), list) and len(state["turns"]) < MAX_STATE_TURNS
                  and all(isinstance(t, str) for t in state["turns"])
                  and isinstance(state.get("symptoms"), Mapping)
                  and all(k in kg.symptoms and isinstance(v, bool) for k, v in state["symptoms"].items())
                  and isinstance(state.get("asked"), list) and all(a in kg.symptoms for a in state["asked"])
                  and isinstance(state.get("questions_asked"), int) and state["questions_asked"] >= 0)
            pending = state.get("pending") if ok else None
            if ok and pending is not None:
                ok = isinstance(pending, Mapping) and (
                    pending.get("kind") == OPEN_QUESTION
                    or (pending.get("kind") == "yes_no" and pending.get("symptom") in kg.symptoms))
        except (TypeError, AttributeError):
            ok = False
        if not ok:
            raise ScenarioInputError("invalid_state", "the session state is malformed or from another version")
        if state["status"] != STATUS_ASKING:
            raise ScenarioInputError("session_closed", "the pre-consultation has already finished", status=409)
        current = copy.deepcopy(dict(state))
        current["symptoms"] = dict(current["symptoms"])
        return current

    def _set(self, state: dict[str, Any], symptom_id: str, present: bool) -> None:
        symptoms = state["symptoms"]
        symptoms.pop(symptom_id, None)  # re-insert: the latest statement wins and orders the report
        symptoms[symptom_id] = present
        if present:
            for implied in self.knowledge.symptoms[symptom_id].implies:
                if implied not in symptoms or not symptoms[implied]:
                    symptoms.pop(implied, None)
                    symptoms[implied] = True

    def _apply_mentions(self, state: dict[str, Any], mentions: Sequence[Mention]) -> bool:
        for mention in mentions:
            self._set(state, mention.symptom_id, mention.present)
        return bool(mentions)

    def _apply_answer(self, state: dict[str, Any], asked: str, text: str, mentions: Sequence[Mention]) -> bool:
        """A yes/no reply to the asked symptom; an explicit mention of that symptom wins over it.

        "No" does not answer the question when it negates another symptom it names ("no cough" to a
        question about fever).
        """
        if any(m.symptom_id == asked for m in mentions):
            return True
        answer = self.knowledge.matcher.answer(text)
        if answer in (None, ANSWER_UNKNOWN):
            return answer == ANSWER_UNKNOWN
        first_clause_end = self.knowledge.matcher.first_clause_end(text)
        if answer == ANSWER_NO and any(not m.present and m.start < first_clause_end for m in mentions):
            return True
        self._set(state, asked, answer == ANSWER_YES)
        return True

    # ------------------------------------------------------------------ scoring
    def _graph_departments(self, posterior: Sequence[float]) -> list[float]:
        out = [0.0] * len(self._departments)
        for p, index in zip(posterior, self._disease_department, strict=True):
            out[index] += p
        return out

    def _model_departments(self, turns: Sequence[str]) -> dict[str, float] | None:
        if self.classify is None:
            return None
        text = "\n".join(t.strip() for t in turns if t and t.strip())
        if not text:
            return None
        ranked = self.classify([text])[0]
        probabilities: dict[str, float] = {}
        for model_class, probability in ranked:
            code = self.knowledge.department_for_model_class(str(model_class))
            p = float(probability)
            if code is not None and code in self._departments and math.isfinite(p) and p > 0:
                probabilities[code] = probabilities.get(code, 0.0) + min(p, 1.0)
        total = sum(probabilities.values())
        if total <= 0:
            return None
        missing = [c for c in self._departments if c not in probabilities]
        rest = max(0.0, 1.0 - total)
        for code in missing:
            probabilities[code] = rest / len(missing)
        total = sum(probabilities.values())
        return {c: probabilities[c] / total for c in self._departments}

    def _combine(self, graph: Sequence[float], model: Mapping[str, float] | None, weight: float) -> list[float]:
        if model is None or weight == 0.0:
            return list(graph)
        return [(1.0 - weight) * g + weight * model[c] for g, c in zip(graph, self._departments, strict=True)]

    def _assess(self, state: Mapping[str, Any]) -> _Assessment:
        kg = self.knowledge
        symptoms: Mapping[str, bool] = state["symptoms"]
        present = [s for s, v in symptoms.items() if v]
        absent = [s for s, v in symptoms.items() if not v]
        posterior = _normalise_logs(kg.disease_log_likelihoods(present, absent))
        graph = self._graph_departments(posterior)
        model = self._model_departments(state["turns"])
        evidence = bool(present)
        weight = 0.0 if model is None else (self.config.model_weight if evidence else 1.0)
        combined = self._combine(graph, model, weight)
        return _Assessment(posterior, dict(zip(self._departments, graph, strict=True)), model,
                           dict(zip(self._departments, combined, strict=True)), evidence, weight)

    # ------------------------------------------------------------------ questions
    def _screening_question(self, state: Mapping[str, Any], present: set[str]) -> str | None:
        """A red-flag screening symptom to ask before anything else (chest pain: breathless? sweating?)."""
        known = set(state["symptoms"]) | set(state["asked"])
        for rule in self.knowledge.red_flags:
            if not rule.screen_with or not all(s in present for s in rule.all_of):
                continue
            if any(state["symptoms"].get(s) for s in rule.any_of):
                continue
            for symptom_id in rule.screen_with:
                if symptom_id not in known:
                    return symptom_id
        return None

    def _most_informative(self, state: Mapping[str, Any], assessment: _Assessment) -> str | None:
        """The unasked symptom whose yes/no answer most lowers the expected entropy of the department."""
        kg = self.knowledge
        posterior = assessment.posterior
        known = set(state["symptoms"]) | set(state["asked"])
        order = sorted(range(len(posterior)), key=lambda i: -posterior[i])
        candidates: list[str] = []
        mass = 0.0
        for i in order[:12]:
            if posterior[i] < RELEVANT_SHARE * posterior[order[0]]:
                break
            candidates.extend(s for s in kg.diseases[i].symptoms if s not in known and s not in candidates)
            mass += posterior[i]
            if mass >= 0.99:
                break
        # Called only once a symptom is present, so the pool weight is the configured one.
        weight = assessment.model_weight
        current_departments = self._combine(self._graph_departments(posterior), assessment.model_departments, weight)
        h_department, h_disease = _entropy(current_departments), _entropy(posterior)
        leak = kg.leak_probability
        best, best_gain = None, MIN_INFORMATION_GAIN
        for symptom_id in candidates:
            likelihood = [d.symptoms.get(symptom_id, leak) for d in kg.diseases]
            joint_yes = [p * q for p, q in zip(posterior, likelihood, strict=True)]
            p_yes = sum(joint_yes)
            if not 0.0 < p_yes < 1.0:
                continue
            post_yes = [j / p_yes for j in joint_yes]
            post_no = [(p - j) / (1.0 - p_yes) for p, j in zip(posterior, joint_yes, strict=True)]
            expected_department = (p_yes * _entropy(self._combine(self._graph_departments(post_yes),
                                                                   assessment.model_departments, weight))
                                   + (1.0 - p_yes) * _entropy(self._combine(self._graph_departments(post_no),
                                                                            assessment.model_departments, weight)))
            expected_disease = p_yes * _entropy(post_yes) + (1.0 - p_yes) * _entropy(post_no)
            gain = (h_department - expected_department) + DISEASE_GAIN_WEIGHT * (h_disease - expected_disease)
            if gain > best_gain:
                best, best_gain = symptom_id, gain
        return best

    def _open_question(self, language: str, *, again: bool) -> dict[str, Any]:
        key = "open_question_again" if again else "open_question"
        return {"id": OPEN_QUESTION, "kind": "open", "symptom": None, "text": self.knowledge.message(key, language)}

    def _symptom_question(self, symptom_id: str, language: str) -> dict[str, Any]:
        symptom = self.knowledge.symptoms[symptom_id]
        return {"id": f"symptom.{symptom_id}", "kind": "yes_no",
                "symptom": {"id": symptom_id, "term": symptom.term(language), "icd10": symptom.icd10},
                "text": symptom.question(language)}

    # ------------------------------------------------------------------ results
    def _result(self, state: Mapping[str, Any], assessment: _Assessment, fired: Sequence[Any]) -> dict[str, Any]:
        kg = self.knowledge
        language = state["language"]
        escalated = bool(fired)
        ranked = sorted(assessment.departments.items(), key=lambda kv: (-kv[1], kv[0]))
        if escalated:
            department, confidence = kg.departments[kg.emergency_code], 1.0
            red_flags = [{"id": r.id, "description": r.description(language)} for r in fired]
            lead = kg.message("escalated", language).format(
                red_flags=("；" if language == "zh" else "; ").join(r["description"] for r in red_flags))
            advice = " ".join([lead, *dict.fromkeys(r.advice(language) for r in fired), department.advice(language)])
        else:
            code, confidence = ranked[0]
            department, red_flags = kg.departments[code], []
            parts = [kg.message("done", language).format(department=department.name(language)),
                     department.advice(language)]
            if confidence < self.config.confident_at:
                parts.append(kg.message("low_confidence", language))
            advice = " ".join([*parts, kg.message("disclaimer", language)])
        symptoms = [{"id": s, "term": kg.symptoms[s].term(language), "icd10": kg.symptoms[s].icd10, "present": v}
                    for s, v in state["symptoms"].items()]
        result = {
            "department": department.as_dict(),
            "confidence": round(float(confidence), 4),
            "escalated": escalated,
            "red_flags": red_flags,
            "symptoms": symptoms,
            "candidate_diseases": self._candidates(assessment, state["symptoms"]),
            "departments": [{"code": c, "probability": round(p, 4)} for c, p in ranked[: self.config.top_k]],
            "advice": advice,
            "model": dict(self.model) if self.model is not None else None,
            "knowledge_version": kg.version,
            "language": language,
        }
        result["questionnaire_response"] = self._questionnaire_response(state, department, confidence, fired)
        return result

    def _candidates(self, assessment: _Assessment, symptoms: Mapping[str, bool]) -> list[dict[str, Any]]:
        """Diseases linked to a present symptom, scored P(department) (combined) x P(disease | department) (graph)."""
        kg = self.knowledge
        present = {s for s, v in symptoms.items() if v}
        scored = []
        for disease, p in zip(kg.diseases, assessment.posterior, strict=True):
            if not present & set(disease.symptoms):
                continue
            department_mass = assessment.graph_departments[disease.department]
            within = p / department_mass if department_mass else 0.0
            scored.append((assessment.departments[disease.department] * within, disease))
        scored.sort(key=lambda sd: (-sd[0], sd[1].id))
        return [{"id": d.id, "name_en": d.name_en, "name_zh": d.name_zh, "icd10": d.icd10, "score": round(s, 4)}
                for s, d in scored[: self.config.top_k]]

    def _questionnaire_response(self, state: Mapping[str, Any], department: Any, confidence: float,
                                fired: Sequence[Any]) -> dict[str, Any]:
        """FHIR R4 QuestionnaireResponse: every symptom said, asked or answered, and the recommendation."""
        kg = self.knowledge
        language = state["language"]
        items: list[dict[str, Any]] = []
        listed = list(state["symptoms"]) + [s for s in state["asked"] if s not in state["symptoms"]]
        for symptom_id in listed:
            symptom = kg.symptoms[symptom_id]
            item: dict[str, Any] = {
                "linkId": f"symptom.{symptom_id}",
                "text": symptom.question(language) if symptom_id in state["asked"] else symptom.term(language),
            }
            if symptom_id in state["symptoms"]:
                item["answer"] = [{
                    "valueBoolean": state["symptoms"][symptom_id],
                    "item": [{"linkId": f"symptom.{symptom_id}.code", "text": symptom.term_en,
                              "answer": [{"valueCoding": {"system": ICD10_WHO, "code": symptom.icd10,
                                                          "display": symptom.term_en}}]}],
                }]
            items.append(item)
        if fired:
            items.append({"linkId": "red-flags", "text": "Red flags" if language == "en" else "危险信号",
                          "answer": [{"valueCoding": {"system": RED_FLAG_SYSTEM, "code": r.id,
                                                      "display": r.description_en}} for r in fired]})
        items.append({"linkId": "department", "text": "Recommended department" if language == "en" else "推荐科室",
                      "answer": [{"valueCoding": {"system": DEPARTMENT_SYSTEM, "code": department.code,
                                                  "display": department.name_en}}]})
        items.append({"linkId": "confidence", "text": "Confidence" if language == "en" else "置信度",
                      "answer": [{"valueDecimal": round(float(confidence), 4)}]})
        return {
            "resourceType": "QuestionnaireResponse",
            "language": language,
            "questionnaire": f"{QUESTIONNAIRE_URL}|{kg.versions['knowledge_graph']}",
            "status": "completed",
            "item": items,
        }

