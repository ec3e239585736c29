"""The production deployment files of the REST service (infra/serving, infra/prometheus), rows P3/P4.

What an operator would trip over: a replica the balancer does not know, a dependency started before it is
healthy, a variable the service never reads, a secret in a committed file, a body limit that differs between
nginx and the service, alert rules on metrics the service does not export or that never fire, and a Vault
policy too narrow for a worker to start. ``promtool`` and ``nginx`` are used when installed (PROMTOOL,
NGINX name other binaries); the OpenBao check runs the pinned ``bao`` with the compose file's configuration.
"""

from __future__ import annotations

import contextlib
import http.client
import http.server
import json
import os
import re
import shutil
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase

from medllm_pipelines.lib.services.processes import choose_port_pair
from medllm_pipelines.serving import metrics
from medllm_pipelines.settings import load_settings, serving_settings
from medllm_pipelines_tests.tls import make_certificates

REPO = Path(__file__).resolve().parents[1]
SERVING = REPO / "infra" / "serving"
PROMETHEUS = REPO / "infra" / "prometheus"
COMPOSE = SERVING / "compose.yaml"
NGINX_CONF = SERVING / "nginx.conf"
DOCKERFILE = SERVING / "Dockerfile"
ENV_EXAMPLE = SERVING / ".env.example"
RULES = PROMETHEUS / "medllm-serving.rules.yml"
PROMETHEUS_CONF = PROMETHEUS / "prometheus.yml"
OPS_DOC = REPO / "docs" / "serving_operations.md"

BACKING_SERVICES = ("nginx", "redis", "postgres", "openbao", "mlflow", "prometheus")
# What the replicas may be configured with: settings.py's variables, uvicorn's proxy trust list.
REPLICA_VARIABLES = re.compile(r"^(MEDLLM_HOME|MLFLOW_TRACKING_URI|VAULT_ADDR|VAULT_TOKEN|VAULT_CACERT|"
                               r"MEDLLM_REDIS_URL|MEDLLM_SERVE_[A-Z_]+|FORWARDED_ALLOW_IPS)$")
_INTERPOLATION = re.compile(r"\$\{([A-Za-z0-9_]+)(?:(:?[-?])([^}]*))?\}")
PROMQL_WORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right", "bool",
                "offset"}
# Prometheus' own series for every target (scrape health); no exporter defines it.
PROMETHEUS_SERIES = {"up"}


# --- readers -----------------------------------------------------------------------------------------------
def env_example() -> dict[str, str]:
    values = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, value = line.partition("=")
            values[name.strip()] = value.strip()
    return values


def interpolate(text: str, env: Mapping[str, str]) -> str:
    """Compose's ``${VAR}``, ``${VAR:-default}``, ``${VAR:?error}`` and ``$$`` (a literal ``$``)."""

    def value(match: re.Match[str]) -> str:
        name, operator, argument = match.group(1), match.group(2), match.group(3)
        if env.get(name):
            return env[name]
        if operator and operator.endswith("-"):
            return argument
        raise AssertionError(f"{name} is required by compose.yaml and has no value")

    return _INTERPOLATION.sub(value, text.replace("$$", "\0")).replace("\0", "$")


def filled_env() -> dict[str, str]:
    """.env.example with a placeholder for every secret an operator must fill in."""
    return {name: value or f"placeholder-{name.lower().replace('_', '-')}" for name, value in env_example().items()}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def resolved_compose() -> dict[str, Any]:
    return yaml.safe_load(interpolate(COMPOSE.read_text(), filled_env()))


def replicas(compose: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The services that run the API: the image's default command with a Vault token."""
    return {name: spec for name, spec in compose["services"].items()
            if "VAULT_TOKEN" in (spec.get("environment") or {}) and "command" not in spec}


def nginx_upstreams() -> list[str]:
    block = re.search(r"upstream\s+medllm_serving\s*\{(.*?)\}", NGINX_CONF.read_text(), re.S)
    assert block, "nginx.conf has no medllm_serving upstream"
    return re.findall(r"^\s*server\s+(\S+?)[\s;]", block.group(1), re.M)


def nginx_body_limit() -> int:
    size = re.search(r"client_max_body_size\s+(\d+)([kKmMgG]?)\s*;", NGINX_CONF.read_text())
    assert size, "nginx.conf sets no client_max_body_size"
    return int(size.group(1)) * {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}[size.group(2).lower()]


def dockerfile_instructions() -> list[tuple[str, str]]:
    joined = re.sub(r"\\\n", " ", "\n".join(line for line in DOCKERFILE.read_text().splitlines()
                                            if not line.lstrip().startswith("#")))
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line.strip() else "")
            for line in joined.splitlines() if line.strip()]


def exported_metric_names() -> set[str]:
    """The sample names metrics.py's collectors expose (a Counter adds _total, a Histogram _bucket...)."""
    suffixes = {"counter": ("_total", "_created"), "gauge": ("",), "histogram": ("_bucket", "_count", "_sum", "_created"),
                "summary": ("", "_count", "_sum", "_created")}
    names: set[str] = set()
    for value in vars(metrics).values():
        if isinstance(value, MetricWrapperBase):
            for family in value.describe():
                names.update(family.name + suffix for suffix in suffixes[family.type])
    return names


def referenced_series(expr: str) -> set[str]:
    """Metric names a PromQL expression selects (functions, keywords, labels and durations removed)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)
    text = re.sub(r"\{[^}]*\}", "", text)
    text = re.sub(r"\[[^\]]*\]", "", text)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for match in re.finditer(r"(?<![\w.])[A-Za-z_:][\w:]*", text):
        following = text[match.end():].lstrip()
        if match.group(0) in PROMQL_WORDS or following.startswith("("):
            continue
        names.add(match.group(0))
    return names


def alert_rules() -> list[dict[str, Any]]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


def binary(variable: str, name: str) -> str | None:
    return os.environ.get(variable) or shutil.which(name)


# --- compose ----------------------------------------------------------------------------------------------
def test_two_replicas_of_the_service_sit_behind_nginx_and_are_scraped_one_by_one(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name in BACKING_SERVICES:
        assert name in services, f"compose.yaml has no {name} service"
    serving = replicas(compose)
    assert len(serving) == 2, sorted(serving)
    first, second = serving.values()
    assert first["image"] == second["image"] and first["environment"] == second["environment"]
    assert {f"{name}:8000" for name in serving} == set(nginx_upstreams())
    scrape = yaml.safe_load(PROMETHEUS_CONF.read_text())["scrape_configs"]
    job = next(config for config in scrape if config["job_name"] == "medllm-serving")
    assert sorted(target for group in job["static_configs"] for target in group["targets"]) == \
        sorted(f"{name}:8000" for name in serving)
    # nginx resolves upstream names once: a recreated replica must come back on the same address
    for name, spec in serving.items():
        assert spec["networks"]["edge"]["ipv4_address"], name
    assert spec["environment"]["FORWARDED_ALLOW_IPS"] == services["nginx"]["networks"]["edge"]["ipv4_address"]


def test_every_service_has_a_healthcheck_and_starts_after_its_dependencies_are_healthy(
        compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name, spec in services.items():
        assert spec.get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
        for dependency, condition in (spec.get("depends_on") or {}).items():
            assert condition == {"condition": "service_healthy"}, (name, dependency)
            assert dependency in services
    for name, spec in replicas(compose).items():
        assert "/readyz" in " ".join(spec["healthcheck"]["test"]), f"{name} must be healthy only when ready"
        assert set(spec["depends_on"]) == {"openbao", "redis", "postgres", "mlflow"}
    assert set(services["nginx"]["depends_on"]) == set(replicas(compose))


def test_openbao_runs_as_a_tls_server_never_in_dev_mode(compose: dict[str, Any]) -> None:
    bao = compose["services"]["openbao"]
    assert "-dev" not in " ".join(bao["command"]) and not any(k.startswith("BAO_DEV") for k in bao["environment"])
    config = compose["configs"]["openbao-config"]["content"]
    assert 'storage "raft"' in config and "tls_disable" not in config and "tls_cert_file" in config
    for spec in replicas(compose).values():
        assert spec["environment"]["VAULT_ADDR"].startswith("https://")


def test_the_replicas_read_only_the_service_settings_and_resolve_to_production(
        resolved_compose: dict[str, Any], tmp_path: Path) -> None:
    replica = next(iter(replicas(resolved_compose).values()))
    env = {name: str(value) for name, value in replica["environment"].items()}
    unknown = sorted(name for name in env if not REPLICA_VARIABLES.match(name))
    assert not unknown, f"variables the service does not read: {unknown}"
    env["MEDLLM_HOME"] = str(tmp_path)  # load_settings resolves the path on this machine
    settings = load_settings(env)
    serving = serving_settings(settings, env)
    assert settings.component_modes()["vault"] == "external vault"
    assert settings.component_modes()["mlflow"] == "tracking server"
    assert serving.store_url.startswith("postgresql+psycopg2://") and serving.redis_url.startswith("redis://")
    # every MEDLLM_SERVE_* knob in compose is one the service reads: changing it changes the settings
    for name in (n for n in env if n.startswith("MEDLLM_SERVE_") and n != "MEDLLM_SERVE_STORE_URL"):
        other = "challenger" if name.endswith("_ALIAS") else str(int(float(env[name])) * 2 + 1)
        assert serving_settings(settings, dict(env, **{name: other})) != serving, f"{name} is not read"


def test_nginx_and_the_service_limit_request_bodies_alike(compose: dict[str, Any]) -> None:
    default_limit = serving_settings(load_settings({}), {}).max_body_bytes
    compose_default = re.search(r"\$\{MEDLLM_SERVE_MAX_BODY_BYTES:-(\d+)\}", COMPOSE.read_text())
    assert compose_default and int(compose_default.group(1)) == default_limit
    assert int(env_example()["MEDLLM_SERVE_MAX_BODY_BYTES"]) == default_limit
    assert nginx_body_limit() == default_limit
    assert f"limited to {default_limit} bytes" in NGINX_CONF.read_text()


def test_secrets_come_only_from_the_uncommitted_env_file(compose: dict[str, Any]) -> None:
    text = COMPOSE.read_text()
    documented = set(env_example())
    interpolated = {match.group(1) for match in _INTERPOLATION.finditer(text.replace("$$", ""))}
    assert interpolated == documented, (sorted(interpolated - documented), sorted(documented - interpolated))
    required = {m.group(1) for m in _INTERPOLATION.finditer(text.replace("$$", "")) if m.group(2) == ":?"}
    assert required == {name for name, value in env_example().items() if not value}
    assert all("PASSWORD" in name or "TOKEN" in name for name in required)
    for service, spec in compose["services"].items():
        for name, value in (spec.get("environment") or {}).items():
            if re.search(r"PASSWORD|TOKEN", name) or re.search(r"://[^/@]*:[^/@]*@", str(value)):
                assert "${" in str(value), f"{service}.{name} holds a literal secret"
    assert all(entry["file"].startswith("./secrets/") for entry in compose["secrets"].values())


def test_the_postgres_init_script_is_valid_shell(resolved_compose: dict[str, Any], tmp_path: Path) -> None:
    script = tmp_path / "init.sh"
    script.write_text(resolved_compose["configs"]["postgres-init"]["content"])
    subprocess.run(["sh", "-n", str(script)], check=True)
    for database in ("medllm_serve", "medllm_warehouse", "mlflow"):
        assert f"CREATE DATABASE {database} OWNER" in script.read_text()


# --- Dockerfile -------------------------------------------------------------------------------------------
def test_the_image_pins_cpu_torch_installs_the_lock_and_runs_the_service_unprivileged() -> None:
    instructions = dockerfile_instructions()
    kinds = [kind for kind, _ in instructions]
    assert instructions[0] == ("FROM", "python:3.11-slim")
    args = dict(arg.split("=", 1) for kind, arg in instructions if kind == "ARG" and "=" in arg)
    pyproject_torch = re.search(r'"torch==([^"]+)"', (REPO / "pyproject.toml").read_text())
    assert pyproject_torch and args["TORCH_VERSION"] == pyproject_torch.group(1) == "2.13.0"
    runs = [arg for kind, arg in instructions if kind == "RUN"]
    assert any("--index-url https://download.pytorch.org/whl/cpu" in run and '"torch==${TORCH_VERSION}"' in run
               for run in runs)
    assert any("-c requirements.lock" in run and "pip install" in run for run in runs)
    users = [arg for kind, arg in instructions if kind == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert kinds.index("USER") < kinds.index("CMD")
    health = next(arg for kind, arg in instructions if kind == "HEALTHCHECK")
    assert "/healthz" in health
    cmd = json.loads(next(arg for kind, arg in instructions if kind == "CMD"))
    assert cmd == ["medllm", "serve", "--host", "0.0.0.0", "--port", "8000", "--workers", "2"]


# --- alert rules ------------------------------------------------------------------------------------------
def test_every_alert_has_a_duration_a_severity_and_a_runbook() -> None:
    rules = alert_rules()
    assert len(rules) >= 10
    for rule in rules:
        assert rule["alert"] and rule["expr"].strip(), rule
        assert re.fullmatch(r"\d+[smh]", str(rule["for"])), rule["alert"]
        assert rule["labels"]["severity"] in ("critical", "warning"), rule["alert"]
        for field in ("summary", "description", "runbook"):
            assert len(str(rule["annotations"].get(field, ""))) > 20, (rule["alert"], field)


def test_alert_rules_use_only_metrics_the_service_exports() -> None:
    exported = exported_metric_names()
    assert {"medllm_http_requests_total", "medllm_http_request_duration_seconds_bucket",
            "medllm_http_errors_total", "medllm_cache_requests_total", "medllm_model_version_served"} <= exported
    used: set[str] = set()
    for rule in alert_rules():
        series = referenced_series(rule["expr"])
        assert series, rule["alert"]
        assert series <= exported | PROMETHEUS_SERIES, (rule["alert"], sorted(series - exported - PROMETHEUS_SERIES))
        used |= series
    assert {"medllm_http_requests_total", "medllm_http_request_duration_seconds_bucket", "medllm_http_errors_total",
            "medllm_cache_requests_total", "medllm_model_version_served", "up"} <= used


def test_the_metric_name_check_catches_an_unknown_metric() -> None:
    series = referenced_series('sum by (route) (rate(medllm_http_request_total{route=~"/v1/.*"}[5m] offset 1h)) > 0')
    assert series == {"medllm_http_request_total"} and not series <= exported_metric_names()


# Synthetic series (one sample a minute) and the alerts promtool must (not) raise from them.
PROMTOOL_TESTS = """
rule_files: [{rules}]
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      # 10 requests/s, 10 % of them 500: the 5xx alert fires
      - series: 'medllm_http_requests_total{{job="medllm-serving",instance="a",route="/v1/triage/sessions",method="POST",status="201"}}'
        values: '0+540x30'
      - series: 'medllm_http_requests_total{{job="medllm-serving",instance="a",route="/v1/triage/sessions",method="POST",status="500"}}'
        values: '0+60x30'
      # diagnosis: every request between 50 and 100 ms (p99 about 99 ms): fires; triage all under 20 ms: silent
      - series: 'medllm_http_request_duration_seconds_bucket{{job="medllm-serving",instance="a",route="/v1/diagnosis/risk",le="0.05"}}'
        values: '0x30'
      - series: 'medllm_http_request_duration_seconds_bucket{{job="medllm-serving",instance="a",route="/v1/diagnosis/risk",le="0.1"}}'
        values: '0+600x30'
      - series: 'medllm_http_request_duration_seconds_bucket{{job="medllm-serving",instance="a",route="/v1/diagnosis/risk",le="+Inf"}}'
        values: '0+600x30'
      - series: 'medllm_http_request_duration_seconds_bucket{{job="medllm-serving",instance="a",route="/v1/triage/sessions",le="0.02"}}'
        values: '0+600x30'
      - series: 'medllm_http_request_duration_seconds_bucket{{job="medllm-serving",instance="a",route="/v1/triage/sessions",le="+Inf"}}'
        values: '0+600x30'
      # 30 invalid tokens a minute
      - series: 'medllm_http_errors_total{{job="medllm-serving",instance="a",route="/v1/models",reason="token_invalid"}}'
        values: '0+30x30'
      # replica a serves a model, replica b answers but serves none, replica c is down
      - series: 'up{{job="medllm-serving",instance="a"}}'
        values: '1x30'
      - series: 'up{{job="medllm-serving",instance="b"}}'
        values: '1x30'
      - series: 'up{{job="medllm-serving",instance="c"}}'
        values: '1 1 0x28'
      - series: 'medllm_model_version_served{{job="medllm-serving",instance="a",model="t2d_risk",version="3",alias="champion",pid="7"}}'
        values: '1x30'
    alert_rule_test:
      - eval_time: 15m
        alertname: MedllmServingHigh5xxRate
        exp_alerts:
          - exp_labels: {{severity: critical, service: medllm-serving}}
      - eval_time: 15m
        alertname: MedllmServingDiagnosisLatencyHigh
        exp_alerts:
          - exp_labels: {{severity: warning, service: medllm-serving, scenario: diagnosis}}
      - eval_time: 15m
        alertname: MedllmServingTriageLatencyHigh
        exp_alerts: []
      - eval_time: 15m
        alertname: MedllmServingAuthFailureSpike
        exp_alerts:
          - exp_labels: {{severity: warning, service: medllm-serving, category: security}}
      - eval_time: 15m
        alertname: MedllmServingReplicaDown
        exp_alerts:
          - exp_labels: {{severity: critical, service: medllm-serving, job: medllm-serving, instance: c}}
      - eval_time: 15m
        alertname: MedllmServingNoModelServed
        exp_alerts:
          - exp_labels: {{severity: critical, service: medllm-serving, job: medllm-serving, instance: b}}
      - eval_time: 15m
        alertname: MedllmServingAllReplicasDown
        exp_alerts: []
"""


def test_the_alerts_fire_on_failures_and_stay_silent_otherwise(tmp_path: Path) -> None:
    promtool = binary("PROMTOOL", "promtool")
    if promtool is None:
        pytest.skip("promtool is not installed")
    check = subprocess.run([promtool, "check", "config", str(PROMETHEUS_CONF)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    # promtool compares annotations verbatim: test the expressions and labels on a copy without them
    rules = yaml.safe_load(RULES.read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            rule.pop("annotations")
    bare = tmp_path / "rules.yml"
    bare.write_text(yaml.safe_dump(rules))
    tests = tmp_path / "rules_test.yml"
    tests.write_text(PROMTOOL_TESTS.format(rules=json.dumps(str(bare))))
    result = subprocess.run([promtool, "test", "rules", str(tests)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


# --- nginx ------------------------------------------------------------------------------------------------
class _Replica(http.server.BaseHTTPRequestHandler):
    def _answer(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        self.rfile.read(length)
        body = json.dumps({"replica": self.server.server_port, "path": self.path,  # type: ignore[attr-defined]
                           "forwarded_for": self.headers.get("x-forwarded-for"),
                           "request_id": self.headers.get("x-request-id")}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _answer

    def log_message(self, *args: Any) -> None:
        pass


@contextlib.contextmanager
def running_balancer(tmp_path: Path, upstream_ports: list[int]) -> Iterator[tuple[int, Path]]:
    """nginx with nginx.conf (ports, certificates and temp paths moved under tmp_path) before ``upstream_ports``."""
    nginx = binary("NGINX", "nginx")
    if nginx is None:
        pytest.skip("nginx is not installed")
    ca, cert, key = make_certificates(tmp_path)
    https, plain = choose_port_pair(0, 0), choose_port_pair(0, 0)
    conf = NGINX_CONF.read_text()
    for number, port in enumerate(upstream_ports, start=1):
        conf = conf.replace(f"medllm-serve-{number}:8000", f"127.0.0.1:{port}")
    conf = conf.replace(" /tmp/", f" {tmp_path}/")
    # round robin is kept per worker process: one worker makes the rotation observable request by request
    conf = conf.replace("worker_processes auto;", "worker_processes 1;")
    conf = conf.replace("/run/secrets/lb_tls_cert", str(cert)).replace("/run/secrets/lb_tls_key", str(key))
    conf = re.sub(r"listen \[::\]:\d+[^;]*;", "", conf)
    conf = conf.replace("listen 443 ssl;", f"listen 127.0.0.1:{https} ssl;")
    conf = conf.replace("listen 80;", f"listen 127.0.0.1:{plain};")
    conf = conf.replace("listen 127.0.0.1:8081;", f"listen 127.0.0.1:{plain + 1};")
    (tmp_path / "logs").mkdir()
    config = tmp_path / "nginx.conf"
    config.write_text(conf.replace("\nhttp {", "\ndaemon off;\nhttp {", 1))
    process = subprocess.Popen([nginx, "-p", str(tmp_path), "-c", str(config), "-e", "/dev/stderr"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                probe = http.client.HTTPConnection("127.0.0.1", plain + 1, timeout=1)
                probe.request("GET", "/lb-health")
                assert probe.getresponse().status == 200
                break
            except OSError:
                assert process.poll() is None, process.stderr.read().decode() if process.stderr else ""
                assert time.monotonic() < deadline, "nginx did not start"
                time.sleep(0.1)
        yield https, ca
    finally:
        process.terminate()
        process.wait(10)


@pytest.fixture
def replica_servers() -> Iterator[list[int]]:
    servers = [http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Replica) for _ in range(2)]
    for server in servers:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    yield [server.server_port for server in servers]
    for server in servers:
        server.shutdown()
        server.server_close()


def _request(port: int, ca: Path, method: str, path: str, headers: dict[str, str] | None = None,
             body: bytes | None = None) -> tuple[int, dict[str, str], bytes]:
    connection = http.client.HTTPSConnection("127.0.0.1", port, timeout=10,
                                             context=ssl.create_default_context(cafile=str(ca)))
    connection.request(method, path, body=body, headers=headers or {})
    response = connection.getresponse()
    return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()


def test_nginx_balances_round_robin_limits_bodies_and_hides_metrics(tmp_path: Path,
                                                                     replica_servers: list[int]) -> None:
    with running_balancer(tmp_path, replica_servers) as (port, ca):
        answers = [json.loads(_request(port, ca, "GET", "/v1/models")[2]) for _ in range(4)]
        served_by = [answer["replica"] for answer in answers]
        assert set(served_by) == set(replica_servers) and served_by[:2] == served_by[2:]
        assert answers[0]["forwarded_for"] == "127.0.0.1" and len(answers[0]["request_id"]) == 32
        echoed = json.loads(_request(port, ca, "GET", "/healthz", {"X-Request-ID": "caller-0001"})[2])
        assert echoed["request_id"] == "caller-0001"
        assert _request(port, ca, "GET", "/metrics")[0] == 404
        limit = nginx_body_limit()
        assert _request(port, ca, "POST", "/v1/diagnosis/risk", body=b"x" * 1024)[0] == 200
        status, headers, body = _request(port, ca, "POST", "/v1/imaging/studies", body=b"x" * (limit + 1))
        assert status == 413 and headers["content-type"] == "application/problem+json"
        assert json.loads(body)["reason"] == "body_too_large"


def test_nginx_answers_a_problem_when_no_replica_is_reachable(tmp_path: Path) -> None:
    closed = [choose_port_pair(0, 0), choose_port_pair(0, 0)]  # nothing listens there
    with running_balancer(tmp_path, closed) as (port, ca):
        status, headers, body = _request(port, ca, "GET", "/v1/models")
    assert status == 503 and headers["content-type"] == "application/problem+json"
    assert json.loads(body)["reason"] == "upstream_unavailable" and headers["retry-after"] == "5"


# --- OpenBao: the compose file's server configuration and the service policy ------------------------------
# The operator's first-start procedure of docs/serving_operations.md, in the test's words: the transit keys
# the replicas use, created by an operator (the service token cannot create them).
OPERATOR_KEYS = {"medllm-service-tokens": ("type=ed25519",), "medllm-raw-zone": ("type=aes256-gcm96",),
                 "medllm-audit": ("type=hmac", "key_size=32")}


def _bao(bao: str, env: Mapping[str, str], *args: str, stdin: str | None = None) -> str:
    result = subprocess.run([bao, *args], env=dict(env), input=stdin, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, f"bao {args[0]} {args[1] if len(args) > 1 else ''}: {result.stderr[-500:]}"
    return result.stdout


@pytest.fixture
def compose_openbao(compose: dict[str, Any], tmp_path: Path) -> Iterator[tuple[str, Path, str]]:
    """bao started with compose.yaml's configuration (addresses and paths moved), initialised and unsealed as
    the operations doc says, with the service policy written and a token of that policy issued."""
    from medllm_pipelines.lib.services.openbao import find_bao_binary

    bao = find_bao_binary()
    if bao is None:
        pytest.skip("the pinned bao binary is not installed")
    ca, cert, key = make_certificates(tmp_path)
    port = choose_port_pair(0, 0)
    data = tmp_path / "raft"
    data.mkdir(mode=0o700)
    config = compose["configs"]["openbao-config"]["content"]
    for old, new in (("/openbao/file", str(data)), ("0.0.0.0:8200", f"127.0.0.1:{port}"),
                     ("0.0.0.0:8201", f"127.0.0.1:{port + 1}"), ("https://openbao:8200", f"https://127.0.0.1:{port}"),
                     ("https://openbao:8201", f"https://127.0.0.1:{port + 1}"),
                     ("/run/secrets/openbao_tls_cert", str(cert)), ("/run/secrets/openbao_tls_key", str(key))):
        assert old in config, old
        config = config.replace(old, new)
    (tmp_path / "openbao.hcl").write_text(config)
    policy = tmp_path / "medllm-serving.hcl"
    policy.write_text(compose["configs"]["openbao-serving-policy"]["content"])
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path), "BAO_ADDR": f"https://127.0.0.1:{port}",
           "BAO_CACERT": str(ca)}
    log = (tmp_path / "bao.log").open("wb")
    server = subprocess.Popen([bao, "server", f"-config={tmp_path / 'openbao.hcl'}"], env=env, stdout=log,
                              stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while subprocess.run([bao, "status"], env=env, capture_output=True).returncode not in (0, 2):
            assert server.poll() is None and time.monotonic() < deadline, (tmp_path / "bao.log").read_text()[-2000:]
            time.sleep(0.2)
        init = json.loads(_bao(bao, env, "operator", "init", "-key-shares=1", "-key-threshold=1", "-format=json"))
        _bao(bao, env, "operator", "unseal", init["unseal_keys_b64"][0])
        root = dict(env, BAO_TOKEN=init["root_token"])
        while subprocess.run([bao, "secrets", "enable", "transit"], env=root, capture_output=True).returncode:
            assert time.monotonic() < deadline, "transit could not be enabled (no Raft leader?)"
            time.sleep(0.5)
        for name, parameters in OPERATOR_KEYS.items():
            _bao(bao, root, "write", f"transit/keys/{name}", *parameters)
        _bao(bao, root, "policy", "write", "medllm-serving", str(policy))
        token = json.loads(_bao(bao, root, "token", "create", "-policy=medllm-serving", "-period=24h", "-orphan",
                                "-format=json"))["auth"]["client_token"]
        yield f"https://127.0.0.1:{port}", ca, token
    finally:
        server.terminate()
        server.wait(15)
        log.close()


@pytest.mark.vault
def test_a_worker_starts_and_serves_with_the_service_policy_over_tls(
        compose_openbao: tuple[str, Path, str], tmp_path: Path) -> None:
    from medllm_pipelines.lib.security.errors import VaultError
    from medllm_pipelines.lib.security.vault_client import TransitKeyService
    from medllm_pipelines.serving.context import build_context

    addr, ca, token = compose_openbao
    home = tmp_path / "home"
    env = {"MEDLLM_HOME": str(home), "VAULT_ADDR": addr, "VAULT_CACERT": str(ca), "MEDLLM_REDIS_URL": "none"}
    settings = load_settings(env)
    with TransitKeyService(addr, token, verify=str(ca)) as keys:
        ctx = build_context(settings, serving_settings(settings, env), keys, start_refresh=False)
        try:
            bearer, claims = ctx.issuer.issue("dr-tls", "clinician", "client-1")
            assert ctx.verifier.verify(bearer).subject == "dr-tls"
            note = ctx.document_store().create("ehr_note", {"text": "sealed"}, author="dr-tls")
            assert ctx.document_store().get("ehr_note", note.doc_id).document == {"text": "sealed"}
            ctx.audit.record(actor="dr-tls", role="clinician", action="api.test", resource="GET /v1/models",
                             outcome="succeeded", flush=True)
            assert ctx.audit.healthy
        finally:
            ctx.close()
        # least privilege: the service token can neither rotate its signing key nor use another key
        with pytest.raises(VaultError):
            keys.rotate_key("medllm-service-tokens")
        with pytest.raises(VaultError):
            keys.sign(b"data", key_name="medllm-export")
