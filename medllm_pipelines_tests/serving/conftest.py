"""A running service on a throw-away home: the session's OpenBao, the local Redis, principals of every role."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyotp
import pytest
from fastapi.testclient import TestClient

from medllm_pipelines.lib.security.clients import ClientRegistry
from medllm_pipelines.lib.security.rbac import PrincipalRegistry
from medllm_pipelines.serving.app import create_app
from medllm_pipelines.serving.context import ServiceContext, build_context
from medllm_pipelines.serving.scenarios import warm
from medllm_pipelines.settings import load_settings, serving_settings

ROLES = ("clinician", "data_engineer", "ml_engineer", "auditor", "privacy_officer", "admin")


@dataclass
class Service:
    client: TestClient
    ctx: ServiceContext
    home: Path
    credentials: dict[str, tuple[str, str]]  # role -> (client_id, secret)
    authenticators: dict[str, pyotp.TOTP]

    def token(self, role: str = "clinician") -> str:
        client_id, secret = self.credentials[role]
        response = self.client.post("/v1/auth/token", data={"grant_type": "client_credentials",
                                                             "client_id": client_id, "client_secret": secret})
        assert response.status_code == 200, response.text
        return str(response.json()["access_token"])

    def headers(self, role: str = "clinician", **extra: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(role)}", **extra}


def start_service(home: Path, keys: Any, env: dict[str, str] | None = None,
                  prepare: Callable[[PrincipalRegistry, ClientRegistry], None] | None = None) -> Iterator[Service]:
    environ = {"MEDLLM_HOME": str(home), "MEDLLM_REDIS_URL": "redis://127.0.0.1:6379/0",
               "MEDLLM_REDIS_PREFIX": f"medllm-test-{uuid.uuid4().hex[:12]}:", **(env or {})}
    settings = load_settings(environ)
    serving = serving_settings(settings, environ)
    settings.security_dir.mkdir(parents=True, exist_ok=True)
    registry = PrincipalRegistry(settings.principals_file, keys)
    clients = ClientRegistry(settings.clients_file, keys)
    credentials: dict[str, tuple[str, str]] = {}
    authenticators: dict[str, pyotp.TOTP] = {}
    for role in ROLES:
        name = f"test-{role.replace('_', '-')}"
        registry.add_principal(name, role)
        issued = clients.add(name)
        credentials[role] = (issued.client_id, issued.client_secret)
    authenticators["clinician"] = pyotp.parse_uri(registry.enrol_totp("test-clinician"))
    import datetime as dt

    earlier = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=60)
    assert registry.confirm_totp("test-clinician", authenticators["clinician"].at(earlier), now=earlier).ok
    if prepare:
        prepare(registry, clients)
    app = create_app(lambda: build_context(settings, serving, keys, warm=warm, start_refresh=False),
                     max_body_bytes=serving.max_body_bytes)
    with TestClient(app, raise_server_exceptions=False) as client:
        yield Service(client, app.state.ctx, home, credentials, authenticators)


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory, transit_service: Any) -> Iterator[Service]:
    home = tmp_path_factory.mktemp("serve")
    # A prefix of its own per module: limits and cache entries of other test runs never meet these.
    yield from start_service(home, transit_service, {"MEDLLM_SERVE_RATE_LIMIT_PER_MINUTE": "100000"})


@pytest.fixture
def unique() -> str:
    return uuid.uuid4().hex[:8]


@pytest.fixture(scope="session")
def packages(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """t2d_risk, lesion_classifier and lesion_segmentation v1, small real models trained here (~10 s)."""
    from medllm_pipelines_tests.serving.packaged import packaged_models

    return packaged_models(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, transit_service: Any, packages: Path) -> Iterator[Service]:
    """A service with those models (a fresh copy: tests may add versions)."""
    import shutil

    home = tmp_path_factory.mktemp("serve-models")
    models = home / "packages"
    shutil.copytree(packages, models)
    yield from start_service(home, transit_service, {"MEDLLM_SERVE_MODELS_DIR": str(models),
                                                     "MEDLLM_SERVE_RATE_LIMIT_PER_MINUTE": "100000"})
