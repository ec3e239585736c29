"""Labels derived from coded diagnoses, restricted to consented people.

Clause 5.1.1.1 (row D1): only data of patients with a current research
consent enters a labelled set; everyone else is counted by reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd

from medllm_pipelines.lib.common import codes

LABEL_COLUMNS = ["patient_pseudonym", "label", "label_source", "institutions"]


@dataclass
class LabelledSet:
    frame: pd.DataFrame
    excluded_by_consent: dict[str, int]
    persons_in: int

    def as_metadata(self) -> dict[str, Any]:
        """Persons in = labelled + excluded by consent status, and labels per class."""
        excluded = sum(self.excluded_by_consent.values())
        counts = self.frame["label"].astype(str).value_counts().sort_index()
        return {
            "records_in": self.persons_in,
            "records_out": len(self.frame),
            "removed[no_granted_consent]": excluded,
            "reconciled": self.persons_in == len(self.frame) + excluded,
            "excluded_by_consent_status": self.excluded_by_consent,
            "rows_by_label": {str(k): int(v) for k, v in counts.items()},
        }


def label_from_conditions(
    patients: pd.DataFrame,
    conditions: pd.DataFrame,
    consent_registry: pd.DataFrame,
    icd10_category: str = "E11",
) -> LabelledSet:
    """label = 1 when any institution recorded the ICD-10 category for the person."""
    persons = (
        patients.groupby("patient_pseudonym", sort=True)["institution"]
        .agg(lambda s: ",".join(sorted(set(s))))
        .rename("institutions")
        .reset_index()
    )
    status = consent_registry.set_index("patient_pseudonym")["consent_status"]
    persons["consent_status"] = persons["patient_pseudonym"].map(status).fillna(codes.CONSENT_UNKNOWN)
    consented = persons["consent_status"] == codes.CONSENT_GRANTED
    excluded = persons.loc[~consented, "consent_status"].value_counts().to_dict()
    positive = set(conditions.loc[conditions["icd10_category"] == icd10_category, "patient_pseudonym"])
    out = persons.loc[consented, ["patient_pseudonym", "institutions"]].copy()
    out["label"] = out["patient_pseudonym"].isin(positive).astype(int)
    out["label_source"] = f"icd10:{icd10_category}"
    return LabelledSet(out[LABEL_COLUMNS].reset_index(drop=True), {str(k): int(v) for k, v in excluded.items()}, len(persons))
