"""The one atomic private write and the one lock: the guarantees other modules rely on."""

from __future__ import annotations

import multiprocessing
import os
import stat
import time
from pathlib import Path

import pytest

from medllm_pipelines.lib.common.files import exclusive_lock, write_private_atomic, write_private_atomic_with


def test_write_creates_a_0600_file_with_the_bytes(tmp_path: Path) -> None:
    target = tmp_path / "deep" / "secret.json"
    write_private_atomic(target, '{"k": 1}')
    assert target.read_text() == '{"k": 1}'
    assert stat.S_IMODE(target.stat().st_mode) == 0o600


def test_write_replaces_a_world_readable_file_with_a_private_one(tmp_path: Path) -> None:
    target = tmp_path / "state.json"
    target.write_text("old")
    os.chmod(target, 0o644)
    write_private_atomic(target, b"new")
    assert target.read_bytes() == b"new"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600


def test_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "ledger.json"
    write_private_atomic(target, "old")

    def explode(handle) -> None:
        handle.write(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        write_private_atomic_with(target, explode)
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ledger.json"]


def _hold(lock: str, marker: str, seconds: float) -> None:
    with exclusive_lock(lock):
        Path(marker).write_text(str(time.monotonic()))
        time.sleep(seconds)


def test_lock_excludes_another_process(tmp_path: Path) -> None:
    lock, marker = tmp_path / "x.lock", tmp_path / "held"
    child = multiprocessing.get_context("fork").Process(target=_hold, args=(str(lock), str(marker), 0.5))
    child.start()
    while not marker.exists():
        time.sleep(0.01)
    started = time.monotonic()
    with exclusive_lock(lock):
        waited = time.monotonic() - started
    child.join()
    assert waited > 0.2, "the lock was taken while another process held it"
    assert stat.S_IMODE(lock.stat().st_mode) == 0o600
