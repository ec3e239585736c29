"""A2 generative EHR: drafts from a dialogue or a dictation, versions, signing (clause 6.2.2).

Notes live in the encrypted document store (kind ``ehr_note``): every edit a new version with author, time
and diff; a signed note is immutable. Signing is privileged: it needs a fresh TOTP code (``X-MFA-Code``).
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, Field

from medllm_pipelines.serving.auth import Caller, requires
from medllm_pipelines.serving.problems import Problem
from medllm_pipelines.serving.scenarios import dialogue_deidentifier, ehr_service

router = APIRouter(tags=["A2 generative EHR"])
KIND = "ehr_note"


class DraftRequest(BaseModel):
    text: str = Field(..., min_length=1, max_length=20000, description="dialogue transcript or dictation")
    language: Literal["en", "zh"] = "en"
    kind: Literal["outpatient", "progress", "operation"] = "outpatient"
    source: Literal["dialogue", "dictation"] = "dialogue"


class NoteEdit(BaseModel):
    fields: dict[str, str | list[str]] = Field(..., description="the structured fields to change")
    expected_version: int | None = Field(None, ge=1, description="the version edited (optimistic concurrency)")


def _note(stored: Any) -> dict[str, Any]:
    from medllm_pipelines.lib.scenarios.ehr.kinds import KINDS

    kind = KINDS.get(str(stored.document.get("kind", "")))
    language = str(stored.document.get("language", "en"))
    return {"note_id": stored.doc_id, "version": stored.version, "author": stored.author,
            "created_at": stored.created_at, "signed": stored.signed, "signed_by": stored.signed_by,
            "signed_at": stored.signed_at, "note": stored.document,
            # the store keeps JSON with sorted keys: the kind's reading order and headers, for display
            "field_order": list(kind.fields) if kind else [],
            "field_headers": dict(kind.headers.get(language) or kind.headers.get("en") or {}) if kind else {}}


@router.post("/v1/ehr/drafts", status_code=201, summary="Draft a note from a dialogue or a dictation")
def create_draft(body: DraftRequest, request: Request,
                 caller: Caller = Depends(requires("draft_notes"))) -> dict[str, Any]:
    ctx = request.app.state.ctx
    text = dialogue_deidentifier(ctx)(body.text)  # the generator sees de-identified text only
    note = ehr_service(ctx).draft(text, language=body.language, kind=body.kind, source=body.source)
    stored = ctx.document_store().create(KIND, note, author=caller.principal)
    request.state.resource_id = stored.doc_id
    return _note(stored)


@router.get("/v1/ehr/notes/{note_id}", summary="The latest version of a note")
def get_note(note_id: str, request: Request, caller: Caller = Depends(requires("draft_notes"))) -> dict[str, Any]:
    request.state.resource_id = note_id
    return _note(request.app.state.ctx.document_store().get(KIND, note_id))


@router.put("/v1/ehr/notes/{note_id}", summary="Edit a note's fields (a new version)")
def edit_note(note_id: str, body: NoteEdit, request: Request,
              caller: Caller = Depends(requires("draft_notes"))) -> dict[str, Any]:
    ctx = request.app.state.ctx
    store = ctx.document_store()
    request.state.resource_id = note_id
    current = store.get(KIND, note_id)
    if current.signed:
        raise Problem(409, "note_signed", "a signed note is immutable")
    edited = ehr_service(ctx).edit(current.document, body.fields)
    stored = store.update(KIND, note_id, edited, author=caller.principal,
                          expected_version=body.expected_version or current.version)
    return _note(stored)


@router.post("/v1/ehr/notes/{note_id}/sign", summary="Sign a note (needs X-MFA-Code); it becomes immutable")
def sign_note(note_id: str, request: Request, caller: Caller = Depends(requires("sign_notes"))) -> dict[str, Any]:
    ctx = request.app.state.ctx
    store = ctx.document_store()
    request.state.resource_id = note_id
    request.state.audit_flush = True
    current = store.get(KIND, note_id)
    if current.signed:
        raise Problem(409, "note_signed", "this note is already signed")
    signed_at = dt.datetime.now(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    final = ehr_service(ctx).sign(current.document, author=caller.principal, signed_at=signed_at)
    return _note(store.sign(KIND, note_id, author=caller.principal, document=final,
                            expected_version=current.version))


@router.get("/v1/ehr/notes/{note_id}/versions", summary="Every version of a note with author, time and diff")
def note_versions(note_id: str, request: Request,
                  caller: Caller = Depends(requires("draft_notes"))) -> dict[str, Any]:
    request.state.resource_id = note_id
    versions = request.app.state.ctx.document_store().versions(KIND, note_id)
    return {"note_id": note_id, "versions": [
        {"version": v.version, "author": v.author, "created_at": v.created_at, "signed": v.signed,
         "diff": v.diff} for v in versions]}
