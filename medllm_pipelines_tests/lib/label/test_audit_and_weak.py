"""Random-sample audit of accepted labels, and weak labels from codes."""

from __future__ import annotations

import pandas as pd
import pytest

from medllm_pipelines.lib.label.audit import (
    audit_accepted_labels,
    audit_labelled_set,
    in_audit_sample,
    sampling_rules,
    wilson_interval,
)
from medllm_pipelines.lib.label.registry import load_guidelines
from medllm_pipelines.lib.label.weak import (
    ABSTAIN,
    WeakRule,
    WeakRules,
    compare_weak_labels,
    compare_with_human,
    load_weak_rules,
    medication_codes,
    weak_labels,
)


def test_audit_sample_is_reproducible_and_close_to_its_rate():
    ids = [f"dlg-{i:05d}" for i in range(20000)]
    chosen = [i for i in ids if in_audit_sample("seed-a", "triage_labels", "hzsf", i, 0.2)]
    assert len(chosen) / len(ids) == pytest.approx(0.2, abs=0.01)
    assert chosen == [i for i in ids if in_audit_sample("seed-a", "triage_labels", "hzsf", i, 0.2)]
    other = {i for i in ids if in_audit_sample("seed-b", "triage_labels", "hzsf", i, 0.2)}
    assert len(other & set(chosen)) < 0.3 * len(chosen)


def test_error_rate_counts_only_audited_accepted_items():
    accepted = pd.DataFrame({"item_key": list("abcde"), "label": ["X", "X", "Y", "Y", "Z"]})
    verdicts = pd.DataFrame({"item_key": ["a", "b", "c", "z"], "label": ["X", "Y", "Y", "X"]})
    result = audit_accepted_labels(accepted, {"a", "b", "c", "d"}, verdicts)
    assert (result.sampled, result.audited, result.errors) == (4, 3, 1)
    assert result.error_rate == pytest.approx(1 / 3, abs=1e-6)
    low, high = result.as_dict()["error_rate_ci95"]
    assert low < 1 / 3 < high
    assert wilson_interval(0, 0) == (None, None)


def test_weak_labels_vote_by_weight_and_abstain_on_ties():
    rules = WeakRules("t", "triage_labels", (WeakRule("icd10", "E11", "Endo", 2), WeakRule("icd10", "I1", "Cardio", 1),
                                              WeakRule("atc", "C08", "Cardio", 1), WeakRule("icd10", "J", "Resp", 2)))
    codes = pd.DataFrame([("p1", "icd10", "E11"), ("p1", "icd10", "I10"), ("p2", "icd10", "I10"), ("p2", "atc", "C08CA01"),
                          ("p2", "icd10", "E11"), ("p3", "icd10", "E11"), ("p3", "icd10", "J06"), ("p4", "icd10", "Z00")],
                         columns=["patient_pseudonym", "system", "code"])
    labels = weak_labels(codes, rules).set_index("patient_pseudonym")["weak_label"]
    assert labels.to_dict() == {"p1": "Endo", "p2": ABSTAIN, "p3": ABSTAIN, "p4": ABSTAIN}


def test_comparison_with_human_labels_reports_coverage_and_accuracy():
    pairs = pd.DataFrame({"weak_label": ["A", "A", ABSTAIN, "B"], "human_label": ["A", "B", "A", "B"]})
    result = compare_with_human(pairs)
    assert (result["covered"], result["coverage"], result["accuracy_where_covered"]) == (3, 0.75, pytest.approx(0.6667, abs=1e-4))
    assert result["confusion_human_to_weak"] == {"A": {"A": 1}, "B": {"A": 1, "B": 1}}


def test_the_rule_file_loads_and_medications_are_linked_by_pseudonym():
    rules = load_weak_rules()
    assert rules.labelled_set == "triage_labels" and any(r.system == "atc" for r in rules.rules)
    meds = pd.DataFrame({"institution": ["a", "a"], "patient_key": ["k1", "k9"],
                         "code_system": ["http://www.whocc.no/atc", "http://www.whocc.no/atc"], "code": ["A10BA02", "C08CA01"]})
    pseudonyms = pd.DataFrame({"institution": ["a"], "patient_key": ["k1"], "patient_pseudonym": ["p_1"]})
    assert medication_codes(meds, pseudonyms).to_dict("records") == [{"patient_pseudonym": "p_1", "system": "atc", "code": "A10BA02"}]


def test_a_set_is_audited_on_its_sampled_items_against_the_auditors_latest_verdict():
    accepted = pd.DataFrame({"item_key": ["a", "b", "c"], "label": ["X", "Y", "Z"]})
    annotations = pd.DataFrame({"item_key": ["a", "a", "b", "c"], "audit_sample": [True, True, True, False]})
    decisions = pd.DataFrame({
        "item_key": ["a", "a", "b", "b", "c"],
        "labelled_set": ["triage_labels", "triage_labels", "triage_labels", "other_set", "triage_labels"],
        "role": ["auditor", "auditor", "adjudicator", "auditor", "auditor"],
        "value": ["Y", "X", "Q", "Q", "Q"],  # a: a later verdict corrects the first; b: no auditor verdict here
        "decided_at": ["2026-01-02", "2026-01-03", "2026-01-01", "2026-01-01", "2026-01-01"],
    })
    result = audit_labelled_set(accepted, annotations, decisions, "triage_labels")
    assert (result.sampled, result.audited, result.errors) == (2, 1, 0)  # c is not in the sample
    assert set(result.frame["labelled_set"]) == {"triage_labels"}
    meta = result.as_metadata()
    assert (meta["audit.sampled"], meta["audit.pending_audit"], meta["error_rate"]) == (2, 1, 0.0)
    assert "audit.error_rate_ci95" not in meta and meta["audit"]["error_rate_ci95"][1] > 0


def test_sampling_rules_name_each_guideline_that_audits():
    rules = sampling_rules(load_guidelines())
    assert rules and all({"seed", "sample_rate"} <= set(rule) for rule in rules.values())


def test_weak_labels_are_compared_per_accepted_item_and_abstain_without_codes():
    rules = WeakRules("t", "triage_labels", (WeakRule("icd10", "E11", "Endo", 1), WeakRule("atc", "C08", "Cardio", 1)))
    human = pd.DataFrame({"item_key": ["i1", "i2", "i3"], "patient_pseudonym": ["p_1", "p_2", "p_3"],
                          "institution": "a", "label": ["Endo", "Endo", "Cardio"]})
    conditions = pd.DataFrame({"patient_pseudonym": ["p_1", "p_9"], "icd10_category": ["E11", "E11"]})
    meds = pd.DataFrame({"institution": ["a"], "patient_key": ["k2"], "code_system": ["http://www.whocc.no/atc"],
                         "code": ["C08CA01"]})
    pseudonyms = pd.DataFrame({"institution": ["a"], "patient_key": ["k2"], "patient_pseudonym": ["p_2"]})
    comparison = compare_weak_labels(human, conditions, meds, pseudonyms, rules)
    assert comparison.frame.set_index("item_key")[["weak_label", "agrees"]].to_dict("index") == {
        "i1": {"weak_label": "Endo", "agrees": True},
        "i2": {"weak_label": "Cardio", "agrees": False},
        "i3": {"weak_label": ABSTAIN, "agrees": False},
    }
    meta = comparison.as_metadata()
    assert (meta["coverage"], meta["accuracy_where_covered"], meta["weak_label_rules_version"]) == (0.6667, 0.5, "t")
