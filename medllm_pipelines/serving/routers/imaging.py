"""A3 imaging analysis: DICOM Part-10 upload, classification, segmentation, Grad-CAM, SEG and report (6.2.3).

Instances are de-identified with the project's DICOM profile before any model or store sees them; results are
filed under the de-identified StudyInstanceUID in the encrypted document store (kind ``imaging_study``).
"""

from __future__ import annotations

import base64
from typing import Any

from fastapi import APIRouter, Depends, File, Request, UploadFile
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from medllm_pipelines.serving.auth import Caller, requires
from medllm_pipelines.serving.problems import Problem
from medllm_pipelines.serving.scenarios import imaging_service, imaging_unavailable

router = APIRouter(tags=["A3 imaging analysis"])
KIND = "imaging_study"


def _summary(result: dict[str, Any]) -> dict[str, Any]:
    """The JSON answer: everything but the binary parts, which have their own URLs."""
    study = result["study_uid"]
    instances = []
    for item in result["instances"]:
        entry = {k: v for k, v in item.items() if k != "overlay_png"}
        entry["overlay_url"] = f"/v1/imaging/studies/{study}/instances/{item['sop_instance_uid']}/overlay.png"
        instances.append(entry)
    return {"study_uid": study, "instances": instances, "diagnostic_report": result.get("diagnostic_report"),
            "models": result.get("models"), "preprocessing": result.get("preprocessing"),
            "segmentation_url": f"/v1/imaging/studies/{study}/segmentation.dcm"
            if result.get("segmentation_dicom") else None}


def _stored(result: dict[str, Any]) -> dict[str, Any]:
    doc = dict(result)
    doc["instances"] = [{**i, "overlay_png": base64.b64encode(i["overlay_png"]).decode() if i.get("overlay_png")
                         else None} for i in result["instances"]]
    seg = result.get("segmentation_dicom")
    doc["segmentation_dicom"] = base64.b64encode(seg).decode() if seg else None
    return doc


@router.post("/v1/imaging/studies", status_code=201, summary="Analyse DICOM instances of one study")
async def submit_study(request: Request, files: list[UploadFile] = File(..., description="DICOM Part-10 files"),
                       caller: Caller = Depends(requires("analyse_images"))) -> dict[str, Any]:
    ctx = request.app.state.ctx
    if not files:
        raise Problem(422, "no_instances", "upload at least one DICOM instance")
    service = imaging_service(ctx)
    if service is None:
        raise Problem(503, "model_unavailable", "no lesion model holds the champion alias, so no study can be "
                      "analysed: " + imaging_unavailable(ctx))
    blobs = [await upload.read() for upload in files]
    result = await run_in_threadpool(service.analyse, blobs)  # CPU work off the event loop
    store = ctx.document_store()
    study = result["study_uid"]
    request.state.resource_id = study
    try:
        store.create(KIND, _stored(result), author=caller.principal, doc_id=study)
    except Exception as exc:
        if getattr(exc, "reason", "") != "document_exists":
            raise
        store.update(KIND, study, _stored(result), author=caller.principal)
    return _summary(result)


def _load(request: Request, study_uid: str) -> dict[str, Any]:
    request.state.resource_id = study_uid
    return request.app.state.ctx.document_store().get(KIND, study_uid).document


@router.get("/v1/imaging/studies/{study_uid}/results", summary="The analysis of a study")
def study_results(study_uid: str, request: Request,
                  caller: Caller = Depends(requires("analyse_images"))) -> dict[str, Any]:
    return _summary(_load(request, study_uid))


@router.get("/v1/imaging/studies/{study_uid}/instances/{sop_uid}/overlay.png", response_class=Response,
            summary="Grad-CAM and segmentation overlay of one instance")
def overlay(study_uid: str, sop_uid: str, request: Request,
            caller: Caller = Depends(requires("analyse_images"))) -> Response:
    for item in _load(request, study_uid)["instances"]:
        if item["sop_instance_uid"] == sop_uid and item.get("overlay_png"):
            return Response(base64.b64decode(item["overlay_png"]), media_type="image/png")
    raise Problem(404, "not_found", "no overlay for that instance in this study")


@router.get("/v1/imaging/studies/{study_uid}/segmentation.dcm", response_class=Response,
            summary="The segmentation as a DICOM Segmentation object")
def segmentation(study_uid: str, request: Request,
                 caller: Caller = Depends(requires("analyse_images"))) -> Response:
    seg = _load(request, study_uid).get("segmentation_dicom")
    if not seg:
        raise Problem(404, "not_found", "no segmentation model is served, so this study has no segmentation")
    return Response(base64.b64decode(seg), media_type="application/dicom")
