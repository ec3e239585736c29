"""Labels from coded diagnoses, for consented persons only."""

from __future__ import annotations

import pandas as pd

from medllm_pipelines.lib.common import codes
from medllm_pipelines.lib.label.conditions import LABEL_COLUMNS, label_from_conditions

PATIENTS = pd.DataFrame(
    {
        "patient_pseudonym": ["p_1", "p_2", "p_3", "p_4", "p_5", "p_6", "p_6"],
        "institution": ["h1", "h1", "h2", "h2", "h1", "h2", "h1"],
    }
)
REGISTRY = pd.DataFrame(
    {
        "patient_pseudonym": ["p_1", "p_2", "p_3", "p_5", "p_6"],
        "consent_status": [
            codes.CONSENT_GRANTED,
            codes.CONSENT_WITHDRAWN,
            codes.CONSENT_REFUSED,
            codes.CONSENT_GRANTED,
            codes.CONSENT_GRANTED,
        ],
    }
)
CONDITIONS = pd.DataFrame(
    {
        "patient_pseudonym": ["p_1", "p_2", "p_5", "p_6", "p_9"],
        "icd10_category": ["E11", "E11", "I10", "E11", "E11"],
    }
)


def test_only_persons_with_granted_consent_are_labelled():
    labelled = label_from_conditions(PATIENTS, CONDITIONS, REGISTRY)

    assert list(labelled.frame.columns) == LABEL_COLUMNS
    assert labelled.frame[["patient_pseudonym", "label", "institutions"]].to_dict("records") == [
        {"patient_pseudonym": "p_1", "label": 1, "institutions": "h1"},
        {"patient_pseudonym": "p_5", "label": 0, "institutions": "h1"},
        {"patient_pseudonym": "p_6", "label": 1, "institutions": "h1,h2"},  # one person, two sites
    ]
    assert set(labelled.frame["label_source"]) == {"icd10:E11"}


def test_exclusions_are_counted_by_consent_status():
    labelled = label_from_conditions(PATIENTS, CONDITIONS, REGISTRY)

    assert labelled.persons_in == 6
    assert labelled.excluded_by_consent == {"withdrawn": 1, "refused": 1, "unknown": 1}
    assert labelled.persons_in == len(labelled.frame) + sum(labelled.excluded_by_consent.values())


def test_the_target_category_is_a_parameter():
    labelled = label_from_conditions(PATIENTS, CONDITIONS, REGISTRY, icd10_category="I10")

    assert labelled.frame.set_index("patient_pseudonym")["label"].to_dict() == {"p_1": 0, "p_5": 1, "p_6": 0}


def test_metadata_reconciles_persons_with_the_labelled_and_the_excluded():
    meta = label_from_conditions(PATIENTS, CONDITIONS, REGISTRY).as_metadata()

    assert (meta["records_in"], meta["records_out"], meta["removed[no_granted_consent]"]) == (6, 3, 3)
    assert meta["reconciled"] is True
    assert meta["excluded_by_consent_status"] == {"withdrawn": 1, "refused": 1, "unknown": 1}
    assert meta["rows_by_label"] == {"0": 1, "1": 2}
