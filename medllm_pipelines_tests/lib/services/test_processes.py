"""Supervisor primitives: only our own command line is ever signalled, ports are chosen in free pairs."""

from __future__ import annotations

import socket
import sys
import time
from pathlib import Path

import pytest

from medllm_pipelines.lib.services.processes import (
    PortTaken,
    choose_port_pair,
    pid_alive,
    port_free,
    port_of,
    runs_command,
    spawn,
    terminate,
)


def test_a_process_is_recognised_only_by_its_whole_command_line() -> None:
    child = spawn([sys.executable, "-c", "import time; time.sleep(30)", "server", "-dev"])
    python = Path(sys.executable).name
    try:
        deadline = time.monotonic() + 5.0  # until the forked child has exec'd (its cmdline is the parent's before)
        while not runs_command(child.pid, executables=[python], required=["server", "-dev"]):
            assert time.monotonic() < deadline, "the spawned command was never recognised"
            time.sleep(0.02)
        assert not runs_command(child.pid, executables=["bao"], required=["server"])
        assert not runs_command(child.pid, executables=[python], required=["server"], forbidden=["-dev"])
    finally:
        terminate(child.pid, 5.0)
    assert not pid_alive(child.pid)  # reaped: not left behind as a zombie that still "exists"
    assert not runs_command(child.pid, executables=[python], required=["server"])


def test_an_explicit_port_in_use_is_refused_and_a_free_pair_is_found_otherwise() -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        with pytest.raises(PortTaken, match=f"port {taken}"):
            choose_port_pair(taken, default=taken)
        chosen = choose_port_pair(None, default=taken)  # the default is taken: fall back to a free pair
    assert chosen != taken and port_free(chosen) and port_free(chosen + 1)


@pytest.mark.parametrize(("addr", "port"), [("http://127.0.0.1:8200", 8200), ("https://127.0.0.1:8300/", 8300)])
def test_port_of_an_address(addr: str, port: int) -> None:
    assert port_of(addr) == port
