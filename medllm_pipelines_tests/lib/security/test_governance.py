"""Ethics approvals and sharing agreements gate training data and exports."""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path

import pandas as pd
import pytest

from medllm_pipelines.lib.security.governance import (
    ApprovalError,
    EthicsApproval,
    GovernanceError,
    GovernanceStore,
    SharingAgreement,
    SharingAgreementError,
)

TODAY = dt.date(2026, 11, 28)
APPROVAL = EthicsApproval(
    id="EC-2026-014",
    project="t2d-risk",
    purpose="develop a type 2 diabetes risk model for outpatient decision support",
    scope=("t2d_risk@1.1.0",),
    approved_on=dt.date(2026, 3, 1),
    expires_on=dt.date(2027, 2, 28),
    committee="Wuhan Union Hospital Medical Ethics Committee",
)
AGREEMENT = SharingAgreement(
    id="DSA-2026-003",
    recipient="hust-ai-lab",
    purpose="external validation of the T2D risk model",
    datasets=("curate/diabetes_features",),
    cross_border=False,
    valid_until=dt.date(2027, 6, 30),
)
FEATURES = pd.DataFrame({"patient_pseudonym": ["p_" + "a" * 24, "p_" + "b" * 24], "age_band": ["50-54", "60-64"],
                         "hba1c": [6.1, 7.4]})


@pytest.fixture
def store(tmp_path: Path) -> GovernanceStore:
    store = GovernanceStore(tmp_path / "governance")
    store.record_approval(APPROVAL, recorded_by="po")
    store.record_agreement(AGREEMENT, recorded_by="po")
    return store


def test_valid_approval_is_returned_with_its_id(store: GovernanceStore) -> None:
    approval = store.require_valid_approval("t2d-risk", "t2d_risk", TODAY, spec_version="1.1.0")
    assert approval.id == "EC-2026-014" and approval.version == 1 and approval.recorded_by == "po"
    assert approval.as_metadata()["ethics_approval_id"] == "EC-2026-014"


@pytest.mark.parametrize(
    ("project", "spec", "version", "today", "kind"),
    [
        ("other-project", "t2d_risk", "1.1.0", TODAY, "missing"),
        ("t2d-risk", "lesion_segmentation", None, TODAY, "out_of_scope"),
        ("t2d-risk", "t2d_risk", "1.2.0", TODAY, "scope_changed"),
        ("t2d-risk", "t2d_risk", "1.1.0", dt.date(2027, 3, 1), "expired"),
        ("t2d-risk", "t2d_risk", "1.1.0", dt.date(2026, 2, 1), "not_yet_valid"),
    ],
)
def test_training_data_is_refused_without_a_valid_approval(store, project, spec, version, today, kind) -> None:
    with pytest.raises(ApprovalError) as refused:
        store.require_valid_approval(project, spec, today, spec_version=version)
    assert refused.value.kind == kind


def test_expired_approval_message_names_the_approval_and_date(store: GovernanceStore) -> None:
    with pytest.raises(ApprovalError, match=r"EC-2026-014.*expired on 2027-02-28"):
        store.require_valid_approval("t2d-risk", "t2d_risk", dt.date(2027, 3, 1))


def test_amendment_and_revocation_are_new_versions(store: GovernanceStore) -> None:
    amended = dataclasses.replace(APPROVAL, scope=("t2d_risk@1.1.0", "t2d_risk@1.2.0"),
                                  expires_on=dt.date(2027, 12, 31))
    store.record_approval(amended, recorded_by="po")
    assert store.require_valid_approval("t2d-risk", "t2d_risk", TODAY, spec_version="1.2.0").version == 2
    store.revoke_approval("EC-2026-014", dt.date(2026, 12, 1), recorded_by="po")
    assert store.require_valid_approval("t2d-risk", "t2d_risk", TODAY).version == 3  # not revoked yet today
    with pytest.raises(ApprovalError) as refused:
        store.require_valid_approval("t2d-risk", "t2d_risk", dt.date(2026, 12, 2))
    assert refused.value.kind == "revoked"
    history = store.history("approvals", "EC-2026-014")
    assert [a.version for a in history] == [1, 2, 3] and history[0].scope == ("t2d_risk@1.1.0",)


def test_a_recorded_version_is_never_overwritten(store: GovernanceStore, tmp_path: Path) -> None:
    first = tmp_path / "governance" / "approvals" / "EC-2026-014" / "v0001.yaml"
    before = first.read_bytes()
    store.record_approval(dataclasses.replace(APPROVAL, purpose="changed"), recorded_by="po")
    assert first.read_bytes() == before


def test_invalid_records_are_rejected() -> None:
    with pytest.raises(ValueError, match="expire after"):
        dataclasses.replace(APPROVAL, expires_on=APPROVAL.approved_on)
    with pytest.raises(ValueError, match="model spec id"):
        dataclasses.replace(APPROVAL, scope=("T2D risk model",))
    with pytest.raises(ValueError, match="destination_country"):
        dataclasses.replace(AGREEMENT, cross_border=True)


def test_sharing_agreement_gate(store: GovernanceStore) -> None:
    found = store.require_sharing_agreement("hust-ai-lab", "curate/diabetes_features", TODAY, cross_border=False)
    assert found.id == "DSA-2026-003"
    cases = [
        ("someone-else", "curate/diabetes_features", TODAY, False, "missing"),
        ("hust-ai-lab", "curate/diabetes_splits", TODAY, False, "not_covered"),
        ("hust-ai-lab", "curate/diabetes_features", dt.date(2027, 7, 1), False, "expired"),
        ("hust-ai-lab", "curate/diabetes_features", TODAY, True, "cross_border"),
    ]
    for recipient, dataset, today, cross_border, kind in cases:
        with pytest.raises(SharingAgreementError) as refused:
            store.require_sharing_agreement(recipient, dataset, today, cross_border=cross_border)
        assert refused.value.kind == kind, (recipient, dataset)


def test_cross_border_needs_a_cross_border_agreement(store: GovernanceStore) -> None:
    store.record_agreement(
        dataclasses.replace(AGREEMENT, id="DSA-2026-009", cross_border=True, destination_country="SG",
                            cross_border_assessment="CAC-filing-2026-0042"),
        recorded_by="po",
    )
    agreement = store.require_sharing_agreement("hust-ai-lab", "curate/diabetes_features", TODAY, cross_border=True)
    assert agreement.id == "DSA-2026-009" and agreement.destination_country == "SG"


def test_unknown_record_is_a_clear_error(store: GovernanceStore) -> None:
    with pytest.raises(GovernanceError, match="no agreement 'DSA-0000'"):
        store.agreement("DSA-0000")
