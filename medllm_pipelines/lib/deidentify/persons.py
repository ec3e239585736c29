"""The person-to-pseudonym index: one implementation for every asset that links raw rows to a person.

Built from the identifiable pseudonym map (raw zone) and kept in memory only:
rows carry a patient key (FHIR resources) or an MRN (DICOM headers,
dialogues), both scoped by institution.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

PersonKey = tuple[str, str]  # (institution, patient key or MRN)


@dataclass(frozen=True)
class PersonIndex:
    """(institution, patient key) -> pseudonym and (institution, MRN) -> pseudonym."""

    by_key: dict[PersonKey, str]
    by_mrn: dict[PersonKey, str]

    @classmethod
    def from_map(cls, pseudonym_map: pd.DataFrame) -> PersonIndex:
        by_key = {(i, k): p for i, k, p in
                  pseudonym_map[["institution", "patient_key", "patient_pseudonym"]].itertuples(index=False)}
        by_mrn = {(i, m): p for i, m, p in
                  pseudonym_map[["institution", "mrn", "patient_pseudonym"]].itertuples(index=False)
                  if isinstance(m, str)}
        return cls(by_key, by_mrn)

    def of_record(self, institution: object, patient_key: object, mrn: object = None) -> str | None:
        """The pseudonym of a raw patient record, by its key, else by its MRN."""
        return self.by_key.get((institution, patient_key)) or self.by_mrn.get((institution, mrn))  # type: ignore[arg-type]
