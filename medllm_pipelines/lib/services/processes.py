"""Child processes and loopback ports of a local service supervisor.

Why a module of its own: a supervisor must never signal a process it did not
start (a recycled pid), must reap its own children (else they linger as
zombies that still "exist"), and must pick ports the way the Go listeners it
starts will bind them. None of that depends on which service is supervised.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "LISTEN_HOST",
    "PortTaken",
    "choose_port_pair",
    "pid_alive",
    "port_free",
    "port_of",
    "runs_command",
    "spawn",
    "terminate",
]

LISTEN_HOST = "127.0.0.1"

# Popen objects of servers started by this process: keeping them lets us reap
# the child on stop (else it lingers as a zombie that still "exists").
_children: dict[int, subprocess.Popen[bytes]] = {}


class PortTaken(Exception):
    """The port (or the one after it) is already bound; a free port may be tried instead."""


def spawn(command: Sequence[str], **popen_kwargs: Any) -> subprocess.Popen[bytes]:
    """Start ``command`` in its own session (it outlives the CLI that started it) and remember it for reaping."""
    process = subprocess.Popen(list(command), start_new_session=True, close_fds=True, **popen_kwargs)
    _children[process.pid] = process
    return process


def runs_command(pid: int, *, executables: Sequence[str], required: Sequence[str],
                 forbidden: Sequence[str] = ()) -> bool:
    """Whether ``pid`` is alive and its command line is the one we started (so it is safe to signal)."""
    if not pid_alive(pid):
        return False
    argv = _cmdline(pid)
    if not argv:
        return False
    return (
        os.path.basename(argv[0]) in executables
        and all(arg in argv for arg in required)
        and not any(arg in argv for arg in forbidden)
    )


def pid_alive(pid: int) -> bool:
    """Alive and not a zombie."""
    if pid <= 0:
        return False
    child = _children.get(pid)
    if child is not None:
        return child.poll() is None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        if stat.rsplit(")", 1)[1].split()[0] == "Z":
            return False
    return True


def terminate(pid: int, timeout_s: float) -> None:
    """SIGTERM, then SIGKILL if the process is still there after timeout_s."""
    for sig, wait_s in ((signal.SIGTERM, timeout_s), (signal.SIGKILL, 5.0)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            break
        if _wait_exit(pid, wait_s):
            break
    _children.pop(pid, None)


def choose_port_pair(port: int | None, default: int) -> int:
    """A port whose successor is free too (bao binds a cluster listener on port + 1).

    ``port=None`` prefers ``default`` and falls back to a free port; ``port=0``
    always takes a free port; any other port is used as given or raises
    :class:`PortTaken`.
    """
    if port not in (None, 0):
        if not (port_free(port) and port_free(port + 1)):
            raise PortTaken(f"port {port} or its cluster port {port + 1} on {LISTEN_HOST} is in use")
        return port
    if port is None and port_free(default) and port_free(default + 1):
        return default
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind((LISTEN_HOST, 0))
            candidate = probe.getsockname()[1]
        if candidate < 65535 and port_free(candidate) and port_free(candidate + 1):
            return candidate
    raise PortTaken(f"no free pair of TCP ports found on {LISTEN_HOST}")


def port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # Go listeners set SO_REUSEADDR, so a port whose last connections are in
        # TIME_WAIT (a server stopped a moment ago) is free for bao: probe alike.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((LISTEN_HOST, port))
        except OSError:
            return False
    return True


def port_of(addr: str) -> int:
    """Port of ``http://127.0.0.1:8200``; ValueError/IndexError if malformed."""
    return int(str(addr).rsplit(":", 1)[1].split("/", 1)[0])


def _cmdline(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        return [part.decode(errors="replace") for part in raw.split(b"\0") if part]
    except FileNotFoundError:
        if Path("/proc/self").exists():
            return None
    except OSError:
        return None
    try:  # no procfs (macOS): ask ps
        out = subprocess.run(["ps", "-p", str(pid), "-o", "command="], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.split() or None


def _wait_exit(pid: int, timeout_s: float) -> bool:
    child = _children.get(pid)
    if child is not None:
        try:
            child.wait(timeout=timeout_s)
            return True
        except subprocess.TimeoutExpired:
            return False
    deadline = time.monotonic() + timeout_s
    while pid_alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True
