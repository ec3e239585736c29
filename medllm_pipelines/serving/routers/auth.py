"""``POST /v1/auth/token``: OAuth 2.0 client credentials (RFC 6749 section 4.4) -> a short-lived JWT."""

from __future__ import annotations

import base64
from typing import Any

from fastapi import APIRouter, Form, Request
from pydantic import BaseModel

from medllm_pipelines.lib.security.clients import ClientError
from medllm_pipelines.lib.security.errors import VaultError
from medllm_pipelines.serving.problems import Problem

router = APIRouter(tags=["authentication"])


class TokenResponse(BaseModel):
    access_token: str
    token_type: str = "Bearer"
    expires_in: int
    principal: str
    role: str


def _basic_credentials(request: Request) -> tuple[str, str] | None:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic" or not value:
        return None
    try:
        client_id, _, secret = base64.b64decode(value, validate=True).decode("utf-8").partition(":")
    except (ValueError, UnicodeDecodeError):
        raise Problem(401, "invalid_client", "the Basic credentials cannot be decoded") from None
    return client_id, secret


@router.post("/v1/auth/token", response_model=TokenResponse, summary="Client credentials -> bearer token",
             responses={400: {"description": "unsupported grant"}, 401: {"description": "invalid client"},
                        429: {"description": "too many attempts"}})
def issue_token(request: Request, grant_type: str = Form(...), client_id: str | None = Form(None),
                client_secret: str | None = Form(None)) -> Any:
    ctx = request.app.state.ctx
    request.state.action = "issue_token"
    request.state.audit_flush = True
    peer = request.client.host if request.client else "unknown"
    rate = ctx.token_limiter.hit(f"ip:{peer}")
    if not rate.allowed:
        raise Problem(429, "rate_limited", "too many token requests from this address",
                      headers={"Retry-After": str(rate.reset_s)})
    if grant_type != "client_credentials":
        raise Problem(400, "unsupported_grant_type", "only grant_type=client_credentials is supported")
    basic = _basic_credentials(request)
    if basic is not None:
        client_id, client_secret = basic
    if not client_id or not client_secret:
        raise Problem(401, "invalid_client", "client_id and client_secret are required (form fields or Basic)")
    try:
        client = ctx.clients.authenticate(client_id, client_secret)
    except ClientError as exc:
        raise Problem(401, exc.reason, str(exc)) from None
    except VaultError:
        raise Problem(503, "key_service_unavailable", "the key service is unavailable; failing closed") from None
    principal = ctx.registry.find(client.principal)
    request.state.principal = client.principal
    if principal is None or not principal.active:
        raise Problem(401, "invalid_client", "the client's principal is unknown or deactivated")
    request.state.role = principal.role
    try:
        token, claims = ctx.issuer.issue(principal.name, principal.role, client.client_id)
    except VaultError:
        raise Problem(503, "key_service_unavailable", "the key service is unavailable; failing closed") from None
    return TokenResponse(access_token=token, expires_in=claims.expires_at - claims.issued_at,
                         principal=principal.name, role=principal.role)
