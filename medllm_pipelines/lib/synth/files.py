"""Atomic file writes and stable JSON encoding.

A sensor may watch the output folder, so a file must appear complete or not at
all: each one is written to a dot-prefixed sibling (ignored by ingestion) and
renamed into place (:func:`~medllm_pipelines.lib.common.files.write_private_atomic`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import orjson

from medllm_pipelines.lib.common.files import write_private_atomic


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers never see a partial file."""
    write_private_atomic(path, data)


def json_bytes(document: Any, *, pretty: bool = False) -> bytes:
    """UTF-8 JSON (non-ASCII kept as is, key order as built: both are stable)."""
    option = orjson.OPT_INDENT_2 if pretty else 0
    return orjson.dumps(document, option=option)


def jsonl_bytes(rows: Iterable[Any]) -> bytes:
    """One compact JSON document per line, each line ending in a newline."""
    return b"".join(orjson.dumps(row) + b"\n" for row in rows)


class OutputTree:
    """The output folder: writes atomically and remembers what it wrote (with hashes)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.written: dict[str, str] = {}  # relative path -> sha256 of the bytes

    def write(self, relpath: str, data: bytes) -> None:
        atomic_write_bytes(self.root / relpath, data)
        self.written[relpath] = hashlib.sha256(data).hexdigest()

    def remove_stale(self, previous: Iterable[str]) -> list[str]:
        """Delete files an earlier run wrote that this run did not (never anything else)."""
        removed = []
        for relpath in sorted(set(previous) - set(self.written)):
            path = self.root / relpath
            if ".." in Path(relpath).parts or not path.is_file():
                continue
            path.unlink()
            removed.append(relpath)
            parent = path.parent
            while parent != self.root and parent.is_dir() and not any(parent.iterdir()):
                parent.rmdir()
                parent = parent.parent
        return removed
