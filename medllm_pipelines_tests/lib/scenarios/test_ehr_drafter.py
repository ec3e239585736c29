"""Scenario A2: notes drafted from dialogues by a real (tiny) note generator, a scripted one and the extractive
fallback; mapped onto the three note kinds, terminology-normalised, valid FHIR, screened for identifiers, edited
and signed."""

from __future__ import annotations

import datetime as dt

import pytest
from fhir.resources.R4B.composition import Composition

from medllm_pipelines.lib.common.structured_note import render_note
from medllm_pipelines.lib.scenarios.ehr import KINDS, NOTE_KINDS, NoteDrafter, load_terminology
from medllm_pipelines.lib.scenarios.errors import ScenarioInputError
from medllm_pipelines.lib.security.leak_scan import IdentifierMatcher
from medllm_pipelines.lib.synth.consultations import KINDS as VISIT_KINDS
from medllm_pipelines.lib.synth.consultations import build_consultations
from medllm_pipelines.lib.synth.determinism import stream
from medllm_pipelines.lib.train.generative.note_predictor import NoteGeneratorPredictor, save_note_generator
from medllm_pipelines.lib.train.generative.notes import NoteGeneratorConfig, encode, train_note_generator

PAIRS = build_consultations(96, stream(5, "ehr-scenario-test"), kinds=VISIT_KINDS)
SCRIPTED_NOTE = ("Chief complaint: polyuria for 3 months\nHistory: thirst; no weight loss\n"
                 "Findings: fasting glucose 9.8 mmol/L; BP 142/88 mmHg\nAssessment: Type 2 diabetes mellitus (E11.9); "
                 "essential hypertension\nMedications: 二甲双胍 500 mg twice daily; Lipitor 20 mg at night\n"
                 "Plan: repeat HbA1c in 3 months")


def CLOCK() -> dt.datetime:  # noqa: N802  (a constant clock)
    return dt.datetime(2026, 3, 1, 9, 30, tzinfo=dt.UTC)


def scripted(note_text: str):
    def generate(text: str, language: str) -> str:
        assert text and language in ("en", "zh")
        return note_text
    return generate


@pytest.fixture(scope="module")
def drafter() -> NoteDrafter:
    return NoteDrafter(scripted(SCRIPTED_NOTE), model={"name": "scripted", "version": "1"}, clock=CLOCK)


@pytest.fixture(scope="module")
def fallback() -> NoteDrafter:
    return NoteDrafter(None, clock=CLOCK)


@pytest.fixture(scope="module")
def tiny_generator(tmp_path_factory: pytest.TempPathFactory) -> NoteGeneratorPredictor:
    """A real generator, trained for 150 steps on 80 synthetic pairs (~3 s) and loaded back from its folder."""
    rows = [(p.dialogue_text(), p.language, p.note) for p in PAIRS[:84]]
    config = NoteGeneratorConfig(n_layer=1, n_head=2, n_embd=48, block_size=384, instruction_steps=150, batch_size=8,
                                 lr=5e-3, warmup_steps=10, max_new_tokens=120, seed=3, cpu_threads=2)
    generator = train_note_generator(rows[:80], rows[80:], config)
    folder = save_note_generator(generator, tmp_path_factory.mktemp("notes") / "model", spec_id="note_generator")
    return NoteGeneratorPredictor.load(folder)


def test_a_real_generator_drafts_a_valid_note_and_its_tokens_are_counted(tiny_generator) -> None:
    drafter = NoteDrafter(tiny_generator.generate, model={"name": "note_generator", "version": "test"}, clock=CLOCK)
    pair = PAIRS[90]
    note = drafter.draft(pair.dialogue_text(), language=pair.language, patient_ref="pseudo-7f3a")
    written = tiny_generator.generate(pair.dialogue_text(), pair.language)
    assert note["generated_tokens"] == len(encode(tiny_generator.tokenizer, written)) > 0
    assert sum(1 for items in note["fields"].values() if items) >= 3  # it learned the layout
    composition = Composition.model_validate(note["composition"])
    assert composition.status == "preliminary" and composition.subject.reference == "Patient/pseudo-7f3a"
    assert note["model"]["name"] == "note_generator" and note["leak_scan"] == {"passed": True, "hits": 0}


@pytest.mark.parametrize(("kind", "loinc"), [("outpatient", "11488-4"), ("progress", "11506-3"),
                                             ("operation", "11504-8")])
def test_each_kind_has_its_type_sections_and_mapped_fields(drafter: NoteDrafter, kind: str, loinc: str) -> None:
    note = drafter.draft("Doctor: What brings you in?\nPatient: I pass urine all the time.", kind=kind)
    composition = Composition.model_validate(note["composition"])
    assert composition.type.coding[0].code == loinc and composition.date.isoformat().startswith("2026-03-01T09:30")
    assert [s.title for s in composition.section] == [KINDS[kind].headers["en"][f] for f in KINDS[kind].fields]
    empty = [s for s in composition.section if s.emptyReason is not None]
    assert all(s.text is None for s in empty) and len(empty) == sum(1 for v in note["fields"].values() if not v)
    fields = note["fields"]
    if kind == "outpatient":
        assert fields["chief_complaint"] == ["polyuria for 3 months"]
    elif kind == "progress":
        assert fields["subjective"] == ["polyuria for 3 months", "thirst", "no weight loss"]
        assert fields["objective"] == ["fasting glucose 9.8 mmol/L", "BP 142/88 mmHg"]
    else:  # the generator cannot know what the surgeon did: those fields are left for the clinician
        assert fields["preoperative_diagnosis"][0].startswith("Type 2 diabetes mellitus")
        assert fields["procedure"] == fields["complications"] == fields["estimated_blood_loss"] == []
        assert "Pre-operative diagnosis: Type 2 diabetes" in note["text"]


def test_diagnoses_are_coded_and_drugs_normalised(drafter: NoteDrafter) -> None:
    note = drafter.draft("Doctor: Your sugar is high.")
    coded = {t["text"]: (t["code"], t["match"]) for t in note["terminology"] if t["system"] == "ICD-10"}
    assert coded == {"Type 2 diabetes mellitus (E11.9)": ("E11.9", "explicit"),
                     "essential hypertension": ("I10", "synonym")}
    drugs = {t["normalised"]: t["atc"] for t in note["terminology"] if t["system"] == "drug"}
    assert drugs == {"metformin": "A10BA02", "atorvastatin": "C10AA05"}  # 二甲双胍 and the brand Lipitor
    assessment = next(s for s in note["composition"]["section"] if s["title"] == "Assessment")
    assert "essential hypertension [ICD-10 I10]" in assessment["text"]["div"]
    assert note["model"]["terminology_version"] == load_terminology().version


@pytest.mark.parametrize(("wording", "code"), [
    ("Acute bronchitis", "J20.9"), ("心绞痛", "I20.9"), ("2型糖尿病", "E11.9"), ("possible pneumonia", "J18.9"),
    ("Gastro-esophageal reflux disease without esophagitis", "K21.9"), ("Otitis media", "H66.9"),
    ("Atrial fibrilation", "I48"), ("E11.65 uncontrolled", "E11.6"), ("a feeling of doom", None),
])
def test_a_diagnosis_wording_maps_to_its_who_code(wording: str, code: str | None) -> None:
    assert load_terminology().code_diagnosis(wording).code == code


@pytest.mark.parametrize(("text", "generics"), [
    ("continue Lasix 40 mg daily and lisinopril 20 mg", ["furosemide", "lisinopril"]),
    ("格华止 0.5g 每日三次，拜阿司匹灵 100mg", ["metformin", "aspirin"]),
    ("insulin glargine 10 units at night", ["insulin glargine"]),
    ("acetaminophen as needed; albuterol inhaler", ["paracetamol", "salbutamol"]),
    ("no regular medication; aspiring to exercise", []),  # "aspiring" is not aspirin
])
def test_drug_names_brands_and_chinese_names_normalise_to_the_generic(text: str, generics: list[str]) -> None:
    assert [m.generic for m in load_terminology().find_drugs(text)] == generics


def test_the_fallback_drafts_from_dialogues_without_a_model(fallback: NoteDrafter) -> None:
    en = next(p for p in PAIRS if p.language == "en" and p.kind == "outpatient_consultation")
    zh = next(p for p in PAIRS if p.language == "zh" and p.kind == "outpatient_consultation")
    for pair in (en, zh):
        note = fallback.draft(pair.dialogue_text(), language=pair.language)
        gold_dx = pair.note.items("assessment")[0].casefold()  # "migraine (g43.9)": coded as the generator writes
        assert [a.casefold() for a in note["fields"]["assessment"]] == [gold_dx]
        gold_drugs = {m.generic for item in pair.note.items("medications") for m in load_terminology().find_drugs(item)}
        assert {t["normalised"] for t in note["terminology"] if t["system"] == "drug"} >= gold_drugs
        assert note["fields"]["chief_complaint"] and note["generated_tokens"] == 0
        assert note["model"]["name"] == "extractive-fallback"
        Composition.model_validate(note["composition"])
    aci_style = ("[doctor] hi , how are you ?\n[patient] i've had a cough and a fever for five days .\n"
                 "[doctor] your temperature is 38.4 and i hear crackles at the right base .\n"
                 "[doctor] this looks like community acquired pneumonia . i'm going to start you on "
                 "amoxicillin 1 g three times a day .\n[doctor] let's get a chest x-ray and follow up in one week .")
    note = fallback.draft(aci_style)
    assert note["fields"]["chief_complaint"] == ["i've had a cough and a fever for five days"]
    assert note["fields"]["medications"] == ["amoxicillin 1 g three times a day"]
    assert [t["code"] for t in note["terminology"] if t["system"] == "ICD-10"] == ["J18.9"]
    assert any("chest x-ray" in item for item in note["fields"]["plan"])
    assert any("crackles" in item for item in note["fields"]["findings"])


def test_a_draft_with_a_known_identifier_is_withheld() -> None:
    matcher = IdentifierMatcher({"name_en": {"Quentin Marlowe"}, "mrn": {"MRN0048213"}})
    leaky = NoteDrafter(scripted(SCRIPTED_NOTE.replace("thirst", "Quentin Marlowe reports thirst")),
                        leak_check=lambda text: list(matcher.count(text).elements()))
    with pytest.raises(ScenarioInputError) as withheld:
        leaky.draft("Doctor: Hello Mr Marlowe.")
    assert (withheld.value.reason, withheld.value.status) == ("draft_leaks_identifier", 422)
    assert "Marlowe" not in str(withheld.value) and "Quentin" not in withheld.value.detail
    clean = NoteDrafter(scripted(SCRIPTED_NOTE), leak_check=lambda text: list(matcher.count(text).elements()))
    assert clean.draft("Doctor: Hello.")["leak_scan"]["passed"] is True


def test_the_default_check_blocks_phone_and_id_numbers_but_passes_clinical_notes(fallback: NoteDrafter) -> None:
    for planted in ("Plan: call back on mobile 13912345678", "History: 身份证号 110101199003074514"):
        with pytest.raises(ScenarioInputError, match="draft_leaks_identifier"):
            NoteDrafter(scripted(SCRIPTED_NOTE + "\n" + planted)).draft("Doctor: Hi.")
    scripted_gold = NoteDrafter(None)
    for pair in PAIRS[:40]:  # the gold notes: doses, blood pressures, dates of follow-up, lab values
        note = NoteDrafter(scripted(render_note(pair.note))).draft(pair.dialogue_text(), language=pair.language)
        assert note["leak_scan"]["passed"]
        assert scripted_gold.draft(pair.dialogue_text(), language=pair.language)["leak_scan"]["passed"]


def test_edit_then_sign_makes_a_final_attested_note(drafter: NoteDrafter) -> None:
    note = drafter.draft("Doctor: Your sugar is high.", patient_ref="pseudo-1")
    edited = drafter.edit(note, {"plan": ["repeat HbA1c in 3 months", "dietitian referral"], "findings": "BMI 31"})
    assert edited["fields"]["plan"][-1] == "dietitian referral" and edited["fields"]["findings"] == ["BMI 31"]
    assert "Plan: repeat HbA1c in 3 months; dietitian referral" in edited["text"] and edited["edited"] is True
    assert note["fields"]["findings"] != edited["fields"]["findings"]  # the original is not mutated
    signed = drafter.sign(edited, author="dr.chen", signed_at="2026-03-01T10:15:00+08:00")
    composition = Composition.model_validate(signed["composition"])
    assert composition.status == "final" and signed["status"] == "final"
    assert composition.attester[0].mode == "legal" and composition.attester[0].party.display == "dr.chen"
    assert signed["signed_at"] == "2026-03-01T02:15:00Z" and composition.author[0].display == "dr.chen"
    for change in (lambda: drafter.edit(signed, {"plan": ["nothing"]}),
                   lambda: drafter.sign(signed, author="dr.chen", signed_at="2026-03-02T00:00:00Z")):
        with pytest.raises(ScenarioInputError) as refused:
            change()
        assert (refused.value.reason, refused.value.status) == ("note_signed", 409)


def test_a_tampered_composition_is_rebuilt_from_the_fields(drafter: NoteDrafter) -> None:
    note = drafter.draft("Doctor: Your sugar is high.")
    forged = {**note, "composition": {"resourceType": "Composition", "status": "final"}}
    edited = drafter.edit(forged, {"findings": ["BMI 31"]})
    assert edited["composition"]["status"] == "preliminary" and len(edited["composition"]["section"]) == 6


@pytest.mark.parametrize(("call", "reason"), [
    (lambda d: d.draft(""), "empty_text"),
    (lambda d: d.draft("   \n"), "empty_text"),
    (lambda d: d.draft("x" * 20_001), "text_too_long"),
    (lambda d: d.draft(b"bytes"), "invalid_text"),
    (lambda d: d.draft("Patient: cough", language="fr"), "unsupported_language"),
    (lambda d: d.draft("Patient: cough", kind="discharge"), "unknown_note_kind"),
    (lambda d: d.draft("Patient: cough", source="email"), "unknown_source"),
    (lambda d: d.draft("Patient: cough", patient_ref="Patient/../x"), "invalid_patient_ref"),
    (lambda d: d.edit({"kind": "outpatient"}, {"plan": ["x"]}), "invalid_note"),
    (lambda d: d.edit(d.draft("Patient: cough"), {"surgeon": ["Dr X"]}), "unknown_field"),
    (lambda d: d.edit(d.draft("Patient: cough"), {"plan": [1, 2]}), "invalid_field_value"),
    (lambda d: d.edit(d.draft("Patient: cough"), {"plan": ["y" * 2_001]}), "invalid_field_value"),
    (lambda d: d.sign(d.draft("Patient: cough"), author="dr.a", signed_at="yesterday"), "invalid_signed_at"),
    (lambda d: d.sign(d.draft("Patient: cough"), author="dr.a", signed_at="2026-03-01T10:00:00"), "invalid_signed_at"),
    (lambda d: d.sign(d.draft("Patient: cough"), author="", signed_at="2026-03-01T10:00:00Z"), "invalid_author"),
])
def test_bad_input_is_refused_with_a_reason(fallback: NoteDrafter, call, reason: str) -> None:
    with pytest.raises(ScenarioInputError) as refused:
        call(fallback)
    assert refused.value.reason == reason and refused.value.status == 422


def test_the_note_kinds_are_the_three_of_the_clause() -> None:
    assert NOTE_KINDS == ("outpatient", "progress", "operation") and set(KINDS) == set(NOTE_KINDS)
    for kind in KINDS.values():  # every field has a section code and a header in both languages
        assert set(kind.sections) == set(kind.fields) == set(kind.headers["en"]) == set(kind.headers["zh"])
