"""`medllm principals add-client` and the demo client `make demo` leaves for a first API call."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medllm_pipelines.cli_serve import DEMO_CLIENT_PRINCIPAL, ensure_demo_client
from medllm_pipelines.lib.security.clients import ClientRegistry
from medllm_pipelines.lib.security.rbac import PrincipalRegistry
from medllm_pipelines.settings import load_settings
from medllm_pipelines_tests.cli_security.world import DENIED, World


def test_only_an_admin_with_mfa_issues_client_credentials(world: World) -> None:
    refused = world.cli("principals", "add-client", "clinician", "--as", "clinician", "--totp", world.code("clinician"))
    assert refused.exit_code == DENIED
    issued = world.cli("principals", "add-client", "clinician", "--json", "--as", "admin", "--totp", world.code("admin"))
    assert issued.exit_code == 0, issued.output
    credentials = json.loads(issued.stdout)
    clients = ClientRegistry(world.home / "security" / "clients.json", world.service)
    assert clients.authenticate(credentials["client_id"], credentials["client_secret"]).principal == "clinician"
    assert credentials["client_secret"] not in (world.home / "security" / "clients.json").read_text()
    assert credentials["client_secret"] not in world.audit_path.read_text()
    assert world.last_decision("admin").action == "manage_roles"


def test_the_demo_client_file_is_private_and_authenticates(world: World, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "demo-home"
    for key, value in world.env(MEDLLM_HOME=str(home)).items():
        if value is None:
            monkeypatch.delenv(key, raising=False)
        else:
            monkeypatch.setenv(key, value)
    settings = load_settings()
    path = ensure_demo_client(settings)
    assert path == settings.demo_client_file and path.stat().st_mode & 0o777 == 0o600
    credentials = json.loads(path.read_text())
    client = ClientRegistry(settings.clients_file, world.service).authenticate(credentials["client_id"],
                                                                                credentials["client_secret"])
    assert client.principal == DEMO_CLIENT_PRINCIPAL
    assert PrincipalRegistry(settings.principals_file, world.service).get(DEMO_CLIENT_PRINCIPAL).role == "clinician"
    again = json.loads(ensure_demo_client(settings).read_text())  # a second demo issues a new client, same principal
    assert again["client_id"] != credentials["client_id"]
    # the demo's clinician does not close the bootstrap window: the first admin can still be added
    assert world.cli("principals", "add", "boss", "--role", "admin", home=home).exit_code == 0
    intruder = world.cli("principals", "add", "intruder", "--role", "admin", home=home)
    assert intruder.exit_code == 2 and "say who is acting" in intruder.output  # now an admin must act
