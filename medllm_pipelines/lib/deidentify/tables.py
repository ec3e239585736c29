"""De-identified person-level tables: the policy applied, k-anonymity recoding, withheld registrations, consent.

Each function takes the raw-zone frames an asset read and returns the table to
release with what the auditor needs to reconcile it (``as_metadata``). A
registration the released patients table withholds (a rare person recoded
out) leaves every other person-keyed table too: otherwise those rows would
still say the person was seen there, the very fact the suppression hid.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import pandas as pd

from medllm_pipelines.lib.common.records import Reconciliation
from medllm_pipelines.lib.deidentify.consent import build_consent_registry, erased_persons
from medllm_pipelines.lib.deidentify.disclosure import ProtectedTable, protect_released_table
from medllm_pipelines.lib.deidentify.persons import PersonIndex
from medllm_pipelines.lib.deidentify.policy import Policy, PolicyOutcome, apply_policy
from medllm_pipelines.lib.deidentify.risk import K_ANONYMITY_SUPPRESSED
from medllm_pipelines.lib.deidentify.withholding import (
    WithholdingResult,
    withheld_persons,
    withheld_registrations,
    withhold,
)

# Rules under which a person's registration can be withheld from release; every person-keyed table reports each.
WITHHOLDING_RULES = (K_ANONYMITY_SUPPRESSED,)
UNLINKED = "unlinked_person"


def policy_metadata(outcome: PolicyOutcome, policy: Policy, rows_in: int, rows_out: int,
                    removed: dict[str, int]) -> dict[str, Any]:
    """Reconciliation and what the policy did; ``removed``: rows withheld after the policy, by rule."""
    recon = Reconciliation(rows_in, rows_out, 0, {UNLINKED: outcome.unlinked_rows, **removed})
    return {
        **recon.as_metadata(),
        "columns_removed": list(outcome.removed_columns),
        "columns_dropped_undeclared": list(outcome.undeclared_columns),
        "deidentification_policy_version": policy.version,
        "purpose": policy.purpose,
        "purpose_id": policy.purpose_id,
    }


@dataclass(frozen=True)
class DeidentifiedPatients:
    """The released patients table, and the registrations it withholds (identifiable: raw zone only)."""

    frame: pd.DataFrame
    withheld: pd.DataFrame
    outcome: PolicyOutcome
    protection: ProtectedTable
    policy: Policy
    rows_in: int

    def as_metadata(self) -> dict[str, Any]:
        persons_withheld = withheld_persons(self.withheld, self.frame)["patient_pseudonym"].nunique()
        return {
            **policy_metadata(self.outcome, self.policy, self.rows_in, len(self.frame),
                              {K_ANONYMITY_SUPPRESSED: self.protection.rows_suppressed}),
            **self.protection.as_metadata(),
            f"persons_withheld[{K_ANONYMITY_SUPPRESSED}]": int(persons_withheld),
            "registrations_withheld": len(self.withheld),
            "persons": int(self.frame["patient_pseudonym"].nunique()),
        }


def deidentify_patients(patients: pd.DataFrame, observations: pd.DataFrame, persons: PersonIndex, policy: Policy,
                        *, k: int, l: int, today: dt.date | None = None) -> DeidentifiedPatients:
    """Patients without direct identifiers, age banded at the person's latest observation, then k-anonymous.

    Age is taken at the latest observation (``today`` for a person without
    one), so re-running later does not change the dataset.
    """
    latest = observations.groupby(["institution", "patient_key"])["effective_date"].max()
    today = today or dt.date.today()
    reference = [
        dt.date.fromisoformat(latest.get((i, key))) if (i, key) in latest.index else today
        for i, key in zip(patients["institution"], patients["resource_key"], strict=True)
    ]
    frame = patients.rename(columns={"resource_key": "patient_key"})
    outcome = apply_policy("patients", frame, policy, person_by_key=persons.by_key, person_by_mrn=persons.by_mrn,
                           age_reference=pd.Series(reference, index=frame.index))
    protection = protect_released_table(policy.disclosure.get("patients"), outcome.frame, k=k, l=l)
    withheld = withheld_registrations(outcome.frame, protection.frame, K_ANONYMITY_SUPPRESSED)
    return DeidentifiedPatients(protection.frame, withheld, outcome, protection, policy, len(frame))


@dataclass(frozen=True)
class DeidentifiedTable:
    """A released person-keyed table (observations, conditions) with the rows it withheld, by rule."""

    frame: pd.DataFrame
    outcome: PolicyOutcome
    protection: ProtectedTable
    withholding: WithholdingResult
    policy: Policy
    rows_in: int

    def as_metadata(self) -> dict[str, Any]:
        removed = dict(self.withholding.removed_by_rule)
        removed[K_ANONYMITY_SUPPRESSED] += self.protection.rows_suppressed
        return {
            **policy_metadata(self.outcome, self.policy, self.rows_in, len(self.frame), removed),
            **{k: v for k, v in self.withholding.as_metadata().items() if k.startswith("persons_withheld")},
            **self.protection.as_metadata(),
        }


def deidentify_person_table(policy_table: str, frame: pd.DataFrame, persons: PersonIndex, policy: Policy,
                            withheld: pd.DataFrame, *, k: int, l: int) -> DeidentifiedTable:
    """``frame`` under the policy's rules for ``policy_table``, without the withheld registrations' rows."""
    outcome = apply_policy(policy_table, frame, policy, person_by_key=persons.by_key, person_by_mrn=persons.by_mrn)
    protection = protect_released_table(policy.disclosure.get(policy_table), outcome.frame, k=k, l=l)
    withholding = withhold(protection.frame, withheld, rules=WITHHOLDING_RULES)
    return DeidentifiedTable(withholding.frame, outcome, protection, withholding, policy, len(frame))


@dataclass(frozen=True)
class ConsentRelease:
    """Each person's current consent, without persons whose every registration was withheld."""

    frame: pd.DataFrame
    rows_in: int
    withholding: WithholdingResult
    erased: list[str]  # pseudonyms of the persons a sender asked to erase (FHIR DELETE Patient)

    def as_metadata(self) -> dict[str, Any]:
        recon = Reconciliation(self.rows_in, len(self.frame), 0, self.withholding.removed_by_rule)
        return {**recon.as_metadata(), **self.withholding.as_metadata(), "erasure_requests_applied": len(self.erased)}


def release_consent_registry(clean_consents: pd.DataFrame, pseudonym_map: pd.DataFrame, withheld: pd.DataFrame,
                             released_patients: pd.DataFrame) -> ConsentRelease:
    """The consent registry to release: one row per person, withheld only when all their registrations were."""
    registry = build_consent_registry(clean_consents, pseudonym_map)
    withholding = withhold(registry, withheld_persons(withheld, released_patients), rules=WITHHOLDING_RULES)
    return ConsentRelease(withholding.frame, len(registry), withholding, erased_persons(clean_consents, pseudonym_map))
