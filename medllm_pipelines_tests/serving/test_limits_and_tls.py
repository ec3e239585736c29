"""Rate limits and the result cache in Redis; TLS on loopback with a throw-away CA."""

from __future__ import annotations

import os
import socket
import ssl
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest
import uvicorn

from medllm_pipelines.serving.limits import RateLimiter, ResultCache, connect_redis
from medllm_pipelines_tests.serving.conftest import start_service
from medllm_pipelines_tests.tls import make_certificates

REDIS_URL = "redis://127.0.0.1:6379/0"


@pytest.fixture
def redis_client() -> Any:
    client = connect_redis(REDIS_URL)
    if client is None:
        pytest.skip("Redis is not running at 127.0.0.1:6379")
    return client


def test_the_rate_limit_is_shared_through_redis(redis_client: Any) -> None:
    prefix = f"medllm:test-rl:{uuid.uuid4().hex}:"
    worker_a, worker_b = RateLimiter(redis_client, 3, prefix=prefix), RateLimiter(redis_client, 3, prefix=prefix)
    now = 1_000_000.0
    decisions = [worker_a.hit("p:alice", now=now), worker_b.hit("p:alice", now=now), worker_a.hit("p:alice", now=now),
                 worker_b.hit("p:alice", now=now)]
    assert [d.allowed for d in decisions] == [True, True, True, False]  # two workers, one budget
    assert worker_a.hit("p:bob", now=now).allowed and worker_a.hit("p:alice", now=now + 60).allowed


def test_without_redis_limits_are_per_process() -> None:
    limiter = RateLimiter(None, 2)
    assert [limiter.hit("k", now=0.0).allowed for _ in range(3)] == [True, True, False]


def test_the_cache_keys_by_hmac_and_encrypts_values(redis_client: Any) -> None:
    prefix = f"medllm:test-cache:{uuid.uuid4().hex}:"
    cache = ResultCache(redis_client, os.urandom(32), 60, prefix=prefix)
    patient = {"name": "Ingrid Vasquez-Holloway", "hba1c": 7.2}
    key = cache.key("diagnosis", {"t2d_risk": "3"}, patient)
    cache.put(key, {"probability": 0.81, "echo": patient["name"]})
    assert cache.get(key) == {"probability": 0.81, "echo": patient["name"]}
    raw = b"".join(redis_client.get(k) or b"" for k in redis_client.scan_iter(prefix + "*"))
    assert raw and b"Ingrid" not in raw and b"0.81" not in raw  # neither the input nor the result in clear
    assert "Ingrid" not in key and "7.2" not in key
    assert cache.key("diagnosis", {"t2d_risk": "4"}, patient) != key  # a new model version never reads old results
    other = ResultCache(redis_client, os.urandom(32), 60, prefix=prefix)
    assert other.get(key) is None  # another secret cannot read (or forge) entries


def test_a_principal_over_its_rate_gets_429(tmp_path: Path, transit_service: Any) -> None:
    if connect_redis(REDIS_URL) is None:
        pytest.skip("Redis is not running")
    for service in start_service(tmp_path, transit_service, {"MEDLLM_SERVE_RATE_LIMIT_PER_MINUTE": "3"}):
        headers = service.headers("clinician")
        for _ in range(3):  # a minute boundary between the calls resets the window: try again in the next one
            window = int(time.time() // 60)
            responses = [service.client.get("/v1/models", headers=headers) for _ in range(4)]
            if int(time.time() // 60) == window:
                break
        assert [r.status_code for r in responses] == [200, 200, 200, 429]
        assert responses[-1].json()["reason"] == "rate_limited" and int(responses[-1].headers["retry-after"]) <= 60


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_the_service_speaks_tls_with_a_given_certificate(tmp_path: Path, transit_service: Any) -> None:
    ca_file, cert_file, key_file = make_certificates(tmp_path)
    for service in start_service(tmp_path / "home", transit_service):
        port = _free_port()
        server = uvicorn.Server(uvicorn.Config(service.client.app, host="127.0.0.1", port=port, log_level="warning",
                                               ssl_certfile=str(cert_file), ssl_keyfile=str(key_file),
                                               lifespan="off"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        try:
            deadline = time.time() + 10
            while not server.started and time.time() < deadline:
                time.sleep(0.05)
            context = ssl.create_default_context(cafile=str(ca_file))
            response = httpx.get(f"https://127.0.0.1:{port}/healthz", verify=context)
            assert response.status_code == 200 and response.json() == {"status": "ok"}
            with pytest.raises(httpx.ConnectError):  # a client that does not trust the CA refuses the server
                httpx.get(f"https://127.0.0.1:{port}/healthz", verify=ssl.create_default_context())
        finally:
            server.should_exit = True
            thread.join(timeout=10)


