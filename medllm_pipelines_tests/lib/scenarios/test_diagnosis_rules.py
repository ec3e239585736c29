"""Guideline rules, knowledge-graph links and clinician feedback of the diagnosis scenario (no model needed)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from medllm_pipelines.lib.scenarios.diagnosis import feedback_record
from medllm_pipelines.lib.scenarios.diagnosis.guidelines import GUIDELINES_PATH, load_guidelines
from medllm_pipelines.lib.scenarios.errors import ScenarioInputError


def fired(features: dict, conditions: tuple[str, ...] = (), level: str = "low") -> list[str]:
    return [step["id"] for step in load_guidelines().next_steps(features, list(conditions), level)]


@pytest.mark.parametrize(
    ("features", "expected", "absent"),
    [
        ({"hba1c": 6.5}, "diabetes_criterion_hba1c", "prediabetes_hba1c"),
        ({"hba1c": 6.49}, "prediabetes_hba1c", "diabetes_criterion_hba1c"),
        ({"hba1c": 5.7}, "prediabetes_hba1c", "no_glycaemic_test"),
        ({"hba1c": 5.69}, None, "prediabetes_hba1c"),
        ({"fasting_glucose": 7.0}, "diabetes_criterion_fasting_glucose", "prediabetes_fasting_glucose"),
        ({"fasting_glucose": 6.9}, "prediabetes_fasting_glucose", "diabetes_criterion_fasting_glucose"),
        ({"fasting_glucose": 5.6}, "prediabetes_fasting_glucose", None),
        ({"fasting_glucose": 5.5}, None, "prediabetes_fasting_glucose"),
        ({"hba1c": 6.6, "fasting_glucose": 7.2}, "diabetes_two_tests", "diabetes_criterion_hba1c"),
    ],
)
def test_ada_thresholds_fire_at_their_boundaries(features, expected, absent):
    ids = fired(features)
    if expected:
        assert expected in ids
    if absent:
        assert absent not in ids


def test_every_step_cites_its_source_and_diagnostic_criteria_link_complication_screening():
    steps = load_guidelines().next_steps({"hba1c": 7.1}, [], "high")
    ids = [s["id"] for s in steps]
    assert ids[0] == "diabetes_criterion_hba1c"
    assert "high_model_risk_without_diagnostic_result" not in ids  # a diagnostic result already speaks
    screening = [s for s in steps if s["id"].startswith("kg:")]
    assert {s["id"].split("/")[-1] for s in screening} == {"retinal_examination", "kidney_tests", "foot_examination",
                                                           "lipid_profile"}
    kidney = next(s for s in screening if s["id"].endswith("kidney_tests"))
    assert "UACR" in kidney["text"] and "dc24-S011" in kidney["evidence"]
    assert all(s["evidence"] and s["text"] for s in steps)
    # no diagnostic criterion and no known diabetes: no complication screening
    assert not [s for s in load_guidelines().next_steps({"hba1c": 5.9}, [], "moderate") if s["id"].startswith("kg:")]


def test_known_diabetes_and_screening_of_untested_overweight_adults():
    known = fired({"hba1c": 7.5, "systolic_bp": 142}, ("E11.9",))
    assert known[0] == "known_type2_diabetes"
    assert "diabetes_criterion_hba1c" not in known and "blood_pressure_above_target_in_diabetes" in known
    assert any(step.startswith("kg:") for step in known)
    # overweight + hypertension (by value or by a coded diagnosis), never tested
    assert "screening_overweight_with_risk_factor" in fired({"bmi": 27.0, "systolic_bp": 134, "age_years": 30})
    assert "screening_overweight_with_risk_factor" in fired({"bmi": 27.0, "systolic_bp": 118}, ("I10",))
    lean = fired({"bmi": 22.0, "systolic_bp": 118, "age_years": 42.5})
    assert "screening_overweight_with_risk_factor" not in lean and "screening_age_35" in lean
    assert "screening_age_35" not in fired({"bmi": 22.0, "age_years": 42.5, "hba1c": 5.2})  # already tested
    assert "high_model_risk_without_diagnostic_result" in fired({"hba1c": 6.1}, level="high")


@pytest.mark.parametrize(("probability", "level"), [(0.5, "high"), (0.49, "moderate"), (0.25, "moderate"), (0.24, "low")])
def test_risk_levels_follow_the_decision_threshold(probability, level):
    assert load_guidelines().risk_level(probability, 0.5) == level


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda raw: raw["rules"][1]["when"]["all"].append({"feature": "hba1c", "about": 6}), "needs one of"),
        (lambda raw: raw["rules"][0].update(when={"fired": ["diabetes_two_tests"]}), "not defined above"),
        (lambda raw: raw["rules"][0].update(when={"weather": "rainy"}), "unknown rule condition"),
        (lambda raw: raw["rules"][0].update(evidence="a blog"), "unknown source"),
    ],
)
def test_rule_file_mistakes_are_refused_at_load(tmp_path: Path, change, message):
    raw = yaml.safe_load(GUIDELINES_PATH.read_text())
    change(raw)
    broken = tmp_path / "guidelines.yaml"
    broken.write_text(yaml.safe_dump(raw))
    with pytest.raises(ValueError, match=message):
        load_guidelines(broken)


# ----------------------------------------------------------------------------- feedback


def test_feedback_is_normalised():
    record = feedback_record({"scenario": "diagnosis", "result_id": "7f1c2a9e-0b4d-4e51-9a0e-3f1f8f0c2b11",
                              "agreement": "disagree", "true_outcome": True, "comment": "  HbA1c repeated: 6.1 %\r\n"})
    assert record == {"scenario": "diagnosis", "result_id": "7f1c2a9e-0b4d-4e51-9a0e-3f1f8f0c2b11",
                      "agreement": "disagree", "true_outcome": 1, "comment": "HbA1c repeated: 6.1 %"}
    triage = feedback_record({"scenario": "triage", "result_id": "r1", "agreement": "agree",
                              "true_outcome": "  cardiology "})
    assert triage["true_outcome"] == "cardiology" and triage["comment"] is None


@pytest.mark.parametrize(
    "payload",
    [
        [],
        {"scenario": "billing", "result_id": "r1", "agreement": "agree"},
        {"scenario": "diagnosis", "result_id": "", "agreement": "agree"},
        {"scenario": "diagnosis", "result_id": "r 1; drop table", "agreement": "agree"},
        {"scenario": "diagnosis", "result_id": "r1", "agreement": "maybe"},
        {"scenario": "diagnosis", "result_id": "r1", "agreement": "agree", "true_outcome": 2},
        {"scenario": "diagnosis", "result_id": "r1", "agreement": "agree", "true_outcome": "yes"},
        {"scenario": "triage", "result_id": "r1", "agreement": "agree", "true_outcome": ["a"]},
        {"scenario": "imaging", "result_id": "r1", "agreement": "agree", "comment": "x" * 1001},
        {"scenario": "ehr", "result_id": "r1", "agreement": "agree", "comment": "bell\x07"},
        {"scenario": "ehr", "result_id": "r1", "agreement": "agree", "patient_name": "Wang Fang"},
    ],
)
def test_invalid_feedback_is_refused_without_echoing_it(payload):
    with pytest.raises(ScenarioInputError) as caught:
        feedback_record(payload)
    assert caught.value.reason == "invalid_feedback" and caught.value.status == 422
    assert "Wang Fang" not in caught.value.detail and "drop table" not in caught.value.detail
