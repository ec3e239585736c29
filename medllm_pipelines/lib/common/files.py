"""One implementation of the two file guarantees every stage leans on (CONVENTIONS rule 17).

``write_private_atomic``: a reader sees the old file or the new one, never half
of either; the new file is 0600 from its first byte; after return the bytes
and the rename are on disk (fsync of the file and of its directory); a failed
write leaves no temp file behind. ``exclusive_lock``: one process at a time
across the machine (``flock`` on a 0600 lock file), waited for, not polled.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO, TypeVar

PRIVATE_MODE = 0o600
_T = TypeVar("_T")


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_private_atomic_with(path: str | Path, write: Callable[[BinaryIO], _T], *, mode: int = PRIVATE_MODE) -> _T:
    """Stream into a temp file beside ``path`` (created ``mode``), fsync, rename over ``path``, fsync the directory.

    ``write`` receives the open binary handle; its return value is returned.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            result = write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise
    _fsync_directory(path.parent)
    return result


def write_private_atomic(path: str | Path, data: bytes | str, *, mode: int = PRIVATE_MODE) -> None:
    """Replace ``path`` with ``data`` (text is UTF-8) atomically, 0600 unless ``mode`` says otherwise."""
    payload = data.encode("utf-8") if isinstance(data, str) else data
    write_private_atomic_with(path, lambda handle: handle.write(payload), mode=mode)


@contextlib.contextmanager
def exclusive_lock(lock_path: str | Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``lock_path`` (created 0600) for the block; waits for other holders."""
    lock_path = Path(lock_path)
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, PRIVATE_MODE)
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                break
            except OSError as exc:  # pragma: no cover - EINTR on old kernels
                if exc.errno != errno.EINTR:
                    raise
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
