"""A2 through the API: draft, edit, versions, sign with a fresh TOTP code, immutability."""

from __future__ import annotations

from medllm_pipelines_tests.serving.conftest import Service

DIALOGUE = ("Doctor: What brings you in today?\nPatient: I have had a dry cough and a fever for three days.\n"
            "Doctor: Any shortness of breath?\nPatient: A little when climbing stairs.\n"
            "Doctor: Your chest sounds clear. I think this is acute bronchitis; take paracetamol and rest.")


def test_a_note_is_drafted_edited_versioned_and_signed(service: Service) -> None:
    headers = service.headers()
    created = service.client.post("/v1/ehr/drafts", json={"text": DIALOGUE, "language": "en", "kind": "outpatient"},
                                  headers=headers)
    assert created.status_code == 201, created.text
    note = created.json()
    note_id, fields = note["note_id"], note["note"]["fields"]
    assert note["version"] == 1 and not note["signed"] and note["author"] == "test-clinician"
    assert note["note"]["composition"]["resourceType"] == "Composition"
    field = next(iter(fields))
    edited = service.client.put(f"/v1/ehr/notes/{note_id}", json={"fields": {field: ["Edited by the clinician."]},
                                                                   "expected_version": 1}, headers=headers)
    assert edited.status_code == 200, edited.text
    assert edited.json()["version"] == 2 and edited.json()["note"]["fields"][field] == ["Edited by the clinician."]
    stale = service.client.put(f"/v1/ehr/notes/{note_id}", json={"fields": {field: ["x"]}, "expected_version": 1},
                               headers=headers)
    assert stale.status_code == 409 and stale.json()["reason"] == "version_conflict"
    versions = service.client.get(f"/v1/ehr/notes/{note_id}/versions", headers=headers).json()["versions"]
    assert [v["version"] for v in versions] == [1, 2] and "Edited by the clinician." in versions[1]["diff"]

    no_code = service.client.post(f"/v1/ehr/notes/{note_id}/sign", headers=headers)
    assert no_code.status_code == 403 and no_code.json()["reason"] == "mfa_required"
    authenticator = service.authenticators["clinician"]
    wrong = str((int(authenticator.now()) + 1) % 1_000_000).zfill(6)
    bad = service.client.post(f"/v1/ehr/notes/{note_id}/sign", headers={**headers, "X-MFA-Code": wrong})
    assert bad.status_code == 403 and bad.json()["reason"] == "mfa_failed"
    code = authenticator.now()
    signed = service.client.post(f"/v1/ehr/notes/{note_id}/sign", headers={**headers, "X-MFA-Code": code})
    assert signed.status_code == 200, signed.text
    assert signed.json()["signed"] and signed.json()["signed_by"] == "test-clinician"
    assert signed.json()["note"]["composition"]["status"] == "final"
    replay = service.client.post(f"/v1/ehr/notes/{note_id}/sign", headers={**headers, "X-MFA-Code": code})
    assert replay.status_code == 403 and replay.json()["reason"] == "mfa_replayed"
    after = service.client.put(f"/v1/ehr/notes/{note_id}", json={"fields": {field: ["too late"]}}, headers=headers)
    assert after.status_code == 409 and after.json()["reason"] == "note_signed"


def test_identifiers_in_a_dictation_never_reach_the_note(service: Service) -> None:
    text = ("Patient John Carrington, MRN 4471-22-9, phone 555-867-5309, presents with a rash on both arms for a week. "
            "Assessment: contact dermatitis. Plan: hydrocortisone cream.")
    response = service.client.post("/v1/ehr/drafts", json={"text": text, "source": "dictation"},
                                   headers=service.headers())
    assert response.status_code in (201, 422), response.text
    if response.status_code == 201:
        body = response.text
        assert "Carrington" not in body and "555-867-5309" not in body
    else:
        assert response.json()["reason"] == "draft_leaks_identifier"


def test_unknown_notes_are_404_problems(service: Service) -> None:
    response = service.client.get("/v1/ehr/notes/does-not-exist", headers=service.headers())
    assert response.status_code == 404 and response.json()["reason"] == "not_found"
