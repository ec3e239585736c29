"""Errors as RFC 9457 problem details (``application/problem+json``) with a stable ``reason`` code.

Every 4xx/5xx the service sends goes through :func:`problem_response`, so a client can switch on ``reason``
and an auditor sees the same code in the audit log. ``detail`` never quotes the request body (it may hold PHI).
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse

__all__ = ["PROBLEM_MEDIA_TYPE", "FastJSONResponse", "Problem", "problem_response"]

PROBLEM_MEDIA_TYPE = "application/problem+json"
PROBLEM_TYPE_BASE = "https://medllm-pipelines.invalid/problems/"

_TITLES = {
    400: "Bad request", 401: "Authentication required", 403: "Forbidden", 404: "Not found",
    405: "Method not allowed", 409: "Conflict", 413: "Request too large", 415: "Unsupported media type",
    422: "Unprocessable content", 429: "Too many requests", 500: "Internal server error",
    503: "Service unavailable",
}


class Problem(Exception):
    """Raise anywhere in a request: the app answers with this problem and audits its reason."""

    def __init__(self, status: int, reason: str, detail: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(f"{status} {reason}: {detail}")
        self.status, self.reason, self.detail, self.headers = status, reason, detail, headers or {}


def problem_body(status: int, reason: str, detail: str, instance: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"type": PROBLEM_TYPE_BASE + reason, "title": _TITLES.get(status, "Error"),
                            "status": status, "detail": detail, "reason": reason}
    if instance:
        body["instance"] = instance
    return body


def problem_response(request: Request | None, status: int, reason: str, detail: str,
                     headers: dict[str, str] | None = None) -> JSONResponse:
    request_id = getattr(request.state, "request_id", None) if request is not None else None
    if request is not None:
        request.state.problem_reason = reason
    return JSONResponse(problem_body(status, reason, detail, f"urn:request:{request_id}" if request_id else None),
                        status_code=status, media_type=PROBLEM_MEDIA_TYPE, headers=headers)


class FastJSONResponse(JSONResponse):
    """JSON rendered by orjson, for handlers that return a ready dict: FastAPI's own path runs
    ``jsonable_encoder`` over every nested value first, which costs more than the diagnosis itself."""

    def render(self, content: Any) -> bytes:
        import orjson

        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS)
