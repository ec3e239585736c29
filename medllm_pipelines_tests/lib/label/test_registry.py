"""Annotators and guidelines are versioned data files the importers enforce."""

from __future__ import annotations

import pytest

from medllm_pipelines.lib.label import registry as registry_module
from medllm_pipelines.lib.label.registry import (
    UNKNOWN_ANNOTATOR,
    UNKNOWN_GUIDELINE,
    WRONG_TASK_GUIDELINE,
    check_provenance,
    load_guidelines,
    load_registry,
)


def test_registry_lists_annotators_an_adjudicator_and_an_auditor():
    registry = load_registry()
    assert registry.ids_with_role("annotator") == ["ann-01", "ann-02", "ann-03"]
    assert registry.ids_with_role("adjudicator") == ["exp-01"]
    assert registry.ids_with_role("auditor") == ["aud-01"]


def test_every_guideline_is_named_by_its_version_and_hashed():
    guidelines = load_guidelines()
    assert {"triage-guideline-v1.2", "clinical-entities-v1.0", "lesion-annotation-v1.0"} <= set(guidelines)
    for version, guideline in guidelines.items():
        assert version == f"{guideline.id}-v{guideline.version}"
        assert len(guideline.sha256) == 64 and guideline.thresholds, version
    entities = guidelines["clinical-entities-v1.0"]
    assert entities.is_identifier_type("PERSON") and not entities.is_identifier_type("SYMPTOM")
    assert entities.relation_types["TREATS"].arg1 == ("DRUG",)


def test_a_guideline_file_whose_name_disagrees_with_its_content_is_refused(tmp_path):
    text = (registry_module.GUIDELINES_DIR / "triage-guideline-v1.2.yaml").read_text()
    (tmp_path / "triage-guideline-v9.9.yaml").write_text(text)
    with pytest.raises(ValueError, match="file name must match"):
        load_guidelines.__wrapped__(tmp_path)


@pytest.mark.parametrize(
    ("annotator", "guideline", "task", "reason"),
    [
        ("ann-99", "triage-guideline-v1.2", "classification", UNKNOWN_ANNOTATOR),
        (None, "triage-guideline-v1.2", "classification", UNKNOWN_ANNOTATOR),
        ("ann-01", "triage-guideline-v0.1", "classification", UNKNOWN_GUIDELINE),
        ("ann-01", "lesion-annotation-v1.0", "classification", WRONG_TASK_GUIDELINE),
        ("ann-01", "triage-guideline-v1.2", "classification", None),
    ],
)
def test_provenance_is_checked_with_a_reason_that_names_no_value(annotator, guideline, task, reason):
    problem = check_provenance(annotator, guideline, task, load_registry(), load_guidelines())
    assert (problem.reason_code if problem else None) == reason
    if problem and annotator:
        assert annotator not in problem.reason
