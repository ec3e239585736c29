"""Operations (row P4): liveness, readiness, Prometheus metrics and the models being served."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response

from medllm_pipelines.serving import metrics
from medllm_pipelines.serving.auth import Caller, requires

router = APIRouter(tags=["operations"])


@router.get("/healthz", summary="Liveness: the process answers")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", summary="Readiness: keys, audit log, store and model loading checked",
            responses={503: {"description": "not ready"}})
def readyz(request: Request) -> JSONResponse:
    ctx = request.app.state.ctx
    checks: dict[str, Any] = {}
    try:
        health = ctx.keys.health()
        checks["vault"] = "ok" if not health.get("sealed") else "sealed"
    except Exception as exc:
        checks["vault"] = f"unavailable: {type(exc).__name__}"
    checks["audit"] = "ok" if ctx.audit.healthy else f"failing: {ctx.audit.last_error}"
    checks["redis"] = "ok" if ctx.redis is not None else "not configured or unreachable: per-process limits, no cache"
    try:
        store = ctx.document_store()
        if hasattr(store, "ping"):
            store.ping()
        checks["store"] = "ok"
    except Exception as exc:
        checks["store"] = f"unavailable: {type(exc).__name__}"
    models = ctx.models.status()
    checks["models_loading"] = sorted(name for name, s in models.items() if s["loading"])
    ready = checks["vault"] == "ok" and checks["audit"] == "ok" and checks["store"] == "ok" and \
        not checks["models_loading"] and ctx.models.refreshed_at is not None
    body = {"status": "ready" if ready else "not_ready", "checks": checks,
            "models": {name: s["served"] for name, s in models.items()},
            "uptime_s": round(time.time() - ctx.started_at, 1)}
    return JSONResponse(body, status_code=200 if ready else 503)


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
def prometheus_metrics(request: Request) -> Response:
    ctx = request.app.state.ctx
    metrics.MODEL_INFO.clear()  # a version swapped out no longer shows as served
    for name, status in ctx.models.status().items():
        served = status["served"]
        if served:
            metrics.MODEL_INFO.labels(name, served["version"], served["alias"]).set(1)
    return Response(metrics.render(), media_type=metrics.CONTENT_TYPE_LATEST)


@router.get("/v1/models", summary="The model versions served and why a model is not")
def served_models(request: Request, caller: Caller = Depends(requires("read_deidentified"))) -> dict[str, Any]:
    ctx = request.app.state.ctx
    return {"alias": ctx.models.alias, "models": ctx.models.status(), "refreshed_at": ctx.models.refreshed_at}
