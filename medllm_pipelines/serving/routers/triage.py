"""A1 pre-consultation: a multi-turn triage dialogue (clause 6.2.1).

The dialogue state is kept in the encrypted document store (kind ``triage_session``), holding only the
de-identified turns: the engine de-identifies every message before anything else sees it.
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, Field

from medllm_pipelines.serving.auth import Caller, requires
from medllm_pipelines.serving.problems import Problem
from medllm_pipelines.serving.scenarios import triage_service

router = APIRouter(tags=["A1 pre-consultation"])
KIND = "triage_session"


class SessionStart(BaseModel):
    language: Literal["en", "zh"] = "en"
    message: str | None = Field(None, max_length=2000, description="the patient's first message (optional)")


class PatientMessage(BaseModel):
    text: str = Field(..., min_length=1, max_length=2000)


def _answer(session_id: str, version: int, reply: dict[str, Any]) -> dict[str, Any]:
    return {"session_id": session_id, "version": version, **reply}


@router.post("/v1/triage/sessions", status_code=201, summary="Start a pre-consultation dialogue")
def start_session(body: SessionStart, request: Request,
                  caller: Caller = Depends(requires("triage_consult"))) -> dict[str, Any]:
    ctx = request.app.state.ctx
    engine = triage_service(ctx)
    turn = engine.start(body.language)
    if body.message:
        turn = engine.turn(turn.state, body.message)
    stored = ctx.document_store().create(KIND, turn.state, author=caller.principal)
    request.state.resource_id = stored.doc_id
    return _answer(stored.doc_id, stored.version, turn.reply)


@router.post("/v1/triage/sessions/{session_id}/messages", summary="The patient's next message")
def post_message(session_id: str, body: PatientMessage, request: Request,
                 caller: Caller = Depends(requires("triage_consult"))) -> dict[str, Any]:
    ctx = request.app.state.ctx
    store = ctx.document_store()
    request.state.resource_id = session_id
    current = store.get(KIND, session_id)
    if current.document.get("status") in ("done", "escalated"):
        raise Problem(409, "session_finished", "this pre-consultation has finished; start a new session")
    turn = triage_service(ctx).turn(current.document, body.text)
    stored = store.update(KIND, session_id, turn.state, author=caller.principal, expected_version=current.version)
    return _answer(session_id, stored.version, turn.reply)
