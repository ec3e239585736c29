"""The FastAPI application: middleware (request ids, body limit, metrics, access log, audit), problems, routers.

``create_app(context_factory)`` is what uvicorn's factory mode and the tests call; the context (keys, models,
store...) is built in the lifespan so that a worker reports ready only once its models are loaded and warmed.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
import traceback
import uuid
from collections.abc import Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from medllm_pipelines.lib.scenarios.errors import ScenarioInputError
from medllm_pipelines.serving import metrics
from medllm_pipelines.serving.context import ServiceContext
from medllm_pipelines.serving.problems import Problem, problem_body, problem_response

__all__ = ["API_VERSION", "create_app"]

API_VERSION = "1.0.0"
ACCESS_LOG = logging.getLogger("medllm.serving.access")
LOG = logging.getLogger("medllm.serving")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{8,64}$")
UNAUDITED = ("/healthz", "/readyz", "/metrics", "/ui", "/docs", "/openapi.json", "/favicon.ico")


class JsonLogFormatter(logging.Formatter):
    """One JSON object per line; fields passed as ``extra={"fields": {...}}``."""

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {"time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)),
                                   "level": record.levelname.lower(), "logger": record.name,
                                   "message": record.getMessage()}
        payload.update(getattr(record, "fields", {}) or {})
        return json.dumps(payload, default=str)


def configure_logging(level: int = logging.INFO) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLogFormatter())
    root = logging.getLogger("medllm")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


def _route_template(scope: Scope) -> str:
    route = scope.get("route")
    path = getattr(route, "path", None)
    if path:
        return str(path)
    raw = str(scope.get("path", ""))
    return "/ui" if raw.startswith("/ui") else "unmatched"


class ServiceMiddleware:
    """Request id, body limit, latency metrics, JSON access log and the audit entry of every request."""

    def __init__(self, app: ASGIApp, *, max_body_bytes: Callable[[], int]) -> None:
        self.app, self.max_body_bytes = app, max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        supplied = headers.get("x-request-id", "")
        request_id = supplied if _REQUEST_ID.fullmatch(supplied) else uuid.uuid4().hex
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        limit = self.max_body_bytes()
        status_holder = {"status": 500}

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status_holder["status"] = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", request_id.encode())]
            await send(message)

        too_large = False
        declared = headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            too_large = True
        received = 0

        async def receive_wrapper() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise Problem(413, "body_too_large", f"request bodies are limited to {limit} bytes")
            return message

        try:
            if too_large:
                state["problem_reason"] = "body_too_large"
                await self._send_problem(send_wrapper, 413, "body_too_large",
                                         f"request bodies are limited to {limit} bytes", request_id)
            else:
                await self.app(scope, receive_wrapper, send_wrapper)
        except Problem as exc:  # raised by receive_wrapper while a handler read the body
            state["problem_reason"] = exc.reason
            await self._send_problem(send_wrapper, exc.status, exc.reason, exc.detail, request_id)
        finally:
            self._finish(scope, state, status_holder["status"], time.perf_counter() - started, request_id)

    @staticmethod
    async def _send_problem(send: Send, status: int, reason: str, detail: str, request_id: str) -> None:
        body = json.dumps(problem_body(status, reason, detail, f"urn:request:{request_id}")).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/problem+json"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    @staticmethod
    def _finish(scope: Scope, state: dict[str, Any], status: int, seconds: float, request_id: str) -> None:
        route = _route_template(scope)
        method = str(scope.get("method", ""))
        reason = state.get("problem_reason")
        metrics.REQUESTS.labels(route, method, str(status)).inc()
        metrics.LATENCY.labels(route).observe(seconds)
        if status >= 400:
            metrics.ERRORS.labels(route, reason or f"http_{status}").inc()
        principal = state.get("principal") or "anonymous"
        ACCESS_LOG.info("request", extra={"fields": {
            "request_id": request_id, "method": method, "route": route, "status": status,
            "duration_ms": round(seconds * 1000, 2), "principal": principal, "reason": reason}})
        path = str(scope.get("path", ""))
        app = scope.get("app")
        ctx: ServiceContext | None = getattr(getattr(app, "state", None), "ctx", None)
        if ctx is None or path.startswith(UNAUDITED):
            return
        outcome = "succeeded" if status < 400 else ("denied" if status in (401, 403, 429) else "failed")
        security_decision = status in (401, 403) or state.get("audit_flush", False)
        try:
            ctx.audit.record(actor=principal if principal != "anonymous" else "anonymous",
                             role=state.get("role") or "none",
                             action=f"api.{state.get('action') or 'request'}",
                             resource=f"{method} {route}", outcome=outcome, reason=reason or "",
                             details={"request_id": request_id, "status": status,
                                      "duration_ms": round(seconds * 1000, 2),
                                      **({"resource_id": state["resource_id"]} if state.get("resource_id") else {})},
                             flush=security_decision)
        except Exception:
            LOG.error("audit entry not written", extra={"fields": {"request_id": request_id}})


def _validation_detail(exc: RequestValidationError) -> str:
    """Where the request is invalid (locations and error types), never the submitted values."""
    parts = []
    for error in exc.errors()[:10]:
        loc = ".".join(str(p) for p in error.get("loc", ()))
        parts.append(f"{loc}: {error.get('type', 'invalid')}")
    return "invalid request: " + "; ".join(parts)


def create_app(context_factory: Callable[[], ServiceContext], *, max_body_bytes: int = 16 * 1024 * 1024) -> FastAPI:
    """The application; ``context_factory`` runs once at start-up (models load before the first request)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> Any:
        ctx = context_factory()
        app.state.ctx = ctx
        app.state.ready_at = time.time()
        try:
            yield
        finally:
            ctx.close()

    app = FastAPI(title="medllm-pipelines clinical API", version=API_VERSION, lifespan=lifespan,
                  description=("Four clinical scenarios of T/HBSEA 013-2024 clause 6.2 (pre-consultation, generative "
                               "EHR, imaging analysis, diagnosis support) served by the models that passed their "
                               "promotion gate. Authenticate with POST /v1/auth/token (client credentials); errors "
                               "are RFC 9457 problem details with a `reason` code."))
    app.state.max_body_bytes = max_body_bytes

    @app.exception_handler(Problem)
    async def on_problem(request: Request, exc: Problem) -> Any:
        return problem_response(request, exc.status, exc.reason, exc.detail, exc.headers)

    @app.exception_handler(ScenarioInputError)
    async def on_scenario_error(request: Request, exc: ScenarioInputError) -> Any:
        return problem_response(request, exc.status, exc.reason, exc.detail)

    @app.exception_handler(RequestValidationError)
    async def on_validation(request: Request, exc: RequestValidationError) -> Any:
        return problem_response(request, 422, "invalid_request", _validation_detail(exc))

    @app.exception_handler(StarletteHTTPException)
    async def on_http(request: Request, exc: StarletteHTTPException) -> Any:
        reason = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, f"http_{exc.status_code}")
        return problem_response(request, exc.status_code, reason, str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def on_error(request: Request, exc: Exception) -> Any:
        # Where it failed (the innermost frames), never the message: it may quote request data.
        frames = [f"{Path(f.filename).name}:{f.lineno}:{f.name}" for f in traceback.extract_tb(exc.__traceback__)[-4:]]
        LOG.error("unhandled error", extra={"fields": {"error": type(exc).__name__, "frames": frames,
                                                       "request_id": getattr(request.state, "request_id", None)}})
        return problem_response(request, 500, "internal_error", "the service failed on this request; it is logged "
                                "under the request id")

    from medllm_pipelines.serving.routers import auth, diagnosis, ehr, imaging, ops, triage, ui

    for module in (ops, auth, triage, ehr, imaging, diagnosis, ui):
        app.include_router(module.router)
    app.add_middleware(ServiceMiddleware, max_body_bytes=lambda: app.state.max_body_bytes)
    return app
