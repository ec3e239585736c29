"""The clinician web page (``/ui``): static files of this package, no CDN; the page calls the same API."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse, RedirectResponse, Response

from medllm_pipelines.serving.problems import Problem

router = APIRouter(include_in_schema=False)
UI_DIR = Path(__file__).resolve().parent.parent / "ui"
_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
          ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml", ".png": "image/png"}
# The page runs only its own scripts: a Content-Security-Policy without CDNs or inline script.
_HEADERS = {"Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; object-src 'none'; "
                                       "frame-ancestors 'none'; base-uri 'none'",
            "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer", "Cache-Control": "no-store"}


@router.get("/")
def root() -> Response:
    return RedirectResponse("/ui/")


@router.get("/ui")
def ui_redirect() -> Response:
    return RedirectResponse("/ui/")


@router.get("/ui/{path:path}")
def ui_file(path: str) -> Response:
    name = path or "index.html"
    target = (UI_DIR / name).resolve()
    if UI_DIR not in target.parents or not target.is_file() or target.suffix not in _TYPES:
        raise Problem(404, "not_found", "no such page")
    return FileResponse(target, media_type=_TYPES[target.suffix], headers=_HEADERS)
