"""Who is calling and may they: bearer token -> principal -> the permission matrix -> rate limit.

Every protected endpoint declares its action (``Depends(requires("assess_risk"))``); privileged actions (in
``permissions.yaml``, ``mfa: true``) also need a fresh TOTP code in ``X-MFA-Code`` on that very request,
checked by the principal registry (a code is accepted once: a replay is refused).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from fastapi import Request

from medllm_pipelines.lib.security.tokens import TokenError
from medllm_pipelines.serving.problems import Problem

__all__ = ["Caller", "MFA_HEADER", "requires"]

MFA_HEADER = "X-MFA-Code"
_MFA_REASONS = {"missing": "mfa_required", "not_enrolled": "mfa_not_enrolled", "locked": "mfa_locked",
                "failed": "mfa_failed", "replayed": "mfa_replayed", "malformed": "mfa_failed",
                "unavailable": "key_service_unavailable"}


@dataclass(frozen=True)
class Caller:
    principal: str
    role: str
    client_id: str


def bearer_token(request: Request) -> str:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if not header:
        raise Problem(401, "token_missing", "this endpoint needs a bearer token (POST /v1/auth/token)",
                      headers={"WWW-Authenticate": 'Bearer realm="medllm"'})
    if scheme.lower() != "bearer" or not token.strip():
        raise Problem(401, "token_malformed", "the Authorization header must be 'Bearer <token>'",
                      headers={"WWW-Authenticate": 'Bearer realm="medllm", error="invalid_request"'})
    return token.strip()


def requires(action: str) -> Callable[[Request], Caller]:
    """A FastAPI dependency admitting callers whose role may take ``action`` (and who are within their rate)."""

    def dependency(request: Request) -> Caller:
        ctx = request.app.state.ctx
        try:
            claims = ctx.verifier.verify(bearer_token(request))
        except TokenError as exc:
            raise Problem(401, exc.reason, str(exc),
                          headers={"WWW-Authenticate": 'Bearer realm="medllm", error="invalid_token"'}) from None
        request.state.principal = claims.subject
        decision = ctx.decide(claims.subject, action, request.headers.get(MFA_HEADER))
        request.state.role = decision.role or "none"
        request.state.action = action
        if not decision.allowed:
            reason = "forbidden"
            if decision.mfa in _MFA_REASONS and ctx.access.matrix.requires_mfa(action) and decision.role and \
                    ctx.access.matrix.allows(decision.role, action):
                reason = _MFA_REASONS[decision.mfa]
            elif decision.principal is None or "deactivated" in decision.reason or "modified" in decision.reason:
                reason = "principal_not_allowed"
            raise Problem(403, reason, decision.reason)
        rate = ctx.limiter.hit(f"p:{claims.subject}")
        request.state.rate = rate
        if not rate.allowed:
            raise Problem(429, "rate_limited", f"more than {rate.limit} requests in a minute for this principal",
                          headers={"Retry-After": str(rate.reset_s)})
        return Caller(claims.subject, decision.role or "", claims.client_id)

    dependency.__name__ = f"requires_{action}"
    return dependency
