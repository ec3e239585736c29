"""The bare FastAPI endpoint the service's load figures are compared with: same uvicorn, same workers, no work."""

from __future__ import annotations

from typing import Any

from fastapi import Body, FastAPI

app = FastAPI()


@app.post("/echo")
def echo(payload: dict[str, Any] = Body(...)) -> dict[str, Any]:
    return {"received": len(payload)}
