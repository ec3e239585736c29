"""A4 diagnosis support: T2D risk from a FHIR R4 Bundle, with SHAP and guideline next steps (6.2.4); feedback.

Results are cached in Redis under an HMAC of the canonical bundle (never the bundle) and the model version; the
``result_id`` a clinician's feedback refers to is that HMAC, so feedback can attach the result while it is cached.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Body, Depends, Query, Request

from medllm_pipelines.serving import metrics
from medllm_pipelines.serving.auth import Caller, requires
from medllm_pipelines.serving.problems import FastJSONResponse, Problem
from medllm_pipelines.serving.scenarios import diagnosis_service

router = APIRouter(tags=["A4 diagnosis support"])
SCENARIO = "diagnosis"
FEEDBACK_KIND = "feedback"

BUNDLE_EXAMPLE = {"resourceType": "Bundle", "type": "collection", "entry": [
    {"resource": {"resourceType": "Patient", "id": "p1", "gender": "female", "birthDate": "1970-01-01"}},
    {"resource": {"resourceType": "Observation", "id": "o1", "status": "final",
                  "code": {"coding": [{"system": "http://loinc.org", "code": "4548-4"}]},
                  "subject": {"reference": "Patient/p1"},
                  "valueQuantity": {"value": 7.1, "unit": "%", "system": "http://unitsofmeasure.org", "code": "%"}}}]}


@router.post("/v1/diagnosis/risk", summary="Type 2 diabetes risk of a patient (FHIR RiskAssessment)",
             response_class=FastJSONResponse)
def assess_risk(request: Request, bundle: dict[str, Any] = Body(..., examples=[BUNDLE_EXAMPLE]),
                explain: bool = Query(True, description="add per-feature SHAP values"),
                caller: Caller = Depends(requires("assess_risk"))) -> FastJSONResponse:
    ctx = request.app.state.ctx
    service = diagnosis_service(ctx)
    if service is None:
        raise Problem(503, "model_unavailable", "no t2d_risk version holds the champion alias: "
                      + str(ctx.models.status()["t2d_risk"]["problem"]))
    model = ctx.models.describe("t2d_risk")
    key = ctx.cache.key(SCENARIO, {"t2d_risk": model["version"] if model else None, "explain": explain}, bundle)
    result_id = key.rsplit(":", 1)[-1]
    request.state.resource_id = result_id[:16]
    cached = ctx.cache.get(key)
    if cached is not None:
        metrics.CACHE.labels(SCENARIO, "hit").inc()
        return FastJSONResponse({**cached, "cached": True})
    metrics.CACHE.labels(SCENARIO, "miss" if ctx.cache.enabled else "disabled").inc()
    result = {**service.assess(bundle, explain=explain), "result_id": result_id}
    ctx.cache.put(key, result)
    return FastJSONResponse({**result, "cached": False})


@router.post("/v1/feedback", status_code=201, summary="A clinician's agreement or the true outcome of a result")
def record_feedback(request: Request, payload: dict[str, Any] = Body(..., examples=[
        {"scenario": "diagnosis", "result_id": "0" * 64, "agreement": "agree", "true_outcome": 1}]),
        caller: Caller = Depends(requires("record_feedback"))) -> dict[str, Any]:
    from medllm_pipelines.lib.scenarios.diagnosis import feedback_record

    ctx = request.app.state.ctx
    record = feedback_record(payload)
    snapshot = None
    if record["scenario"] == SCENARIO:
        snapshot = ctx.cache.get(ctx.cache.prefix + SCENARIO + ":" + str(record["result_id"]))
    document = {**record, "recorded_by_role": getattr(request.state, "role", ""),
                "result": {k: snapshot.get(k) for k in ("probability", "features", "model", "threshold")}
                if snapshot else None}
    stored = ctx.document_store().create(FEEDBACK_KIND, document, author=caller.principal)
    request.state.resource_id = stored.doc_id
    return {"feedback_id": stored.doc_id, "result_attached": snapshot is not None, "record": record}
