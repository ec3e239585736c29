"""Consent registry: each person's current research-use consent state.

Read from the Consent history of every institution that knows the person
(linked by pseudonym). The most recent decision wins; a ``granted`` that is
later made inactive or denied is a *withdrawal* (clause 5.4.1.5-6, row S5).
"""

from __future__ import annotations

import pandas as pd

from medllm_pipelines.lib.common import codes

REGISTRY_COLUMNS = ["patient_pseudonym", "consent_status", "decided_year", "consent_records"]


def _is_grant(status: str | None, provision: str | None) -> bool:
    return status == "active" and provision in (None, "permit")


def consent_state(history: pd.DataFrame) -> str:
    """State after a person's consent records, given in decision order.

    An erasure request (``provision_type == erasure_request``, a FHIR
    ``DELETE Patient``) is a withdrawal that no other record overrides,
    whatever the order: it often carries no date of its own.
    """
    if "provision_type" in history.columns and (history["provision_type"] == codes.ERASURE_REQUEST).any():
        return codes.CONSENT_WITHDRAWN
    state = codes.CONSENT_UNKNOWN
    ever_granted = False
    for row in history.itertuples(index=False):
        if _is_grant(row.status, row.provision_type):
            state, ever_granted = codes.CONSENT_GRANTED, True
        elif row.status in ("inactive", "rejected") or row.status == "active":  # active here means deny
            state = codes.CONSENT_WITHDRAWN if ever_granted else codes.CONSENT_REFUSED
    return state


def build_consent_registry(clean_consents: pd.DataFrame, pseudonym_map: pd.DataFrame) -> pd.DataFrame:
    """One row per person with a consent record (people without one are ``unknown`` downstream)."""
    if clean_consents.empty:
        return pd.DataFrame(columns=REGISTRY_COLUMNS)
    merged = clean_consents.merge(
        pseudonym_map[["institution", "patient_key", "patient_pseudonym"]],
        on=["institution", "patient_key"],
        how="inner",
    ).sort_values(["patient_pseudonym", "decided_at", "institution", "resource_key"], na_position="first")
    rows = []
    for pseudonym, history in merged.groupby("patient_pseudonym", sort=True):
        last = history["decided_at"].dropna()
        rows.append(
            {
                "patient_pseudonym": pseudonym,
                "consent_status": consent_state(history),
                "decided_year": int(str(last.iloc[-1])[:4]) if len(last) else None,
                "consent_records": len(history),
            }
        )
    frame = pd.DataFrame(rows, columns=REGISTRY_COLUMNS)
    frame["decided_year"] = frame["decided_year"].astype("Int64")
    return frame


def erased_persons(clean_consents: pd.DataFrame, pseudonym_map: pd.DataFrame) -> list[str]:
    """Pseudonyms of the persons a sender asked to erase (a FHIR ``DELETE Patient``), sorted.

    The registry marks them withdrawn; this list is what the asset writes to
    the audit log, one entry per person (pseudonyms only, never identifiers).
    """
    if clean_consents.empty or "provision_type" not in clean_consents.columns:
        return []
    erasures = clean_consents[clean_consents["provision_type"] == codes.ERASURE_REQUEST]
    merged = erasures.merge(pseudonym_map[["institution", "patient_key", "patient_pseudonym"]],
                            on=["institution", "patient_key"], how="inner")
    return sorted(set(merged["patient_pseudonym"]))

