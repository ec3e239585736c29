"""The leak scan over a whole MEDLLM_HOME: every file's bytes and every warehouse table.

Only the encrypted raw zone may hold identifiers, and there only as
ciphertext, so a byte scan of all files (raw zone included) must find none.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from medllm_pipelines.lib.common.warehouse import Warehouse
from medllm_pipelines.lib.security.leak_scan import DEFAULT_MIN_CHARS, LeakHit, scan_files, scan_frame

_KIND_BY_KEY_FRAGMENT = (
    ("resident", "resident_id"),
    ("id_number", "resident_id"),
    ("mrn", "mrn"),
    ("phone", "phone"),
    ("email", "email"),
    ("address", "address"),
    ("name", "name"),
)


def _kind_of(key: str) -> str | None:
    lowered = key.lower()
    for fragment, kind in _KIND_BY_KEY_FRAGMENT:
        if fragment in lowered:
            return kind
    return None


def _collect(value: Any, kind: str | None, needles: dict[str, set[str]]) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            _collect(item, _kind_of(str(key)) or kind, needles)
    elif isinstance(value, list):
        for item in value:
            _collect(item, kind, needles)
    elif isinstance(value, str) and kind is not None:
        is_cjk_name = kind == "name" and any("\u4e00" <= ch <= "\u9fff" for ch in value)
        if len(value) >= (2 if is_cjk_name else DEFAULT_MIN_CHARS):
            needles.setdefault(kind, set()).add(value)


def load_identity_needles(identities_file: Path) -> dict[str, set[str]]:
    """Identifier kind -> values, from ``identities.jsonl`` (one person per line)."""
    needles: dict[str, set[str]] = {}
    for line in Path(identities_file).read_bytes().splitlines():
        if line.strip():
            _collect(orjson.loads(line), None, needles)
    return needles


def scan_home(settings: Any, identities_file: Path) -> list[LeakHit]:
    needles = load_identity_needles(identities_file)
    files = [p for p in Path(settings.home).rglob("*") if p.is_file()]
    hits = scan_files(files, needles, Path(settings.home))
    warehouse = Warehouse(settings.warehouse_url)
    try:
        for schema, table, frame in warehouse.iter_tables():
            hits.extend(scan_frame(frame, needles, f"warehouse:{schema}.{table}"))
    finally:
        warehouse.dispose()
    return hits
