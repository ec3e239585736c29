"""Consent state from a person's Consent history, latest decision across institutions."""

from __future__ import annotations

import pandas as pd
import pytest

from medllm_pipelines.lib.common import codes
from medllm_pipelines.lib.deidentify.consent import REGISTRY_COLUMNS, build_consent_registry, consent_state

GRANT = ("active", "permit")
GRANT_NO_PROVISION = ("active", None)
DENY = ("active", "deny")
INACTIVE = ("inactive", "permit")
REJECTED = ("rejected", None)
DRAFT = ("draft", "permit")


def history(*decisions: tuple[str, str | None]) -> pd.DataFrame:
    return pd.DataFrame(decisions, columns=["status", "provision_type"])


@pytest.mark.parametrize(
    ("decisions", "state"),
    [
        ((GRANT,), codes.CONSENT_GRANTED),
        ((GRANT_NO_PROVISION,), codes.CONSENT_GRANTED),
        ((DENY,), codes.CONSENT_REFUSED),
        ((REJECTED,), codes.CONSENT_REFUSED),
        ((GRANT, INACTIVE), codes.CONSENT_WITHDRAWN),
        ((GRANT, DENY), codes.CONSENT_WITHDRAWN),
        ((GRANT, REJECTED), codes.CONSENT_WITHDRAWN),
        ((DENY, GRANT), codes.CONSENT_GRANTED),  # asked again, said yes
        ((GRANT, INACTIVE, GRANT), codes.CONSENT_GRANTED),
        ((GRANT, DRAFT), codes.CONSENT_GRANTED),  # a draft decides nothing
        ((DRAFT,), codes.CONSENT_UNKNOWN),
        ((), codes.CONSENT_UNKNOWN),
    ],
    ids=[
        "grant", "grant_without_provision", "refuse", "rejected_only", "grant_then_inactive", "grant_then_deny",
        "grant_then_rejected", "refuse_then_grant", "regrant", "draft_after_grant", "draft_only", "nothing",
    ],
)
def test_consent_state(decisions, state):
    assert consent_state(history(*decisions)) == state


PSEUDONYMS = pd.DataFrame(
    {
        "institution": ["h1", "h2", "h1", "h2", "h1"],
        "patient_key": ["a", "b", "c", "d", "e"],
        "patient_pseudonym": ["p_x", "p_x", "p_y", "p_y", "p_z"],
    }
)


def consent(institution: str, key: str, status: str, provision: str | None, decided_at: str | None, rid: str) -> dict:
    return {
        "institution": institution,
        "patient_key": key,
        "status": status,
        "provision_type": provision,
        "decided_at": decided_at,
        "resource_key": rid,
    }


def test_latest_decision_wins_across_institutions():
    consents = pd.DataFrame(
        [
            # p_x: granted at h2 in 2023, withdrawn at h1 in 2024 (the h1 row is listed first)
            consent("h1", "a", "inactive", "permit", "2024-02-01T00:00:00+00:00", "c1"),
            consent("h2", "b", "active", "permit", "2023-05-01T00:00:00+00:00", "c2"),
            # p_y: refused at h1 in 2022, granted at h2 in 2024
            consent("h2", "d", "active", "permit", "2024-01-01T08:00:00+00:00", "c3"),
            consent("h1", "c", "active", "deny", "2022-01-01T00:00:00+00:00", "c4"),
        ]
    )

    registry = build_consent_registry(consents, PSEUDONYMS).set_index("patient_pseudonym")

    assert registry.loc["p_x", "consent_status"] == codes.CONSENT_WITHDRAWN
    assert registry.loc["p_y", "consent_status"] == codes.CONSENT_GRANTED
    assert registry["decided_year"].to_dict() == {"p_x": 2024, "p_y": 2024}
    assert registry["consent_records"].to_dict() == {"p_x": 2, "p_y": 2}
    assert "p_z" not in registry.index  # no consent on record: unknown downstream


def test_same_day_decisions_resolve_by_time():
    consents = pd.DataFrame(
        [
            consent("h1", "a", "active", "permit", "2024-02-01T10:00:00.500000+00:00", "c1"),
            consent("h2", "b", "active", "deny", "2024-02-01T10:00:00+00:00", "c2"),
        ]
    )

    registry = build_consent_registry(consents, PSEUDONYMS)

    assert registry["consent_status"].tolist() == [codes.CONSENT_GRANTED]


def test_no_consents_gives_an_empty_registry():
    registry = build_consent_registry(pd.DataFrame(columns=["institution", "patient_key"]), PSEUDONYMS)

    assert registry.empty and list(registry.columns) == REGISTRY_COLUMNS
