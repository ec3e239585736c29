"""Lawful re-identification: privacy officer + MFA only, every attempt audited, nothing leaked."""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path

import pandas as pd
import pyotp
import pytest

from medllm_pipelines.lib.security.audit import AuditIntegrityError, AuditLog
from medllm_pipelines.lib.security.rbac import PrincipalRegistry
from medllm_pipelines.lib.security.reidentify import (
    PseudonymNotFound,
    ReidentificationDenied,
    ReidentificationRequest,
    reidentify,
)
from medllm_pipelines_tests.lib.security.fakes import LocalTestKeyProvider

NOW = dt.datetime(2026, 11, 28, 10, 0, tzinfo=dt.UTC)
LINKED = "p_" + "ab12" * 6  # one person known at two institutions
SINGLE = "p_" + "cd34" * 6
NO_MRN = "p_" + "ef56" * 6
PSEUDONYM_MAP = pd.DataFrame(
    {
        "institution": ["whsy", "rvmc", "jhch", "whsy"],
        "patient_key": ["pat-1", "pat-9", "pat-4", "pat-7"],
        "mrn": ["00412345", "RV0098765", "JH0011223", None],
        "link_kind": ["resident-id", "resident-id", "mrn", "record"],
        "patient_pseudonym": [LINKED, LINKED, SINGLE, NO_MRN],
    }
)
IDENTIFIERS = ["00412345", "RV0098765", "JH0011223", "pat-7"]


@pytest.fixture
def setup(tmp_path: Path) -> tuple[PrincipalRegistry, AuditLog, dict[str, pyotp.TOTP]]:
    registry = PrincipalRegistry(tmp_path / "principals.json", LocalTestKeyProvider())
    authenticators = {}
    for name, role in [("po", "privacy_officer"), ("de", "data_engineer"), ("adm", "admin"),
                       ("doc", "clinician")]:
        registry.add_principal(name, role)
        authenticator = pyotp.parse_uri(registry.enrol_totp(name))
        registry.confirm_totp(name, authenticator.at(NOW - dt.timedelta(seconds=30)), now=NOW)
        authenticators[name] = authenticator
    return registry, AuditLog(tmp_path / "audit.jsonl"), authenticators


def run(setup, requester: str, pseudonym: str = LINKED, *, mfa: str | None = "valid", reason: str = "patient_safety",
        case: str | None = "IRB-2026/17"):
    registry, audit, authenticators = setup
    code = authenticators[requester].at(NOW) if mfa == "valid" and requester in authenticators else mfa
    return reidentify(ReidentificationRequest(pseudonym, reason, case), requester=requester, mfa=code,
                      pseudonym_map=PSEUDONYM_MAP, registry=registry, audit=audit, now=NOW)


def test_privacy_officer_with_mfa_gets_institution_and_mrn_only(setup) -> None:
    result = run(setup, "po")
    assert [(i.institution, i.mrn) for i in result.identities] == [("rvmc", "RV0098765"), ("whsy", "00412345")]
    assert all(i.patient_key is None for i in result.identities)
    assert "RV0098765" not in repr(result) and "00412345" not in str(result.identities)
    entry = list(setup[1].entries())[-1]
    assert (entry.actor, entry.role, entry.action, entry.outcome) == ("po", "privacy_officer", "reidentify", "allowed")
    assert entry.resource == f"pseudonym:{LINKED}" and entry.seq == result.audit_seq
    assert entry.details["matches"] == 2 and entry.details["institutions"] == ["rvmc", "whsy"]
    assert entry.details["lawful_basis"] == "patient_safety" and entry.details["case_reference"] == "IRB-2026/17"


def test_record_without_mrn_falls_back_to_the_institution_record_key(setup) -> None:
    [identity] = run(setup, "po", NO_MRN).identities
    assert (identity.institution, identity.mrn, identity.patient_key) == ("whsy", None, "pat-7")


@pytest.mark.parametrize("requester", ["de", "adm", "doc", "stranger"])
def test_other_roles_are_denied_and_audited(setup, requester: str) -> None:
    with pytest.raises(ReidentificationDenied) as denied:
        run(setup, requester)
    assert "not permitted to reidentify" in str(denied.value) or "unknown principal" in str(denied.value)
    entry = list(setup[1].entries())[-1]
    assert entry.action == "reidentify" and entry.outcome == "denied"
    assert entry.actor == ("unknown-principal" if requester == "stranger" else requester)


@pytest.mark.parametrize("mfa", [None, "000000", "abc"], ids=["no-code", "wrong-code", "malformed"])
def test_privacy_officer_without_valid_mfa_is_denied_and_audited(setup, mfa: str | None) -> None:
    authenticator = setup[2]["po"]
    if mfa == "000000" and authenticator.at(NOW) == "000000":
        mfa = "111111"
    with pytest.raises(ReidentificationDenied, match="needs MFA"):
        run(setup, "po", mfa=mfa)
    entry = list(setup[1].entries())[-1]
    assert (entry.actor, entry.outcome) == ("po", "denied") and entry.details["mfa"] != "verified"


def test_unknown_pseudonym_is_audited_as_failed(setup) -> None:
    with pytest.raises(PseudonymNotFound):
        run(setup, "po", "p_" + "0" * 24)
    entry = list(setup[1].entries())[-1]
    assert entry.outcome == "failed" and entry.actor == "po"


@pytest.mark.parametrize(
    ("pseudonym", "reason", "case", "message"),
    [
        ("RV0098765", "patient_safety", None, "malformed"),
        (LINKED, "curiosity", None, "lawful bases"),
        (LINKED, "court_order", "13912345678", "case reference"),
    ],
    ids=["mrn-as-pseudonym", "not-a-lawful-basis", "digits-only-case"],
)
def test_malformed_requests_are_denied_without_logging_what_was_typed(setup, pseudonym, reason, case, message) -> None:
    with pytest.raises(ReidentificationDenied, match=message):
        run(setup, "po", pseudonym, reason=reason, case=case)
    entry = list(setup[1].entries())[-1]
    assert entry.outcome == "denied" and entry.details["mfa"] == "not_checked"
    text = setup[1].path.read_text()
    assert "RV0098765" not in text and "curiosity" not in text and "13912345678" not in text
    # the code was not consumed by the refused request
    assert run(setup, "po").identities


def test_no_identifier_reaches_the_audit_log_or_the_logs(setup, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    run(setup, "po")
    run(setup, "po", SINGLE, mfa=setup[2]["po"].at(NOW + dt.timedelta(seconds=30)))
    with pytest.raises(ReidentificationDenied):
        run(setup, "de", SINGLE)
    audit_text = setup[1].path.read_text()
    for value in IDENTIFIERS:
        assert value not in audit_text
        assert value not in caplog.text
    assert setup[1].verify().ok and setup[1].verify().entries == 3


def test_no_answer_without_an_audit_entry(setup) -> None:
    audit = setup[1]
    run(setup, "po")
    audit.head_path.unlink()  # the log no longer matches its head: appends are refused
    with pytest.raises(AuditIntegrityError):
        run(setup, "po", mfa=setup[2]["po"].at(NOW + dt.timedelta(seconds=30)))


def test_a_denied_request_never_loads_the_pseudonym_map(setup) -> None:
    registry, audit, authenticators = setup
    loads = []

    def load() -> pd.DataFrame:
        loads.append(1)
        return PSEUDONYM_MAP

    with pytest.raises(ReidentificationDenied):
        reidentify(ReidentificationRequest(LINKED, "patient_safety"), requester="de",
                   mfa=authenticators["de"].at(NOW), pseudonym_map=load, registry=registry, audit=audit, now=NOW)
    assert loads == []
    result = reidentify(ReidentificationRequest(LINKED, "patient_safety"), requester="po",
                        mfa=authenticators["po"].at(NOW), pseudonym_map=load, registry=registry, audit=audit, now=NOW)
    assert loads == [1] and len(result.identities) == 2


def test_an_allowed_request_whose_map_cannot_be_read_is_audited_as_failed(setup) -> None:
    registry, audit, authenticators = setup

    def missing() -> pd.DataFrame:
        raise FileNotFoundError("raw-zone table has not been materialised")

    with pytest.raises(FileNotFoundError):
        reidentify(ReidentificationRequest(LINKED, "patient_safety"), requester="po",
                   mfa=authenticators["po"].at(NOW), pseudonym_map=missing, registry=registry, audit=audit, now=NOW)
    entry = list(audit.entries())[-1]
    assert (entry.actor, entry.outcome) == ("po", "failed") and "FileNotFoundError" in entry.reason
