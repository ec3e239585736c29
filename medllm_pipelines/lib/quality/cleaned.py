"""The quality stage's four cleaned tables: each cleaner with the accuracy checks that belong to it, and
the accounting every cleaned table reports and its blocking gate re-reads.

The quality assets call one function per table (``clean_patient_table``, ``clean_patient_linked``) and
report a ``CleaningReport``: in = out + quarantined + removed by a declared rule, for the stage and for
each institution. ``ReconciliationVerdict`` is that rule applied to the metadata of the latest
materialisation, which is what the ``records_reconciled`` gate checks.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from medllm_pipelines.lib.common.records import reconciliation_by_institution
from medllm_pipelines.lib.quality.accuracy import double_verification_details, link_patients, near_duplicate_details
from medllm_pipelines.lib.quality.cleaning import (
    CleaningResult,
    CleaningRules,
    clean_conditions,
    clean_consents,
    clean_observations,
    clean_patients,
)

KeyedHash = Callable[[Sequence[str]], list[str]]
PATIENT_LINKED_TABLES = ("observations", "conditions", "consents")


def clean_patient_table(
    patients: pd.DataFrame, asset: str, today: dt.date, rules: CleaningRules, keyed_hash: KeyedHash
) -> CleaningResult:
    """Patients deduplicated, birth dates checked, sex coded; near-duplicate persons across institutions
    counted by resident-ID status (matched on keyed hashes: ``accuracy.MATCH_RULE``)."""
    result = clean_patients(patients, asset, today, rules)
    result.details.update(near_duplicate_details(link_patients(result.frame, keyed_hash)))
    return result


def clean_patient_linked(
    table: str, records: pd.DataFrame, patients: pd.DataFrame, asset: str, rules: CleaningRules, now: dt.datetime
) -> CleaningResult:
    """Records that refer to a patient, checked against the cleaned patients; observations are also
    double-verified (repeated measurements that disagree beyond tolerance are listed, not averaged)."""
    if table == "observations":
        result = clean_observations(records, patients, asset, now, rules)
        result.details.update(double_verification_details(result.frame, rules.double_verification))
        return result
    if table == "conditions":
        return clean_conditions(records, patients, asset, rules)
    if table == "consents":
        return clean_consents(records, patients, asset, rules)
    raise ValueError(f"no patient-linked cleaner for table {table!r}")


@dataclass
class CleaningReport:
    """A cleaned table's accounting, overall (exact per rule) and per institution (rule removals as remainder)."""

    result: CleaningResult
    by_institution: dict[str, dict[str, int]]
    rules_version: str

    @classmethod
    def of(cls, records_in: pd.DataFrame, result: CleaningResult, rules_version: str) -> CleaningReport:
        """Raises when an institution has more records out than in (records invented: a bug, not data)."""
        return cls(result, reconciliation_by_institution(records_in, result.frame, result.quarantine), rules_version)

    def summary(self, asset: str) -> str:
        recon = self.result.reconciliation
        return (f"{asset}: {recon.records_in} in, {recon.records_out} out, {recon.quarantined} quarantined, "
                f"removed {recon.removed_by_rule}")

    def as_metadata(self) -> dict[str, Any]:
        return {
            **self.result.reconciliation.as_metadata(),
            **self.result.details,
            "rows_by_institution": {name: c["out"] for name, c in self.by_institution.items() if c["out"]},
            "reconciliation_by_institution": self.by_institution,
        }


@dataclass
class ReconciliationVerdict:
    """The reconciliation rule applied to a materialisation's metadata, overall and per institution."""

    metadata: Mapping[str, Any]

    @property
    def per_institution(self) -> dict[str, dict[str, int]]:
        return dict(self.metadata.get("reconciliation_by_institution") or {})

    @property
    def unbalanced(self) -> dict[str, dict[str, int]]:
        return {
            name: counts
            for name, counts in self.per_institution.items()
            if counts["in"] != counts["out"] + counts["quarantined"] + counts["removed"] or counts["removed"] < 0
        }

    @property
    def passed(self) -> bool:
        accounted = bool(self.per_institution) or self.metadata.get("records_in") == 0
        return bool(self.metadata.get("reconciled")) and not self.unbalanced and accounted

    @property
    def description(self) -> str:
        return "every record accounted for" if self.passed else "records were lost or invented"

    def as_metadata(self) -> dict[str, Any]:
        return {
            "records_in": self.metadata.get("records_in", 0),
            "records_out": self.metadata.get("records_out", 0),
            "records_quarantined": self.metadata.get("records_quarantined", 0),
            "institutions_checked": len(self.per_institution),
            "unbalanced_institutions": self.unbalanced,
        }
