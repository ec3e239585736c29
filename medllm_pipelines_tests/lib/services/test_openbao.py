"""Dev server lifecycle behind `medllm services up|down|status`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from medllm_pipelines.lib.security.errors import OpenBaoServerError
from medllm_pipelines.lib.security.vault_client import TransitKeyService
from medllm_pipelines.lib.services.openbao import (
    BaoServer,
    read_connection,
    server_status,
    start_dev_server,
    stop_dev_server,
)


@pytest.fixture
def state_dir(tmp_path: Path) -> Iterator[Path]:
    directory = tmp_path / "state"
    yield directory
    stop_dev_server(directory)


@pytest.fixture
def server(state_dir: Path, bao_binary: str) -> BaoServer:
    return start_dev_server(state_dir, port=0, bao_binary=bao_binary)


def test_start_is_idempotent_and_reuses_the_running_server(server: BaoServer, state_dir: Path, bao_binary: str) -> None:
    again = start_dev_server(state_dir, port=0, bao_binary=bao_binary)

    assert (again.pid, again.addr, again.token) == (server.pid, server.addr, server.token)
    assert (server.reused, again.reused) == (False, True)


def test_started_server_has_transit_and_the_project_keys(server: BaoServer) -> None:
    service = TransitKeyService(server.addr, server.token)
    assert service.health() == {"initialized": True, "sealed": False, "standby": False, "version": "2.7.2"}
    assert service.key_info("medllm-raw-zone").key_type == "aes256-gcm96"
    assert service.key_info("medllm-pseudonym").key_type == "hmac"


def test_state_is_private_and_complete(server: BaoServer, state_dir: Path) -> None:
    assert (state_dir.stat().st_mode & 0o777) == 0o700
    assert (server.state_file.stat().st_mode & 0o777) == 0o600
    assert (server.log_file.stat().st_mode & 0o777) == 0o600
    state = json.loads(server.state_file.read_text())
    assert set(state) == {"addr", "token", "pid", "started_at", "binary"}
    assert read_connection(state_dir) == (server.addr, server.token)


def test_token_is_not_in_the_log_the_arguments_or_the_repr(server: BaoServer, state_dir: Path) -> None:
    log = server.log_file.read_text()
    assert "vault is unsealed" in log  # the log is really bao's output
    assert server.token not in log
    assert server.token not in Path(f"/proc/{server.pid}/cmdline").read_bytes().decode(errors="replace")
    assert server.token not in repr(server)
    assert sorted(p.name for p in state_dir.iterdir()) == ["openbao.json", "openbao.lock", "openbao.log"]


def test_status_reports_health_without_the_token(server: BaoServer, state_dir: Path) -> None:
    status = server_status(state_dir)
    assert status["running"] and status["healthy"] and status["sealed"] is False
    assert (status["pid"], status["addr"]) == (server.pid, server.addr)
    assert server.token not in json.dumps(status)


def test_stop_ends_the_process_and_a_second_stop_is_a_no_op(server: BaoServer, state_dir: Path) -> None:
    assert stop_dev_server(state_dir) is True

    assert not Path(f"/proc/{server.pid}").exists()
    assert not server.state_file.exists()
    assert server_status(state_dir)["running"] is False
    assert stop_dev_server(state_dir) is False


def test_stop_never_signals_a_process_it_did_not_start(state_dir: Path) -> None:
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        state_dir.mkdir(mode=0o700)
        (state_dir / "openbao.json").write_text(
            json.dumps({"addr": "http://127.0.0.1:8200", "token": "x", "pid": bystander.pid})
        )
        assert stop_dev_server(state_dir) is False
        assert bystander.poll() is None
        assert not (state_dir / "openbao.json").exists()  # stale record cleared
    finally:
        bystander.kill()
        bystander.wait()


def test_stale_state_file_is_replaced_by_a_fresh_server(state_dir: Path, bao_binary: str) -> None:
    state_dir.mkdir(mode=0o700)
    (state_dir / "openbao.json").write_text(json.dumps({"addr": "http://127.0.0.1:1", "token": "x", "pid": os.getpid()}))

    server = start_dev_server(state_dir, port=0, bao_binary=bao_binary)

    assert server.reused is False and server.pid != os.getpid()
    assert server_status(state_dir)["healthy"] is True


def test_read_connection_refuses_a_state_file_others_can_read(server: BaoServer, state_dir: Path) -> None:
    os.chmod(server.state_file, 0o644)
    with pytest.raises(OpenBaoServerError, match="chmod 600") as caught:
        read_connection(state_dir)
    assert server.token not in str(caught.value)


def test_read_connection_without_server_says_how_to_start_one(tmp_path: Path) -> None:
    with pytest.raises(OpenBaoServerError, match="medllm services up"):
        read_connection(tmp_path)


def test_missing_binary_is_a_clear_error(state_dir: Path) -> None:
    with pytest.raises(OpenBaoServerError, match="binary was not found"):
        start_dev_server(state_dir, port=0, bao_binary=str(state_dir.parent / "no-such-bao"))


def test_failed_start_explains_itself_without_the_token(state_dir: Path, tmp_path: Path) -> None:
    """bao prints CLI errors on stdout, next to the token; only redacted errors surface."""
    fake = tmp_path / "bin" / "bao"
    fake.parent.mkdir()
    fake.write_text(
        "#!/bin/sh\n"
        'echo "Root Token: $BAO_DEV_ROOT_TOKEN_ID"\n'
        'echo "Error initializing Dev mode: failed to create root token with ID \\"$BAO_DEV_ROOT_TOKEN_ID\\""\n'
        'echo "core: starting" >&2\n'
        "exit 1\n"
    )
    fake.chmod(0o700)

    with pytest.raises(OpenBaoServerError) as caught:
        start_dev_server(state_dir, port=0, bao_binary=str(fake))

    message = str(caught.value)
    assert "exited with code 1" in message and "core: starting" in message
    assert 'failed to create root token with ID "<redacted>"' in message
    assert "medllm-dev-" not in message and "Root Token" not in message
    assert not (state_dir / "openbao.json").exists() and not (state_dir / ".openbao.stdout").exists()


def test_explicit_port_in_use_is_refused(server: BaoServer, tmp_path: Path, bao_binary: str) -> None:
    port = int(server.addr.rsplit(":", 1)[1])
    with pytest.raises(OpenBaoServerError, match=f"port {port}"):
        start_dev_server(tmp_path / "other", port=port, bao_binary=bao_binary)
