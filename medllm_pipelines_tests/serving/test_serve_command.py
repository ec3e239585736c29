"""`medllm serve --workers 2` as an operator runs it: ready after loading, every worker serving, metrics of all."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx2 as httpx

from medllm_pipelines.lib.security.clients import ClientRegistry
from medllm_pipelines.lib.security.rbac import PrincipalRegistry
from medllm_pipelines_tests.conftest_lifecycle import ENV_KEYS
from medllm_pipelines_tests.lib.scenarios.test_diagnosis_assessor import LOINC_ROWS, bundle

MEDLLM = Path(sys.executable).with_name("medllm")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_two_workers_serve_the_packaged_champions(tmp_path: Path, openbao_server: Any, transit_service: Any,
                                                 packages: Path) -> None:
    home = tmp_path / "home"
    (home / "security").mkdir(parents=True)
    PrincipalRegistry(home / "security" / "principals.json", transit_service).add_principal("ops-clinician",
                                                                                           "clinician")
    client = ClientRegistry(home / "security" / "clients.json", transit_service).add("ops-clinician")
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k not in ENV_KEYS and not k.startswith(("MEDLLM_", "PROMETHEUS"))}
    env.update(MEDLLM_HOME=str(home), VAULT_ADDR=openbao_server.addr, VAULT_TOKEN=openbao_server.token,
               MEDLLM_SERVE_MODELS_DIR=str(packages), MEDLLM_REDIS_PREFIX=f"serve-cmd-{uuid.uuid4().hex[:8]}:")
    process = subprocess.Popen([str(MEDLLM), "serve", "--port", str(port), "--workers", "2"], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline, ready = time.time() + 120, None
        while time.time() < deadline and process.poll() is None:
            try:
                ready = httpx.get(base + "/readyz", timeout=2.0)
                if ready.status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        assert ready is not None and ready.status_code == 200, ready.text if ready is not None else "never answered"
        assert ready.json()["models"]["t2d_risk"]["version"] == "1"
        token = httpx.post(base + "/v1/auth/token", data={"grant_type": "client_credentials",
                                                          "client_id": client.client_id,
                                                          "client_secret": client.client_secret}).json()
        headers = {"Authorization": f"Bearer {token['access_token']}"}
        with httpx.Client(base_url=base, headers=headers, timeout=30.0) as session:
            answers = [session.post("/v1/diagnosis/risk?explain=false", json=bundle(LOINC_ROWS)) for _ in range(12)]
        assert {a.status_code for a in answers} == {200}
        metrics = httpx.get(base + "/metrics").text
        served = [line for line in metrics.splitlines() if line.startswith("medllm_model_version_served")]
        assert any('model="t2d_risk"' in line and 'version="1"' in line for line in served)
        counted = [line for line in metrics.splitlines()
                   if line.startswith('medllm_http_requests_total{method="POST",route="/v1/diagnosis/risk"')]
        assert counted and float(counted[0].rsplit(" ", 1)[1]) == 12  # both workers' requests, from either
    finally:
        process.terminate()
        output = process.communicate(timeout=30)[0]
    assert process.returncode == 0, output[-2000:]
    logs = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    assert any(entry["logger"] == "medllm.serving.access" and entry.get("route") == "/v1/diagnosis/risk"
               for entry in logs)
    assert not any("Zhang" in line or "MRN-778812" in line for line in output.splitlines())
