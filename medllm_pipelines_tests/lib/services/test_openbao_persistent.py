"""The persistent local OpenBao behind `medllm services up`: keys survive a restart."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import hvac
import pytest
import requests

from medllm_pipelines.lib.security.envelope import decrypt_bytes, encrypt_bytes
from medllm_pipelines.lib.security.errors import OpenBaoServerError
from medllm_pipelines.lib.security.vault_client import TransitKeyService
from medllm_pipelines.lib.services.openbao import (
    BaoServer,
    read_connection,
    server_status,
    start_dev_server,
    start_local_server,
    stop_dev_server,
    stop_local_server,
)

RECORD = b"patient 4711: HbA1c 7.9 %, metformin 1 g bid"


@pytest.fixture
def state_dir(tmp_path: Path) -> Iterator[Path]:
    directory = tmp_path / "services"
    yield directory
    stop_local_server(directory)


@pytest.fixture
def server(state_dir: Path, bao_binary: str) -> BaoServer:
    return start_local_server(state_dir, port=0, bao_binary=bao_binary)


def _state(state_dir: Path) -> dict[str, object]:
    return json.loads((state_dir / "openbao.json").read_text())


def _port(addr: str) -> int:
    return int(addr.rsplit(":", 1)[1])


def test_envelopes_made_before_a_restart_still_decrypt_after_it(server: BaoServer, state_dir: Path, bao_binary: str) -> None:
    with TransitKeyService(server.addr, server.token) as service:
        blob = encrypt_bytes(RECORD, service, aad=b"raw/patients.ndjson")
        data_key, wrapped = service.generate_data_key()

    assert stop_local_server(state_dir) is True
    assert not Path(f"/proc/{server.pid}").exists()
    restarted = start_local_server(state_dir, port=0, bao_binary=bao_binary)

    assert restarted.reused is False and restarted.pid != server.pid
    assert (restarted.addr, restarted.token) == (server.addr, server.token)  # recorded port was free again
    with TransitKeyService(restarted.addr, restarted.token) as service:
        assert service.unwrap_data_key(wrapped) == data_key
        assert decrypt_bytes(blob, service, aad=b"raw/patients.ndjson") == RECORD
        assert service.key_info().latest_version == 1  # the same key, not a re-created one


def test_start_twice_reuses_the_live_server(server: BaoServer, state_dir: Path, bao_binary: str) -> None:
    again = start_local_server(state_dir, port=0, bao_binary=bao_binary)

    assert (again.pid, again.addr, again.token) == (server.pid, server.addr, server.token)
    assert (server.reused, again.reused) == (False, True)
    assert again.mode == "persistent"


def test_state_is_private_and_records_the_unseal_key(server: BaoServer, state_dir: Path) -> None:
    assert (state_dir.stat().st_mode & 0o777) == 0o700
    assert server.data_dir == state_dir.resolve() / "data"
    assert (server.data_dir.stat().st_mode & 0o777) == 0o700
    for private in (server.state_file, server.log_file, state_dir / "openbao-config.json"):
        assert (private.stat().st_mode & 0o777) == 0o600, private
    assert all((f.stat().st_mode & 0o077) == 0 for f in server.data_dir.iterdir())
    state = _state(state_dir)
    assert state["mode"] == "persistent" and state["pid"] == server.pid and state["unseal_key"]
    assert read_connection(state_dir) == (server.addr, server.token)


def test_secrets_never_reach_the_log_the_command_line_or_the_environment(server: BaoServer, state_dir: Path) -> None:
    state = _state(state_dir)
    token, unseal_key = str(state["token"]), str(state["unseal_key"])
    log = server.log_file.read_text()
    assert "OpenBao server started" in log and "vault is unsealed" in log  # stdout and stderr both land here
    exposed = {
        "log": log,
        "cmdline": Path(f"/proc/{server.pid}/cmdline").read_bytes().decode(errors="replace"),
        "environ": Path(f"/proc/{server.pid}/environ").read_bytes().decode(errors="replace"),
        "config": (state_dir / "openbao-config.json").read_text(),
        "repr": repr(server),
        "status": json.dumps(server_status(state_dir)),
    }
    for where, text in exposed.items():
        assert token not in text and unseal_key not in text, where


def test_status_reports_a_sealed_server_and_start_unseals_it(server: BaoServer, state_dir: Path, bao_binary: str) -> None:
    status = server_status(state_dir)
    assert (status["running"], status["healthy"], status["sealed"], status["mode"]) == (True, True, False, "persistent")

    with requests.Session() as session:
        session.trust_env = False
        hvac.Client(url=server.addr, token=server.token, session=session).sys.seal()
    sealed = server_status(state_dir)
    assert (sealed["running"], sealed["healthy"], sealed["sealed"]) == (True, False, True)

    again = start_local_server(state_dir, port=0, bao_binary=bao_binary)
    assert (again.reused, again.pid) == (True, server.pid)
    assert server_status(state_dir)["healthy"] is True


def test_stop_keeps_the_record_and_status_says_stopped(server: BaoServer, state_dir: Path) -> None:
    assert stop_dev_server(state_dir) is True  # the name callers use stops both kinds

    status = server_status(state_dir)
    assert (status["running"], status["pid"], status["healthy"], status["mode"]) == (False, None, False, "persistent")
    state = _state(state_dir)
    assert state["unseal_key"] and state["token"] == server.token  # custody survives the stop
    assert stop_local_server(state_dir) is False


def test_lost_state_file_with_data_present_is_a_clear_error_and_wipes_nothing(
    server: BaoServer, state_dir: Path, bao_binary: str
) -> None:
    with TransitKeyService(server.addr, server.token) as service:
        blob = encrypt_bytes(RECORD, service)
    stop_local_server(state_dir)
    backup = (state_dir / "openbao.json").read_bytes()
    (state_dir / "openbao.json").unlink()

    with pytest.raises(OpenBaoServerError, match="unseal key.*cannot be recovered") as caught:
        start_local_server(state_dir, port=0, bao_binary=bao_binary)
    assert str(state_dir / "data") in str(caught.value)
    assert not (state_dir / "openbao.json").exists()
    assert server_status(state_dir)["running"] is False

    (state_dir / "openbao.json").write_bytes(backup)  # restoring the record brings the data back
    os.chmod(state_dir / "openbao.json", 0o600)
    restored = start_local_server(state_dir, port=0, bao_binary=bao_binary)
    with TransitKeyService(restored.addr, restored.token) as service:
        assert decrypt_bytes(blob, service) == RECORD


def test_restart_moves_to_a_free_port_when_the_recorded_one_is_taken(
    server: BaoServer, state_dir: Path, bao_binary: str
) -> None:
    with TransitKeyService(server.addr, server.token) as service:
        blob = encrypt_bytes(RECORD, service)
    stop_local_server(state_dir)
    with socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # the old server's sockets are in TIME_WAIT
        squatter.bind(("127.0.0.1", _port(server.addr)))
        squatter.listen()
        moved = start_local_server(state_dir, port=0, bao_binary=bao_binary)

    assert moved.addr != server.addr
    assert read_connection(state_dir) == (moved.addr, server.token)
    with TransitKeyService(moved.addr, moved.token) as service:
        assert decrypt_bytes(blob, service) == RECORD


def test_stop_never_signals_a_process_it_did_not_start_and_keeps_the_key(server: BaoServer, state_dir: Path) -> None:
    stop_local_server(state_dir)
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        state = _state(state_dir)
        (state_dir / "openbao.json").write_text(json.dumps({**state, "pid": bystander.pid}))
        assert stop_local_server(state_dir) is False
        assert bystander.poll() is None
        assert _state(state_dir)["unseal_key"] == state["unseal_key"]
    finally:
        bystander.kill()
        bystander.wait()


def test_a_dev_server_cannot_take_over_a_persistent_state_dir(server: BaoServer, state_dir: Path, bao_binary: str) -> None:
    before = (state_dir / "openbao.json").read_bytes()
    with pytest.raises(OpenBaoServerError, match="persistent OpenBao"):
        start_dev_server(state_dir, port=0, bao_binary=bao_binary)
    assert (state_dir / "openbao.json").read_bytes() == before


def test_a_live_dev_server_is_not_silently_replaced(tmp_path: Path, bao_binary: str) -> None:
    state_dir = tmp_path / "services"
    dev = start_dev_server(state_dir, port=0, bao_binary=bao_binary)
    try:
        with pytest.raises(OpenBaoServerError, match="medllm services down"):
            start_local_server(state_dir, port=0, bao_binary=bao_binary)
        assert server_status(state_dir)["running"] is True and server_status(state_dir)["pid"] == dev.pid
    finally:
        stop_dev_server(state_dir)
    persistent = start_local_server(state_dir, port=0, bao_binary=bao_binary)  # after `services down`
    try:
        assert persistent.mode == "persistent" and persistent.reused is False
    finally:
        stop_local_server(state_dir)
