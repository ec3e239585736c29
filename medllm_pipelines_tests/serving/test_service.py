"""The service's contract: tokens, roles, MFA, problems, limits, metrics, readiness, audit, OpenAPI."""

from __future__ import annotations

import base64
import json
import time

import pytest

from medllm_pipelines.lib.security.audit import read_entries
from medllm_pipelines_tests.serving.conftest import Service


def test_health_and_readiness(service: Service) -> None:
    assert service.client.get("/healthz").json() == {"status": "ok"}
    ready = service.client.get("/readyz")
    assert ready.status_code == 200, ready.text
    body = ready.json()
    assert body["checks"]["vault"] == "ok" and body["checks"]["audit"] == "ok" and body["checks"]["store"] == "ok"
    assert set(body["models"]) >= {"t2d_risk", "triage", "note_generator", "lesion_classifier"}


def test_a_token_for_client_credentials_and_its_claims(service: Service) -> None:
    client_id, secret = service.credentials["clinician"]
    response = service.client.post("/v1/auth/token", data={"grant_type": "client_credentials",
                                                           "client_id": client_id, "client_secret": secret})
    body = response.json()
    assert response.status_code == 200 and body["token_type"] == "Bearer" and body["role"] == "clinician"
    assert 30 <= body["expires_in"] <= 3600
    header = json.loads(base64.urlsafe_b64decode(body["access_token"].split(".")[0] + "=="))
    assert header["alg"] == "EdDSA"  # signed by the Vault transit key
    basic = base64.b64encode(f"{client_id}:{secret}".encode()).decode()
    again = service.client.post("/v1/auth/token", data={"grant_type": "client_credentials"},
                                headers={"Authorization": f"Basic {basic}"})
    assert again.status_code == 200


@pytest.mark.parametrize(("form", "status", "reason"), [
    ({"grant_type": "password", "client_id": "x", "client_secret": "y"}, 400, "unsupported_grant_type"),
    ({"grant_type": "client_credentials", "client_id": "nobody", "client_secret": "y"}, 401, "invalid_client"),
    ({"grant_type": "client_credentials"}, 401, "invalid_client"),
])
def test_bad_token_requests_are_problems(service: Service, form: dict[str, str], status: int, reason: str) -> None:
    response = service.client.post("/v1/auth/token", data=form)
    assert response.status_code == status
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["reason"] == reason and response.json()["status"] == status


def test_a_wrong_secret_is_refused(service: Service) -> None:
    client_id, _ = service.credentials["clinician"]
    response = service.client.post("/v1/auth/token", data={"grant_type": "client_credentials",
                                                           "client_id": client_id, "client_secret": "guess"})
    assert response.status_code == 401 and response.json()["reason"] == "invalid_client"


@pytest.mark.parametrize(("headers", "reason"), [
    ({}, "token_missing"),
    ({"Authorization": "Token abc"}, "token_malformed"),
    ({"Authorization": "Bearer not.a.jwt"}, "token_malformed"),
])
def test_requests_without_a_usable_token_are_401(service: Service, headers: dict[str, str], reason: str) -> None:
    response = service.client.get("/v1/models", headers=headers)
    assert response.status_code == 401 and response.json()["reason"] == reason


def test_a_tampered_token_is_refused(service: Service) -> None:
    token = service.token("clinician")
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    claims["role"] = "admin"
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    response = service.client.get("/v1/models", headers={"Authorization": f"Bearer {header}.{forged}.{signature}"})
    assert response.status_code == 401 and response.json()["reason"] == "token_invalid"


def test_an_expired_token_is_refused(service: Service) -> None:
    from medllm_pipelines.lib.security.tokens import TokenIssuer

    old = TokenIssuer(service.ctx.keys, key_name=service.ctx.issuer.key_name, ttl_s=30,
                      clock=lambda: time.time() - 3600)
    token, _ = old.issue("test-clinician", "clinician", "x")
    response = service.client.get("/v1/models", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 401 and response.json()["reason"] == "token_expired"


@pytest.mark.parametrize("role", ["data_engineer", "ml_engineer", "auditor", "privacy_officer", "admin"])
@pytest.mark.parametrize(("method", "path", "body"), [
    ("post", "/v1/triage/sessions", {"language": "en"}),
    ("post", "/v1/ehr/drafts", {"text": "Patient reports a cough.", "language": "en"}),
    ("post", "/v1/diagnosis/risk", {"resourceType": "Bundle", "type": "collection", "entry": []}),
    ("get", "/v1/ehr/notes/abc", None),
])
def test_only_clinicians_use_the_scenarios(service: Service, role: str, method: str, path: str,
                                           body: dict | None) -> None:
    response = service.client.request(method.upper(), path, json=body, headers=service.headers(role))
    assert response.status_code == 403, response.text
    assert response.json()["reason"] == "forbidden"
    assert "not permitted" in response.json()["detail"]


def test_the_request_id_is_echoed_and_the_problem_names_it(service: Service) -> None:
    response = service.client.get("/v1/models", headers={"X-Request-ID": "req-12345678"})
    assert response.headers["x-request-id"] == "req-12345678"
    assert response.json()["instance"] == "urn:request:req-12345678"


def test_an_oversized_body_is_413_before_it_is_read(service: Service) -> None:
    limit = service.client.app.state.max_body_bytes
    response = service.client.post("/v1/ehr/drafts", content=b"x" * (limit + 1),
                                   headers={**service.headers(), "Content-Type": "application/json"})
    assert response.status_code == 413 and response.json()["reason"] == "body_too_large"


def test_validation_errors_name_the_field_not_the_value(service: Service) -> None:
    secret_text = "Zebulon Quarterfield"
    response = service.client.post("/v1/ehr/drafts", json={"text": secret_text, "language": "fr"},
                                   headers=service.headers())
    assert response.status_code == 422 and response.json()["reason"] == "invalid_request"
    assert "language" in response.json()["detail"] and secret_text not in response.text


def test_metrics_count_requests_by_route(service: Service) -> None:
    service.client.get("/healthz")
    text = service.client.get("/metrics").text
    assert 'medllm_http_requests_total{method="GET",route="/healthz",status="200"}' in text
    assert "medllm_http_request_duration_seconds_bucket" in text and "medllm_http_errors_total" in text


def test_every_request_is_audited_without_bodies(service: Service) -> None:
    marker = "Quentin Zanzibar-Oakes"
    service.client.post("/v1/ehr/drafts", json={"text": marker, "language": "xx"}, headers=service.headers())
    service.client.get("/v1/models", headers=service.headers("auditor"))
    service.ctx.audit.flush()
    entries = list(read_entries(service.ctx.settings.audit_log_file))
    api = [e for e in entries if e.action.startswith("api.")]
    assert any(e.actor == "test-clinician" and e.resource == "POST /v1/ehr/drafts" and e.outcome == "failed"
               and e.reason == "invalid_request" for e in api)
    assert any(e.actor == "test-auditor" and e.outcome == "denied" for e in api)
    assert all("request_id" in e.details for e in api)
    assert marker not in service.ctx.settings.audit_log_file.read_text()
    assert service.ctx.audit.log.verify()


def test_openapi_documents_every_scenario(service: Service) -> None:
    schema = service.client.get("/openapi.json").json()
    for path in ("/v1/auth/token", "/v1/triage/sessions", "/v1/triage/sessions/{session_id}/messages",
                 "/v1/ehr/drafts", "/v1/ehr/notes/{note_id}", "/v1/ehr/notes/{note_id}/sign",
                 "/v1/ehr/notes/{note_id}/versions", "/v1/imaging/studies",
                 "/v1/imaging/studies/{study_uid}/results", "/v1/diagnosis/risk", "/v1/feedback"):
        assert path in schema["paths"], path
    assert service.client.get("/docs").status_code == 200
