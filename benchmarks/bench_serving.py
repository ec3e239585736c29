"""The REST service under load on loopback (issue 13 targets), against a bare FastAPI echo at the same concurrency.

A throw-away home with the project's OpenBao, a clinician client, small real models trained here and packaged
(t2d_risk, lesion_classifier, lesion_segmentation; `medllm package-model` packages), then `medllm serve
--workers 2` in a subprocess. wrk (Debian's package) drives the diagnosis endpoint with the result cache off (every
request a miss) with and without the SHAP explanation, and the echo endpoint (`serving_echo.py`, uvicorn, 2
workers) with the same body and concurrency. Triage turns and imaging studies are timed one request at a time.
Load generator, service and echo share the machine's cores: the figures are for this machine as a whole.

    .venv/bin/python benchmarks/bench_serving.py            # writes results/serving.json
    .venv/bin/python benchmarks/bench_serving.py --quick    # shorter runs, nothing written
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
VENV_BIN = Path(sys.executable).parent
sys.path.insert(0, str(ROOT))

WRK_SCRIPT = """
wrk.method = "POST"
wrk.body = io.open(os.getenv("BENCH_BODY")):read("*a")
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = os.getenv("BENCH_AUTH")
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_ready(url: str, timeout: float = 120.0) -> float:
    import httpx2 as httpx

    started = time.perf_counter()
    while time.perf_counter() - started < timeout:
        try:
            if httpx.get(url, timeout=2.0).status_code == 200:
                return time.perf_counter() - started
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{url} not ready after {timeout} s")


def _ms(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def wrk(url: str, body: Path, auth: str, seconds: int, connections: int, script: Path) -> dict[str, float]:
    env = {**os.environ, "BENCH_BODY": str(body), "BENCH_AUTH": auth}
    out = subprocess.run(["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(script), url],
                         capture_output=True, text=True, env=env, check=True).stdout
    latency = dict(re.findall(r"^\s+(50|75|90|99)%\s+(\S+)$", out, flags=re.M))
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"requests_per_s": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),  # type: ignore[union-attr]
            "p50_ms": _ms(latency["50"]), "p90_ms": _ms(latency["90"]), "p99_ms": _ms(latency["99"]),
            "non_2xx": int(non_2xx.group(1)) if non_2xx else 0, "connections": connections, "seconds": seconds}


def percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {"n": len(ordered), "p50_ms": round(statistics.median(ordered), 2),
            "p99_ms": round(ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))], 2),
            "mean_ms": round(statistics.fmean(ordered), 2)}


def prepare_home(home: Path) -> tuple[dict[str, str], str, str, Path]:
    from medllm_pipelines.defs.resources import vault_resource
    from medllm_pipelines.lib.security.clients import ClientRegistry
    from medllm_pipelines.lib.security.rbac import PrincipalRegistry
    from medllm_pipelines.lib.services.openbao import start_local_server
    from medllm_pipelines.settings import load_settings
    from medllm_pipelines.settings import prepare_home as prepare
    from medllm_pipelines_tests.serving.packaged import packaged_models

    env = {"MEDLLM_HOME": str(home)}
    settings = load_settings(env)
    prepare(settings)
    start_local_server(settings.services_dir, port=0)
    keys = vault_resource(settings).key_service()
    registry = PrincipalRegistry(settings.principals_file, keys)
    registry.add_principal("bench-clinician", "clinician")
    issued = ClientRegistry(settings.clients_file, keys).add("bench-clinician")
    packages = packaged_models(home / "work")
    return env, issued.client_id, issued.client_secret, packages


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=15)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.seconds = 3
    if shutil.which("wrk") is None:
        sys.exit("wrk is needed (Debian: apt-get install wrk)")
    import httpx2 as httpx

    from medllm_pipelines.lib.services.openbao import stop_dev_server
    from medllm_pipelines_tests.lib.scenarios.test_diagnosis_assessor import LOINC_ROWS, bundle
    from medllm_pipelines_tests.lib.scenarios.test_imaging_instances import disc_instance

    home = Path(tempfile.mkdtemp(prefix="bench-serving-"))
    processes: list[subprocess.Popen[bytes]] = []
    try:
        env, client_id, secret, packages = prepare_home(home)
        port, echo_port = free_port(), free_port()
        serve_env = {**os.environ, **env, "MEDLLM_SERVE_MODELS_DIR": str(packages), "MEDLLM_SERVE_CACHE_TTL_S": "0",
                     "MEDLLM_SERVE_RATE_LIMIT_PER_MINUTE": "1000000000",
                     "MEDLLM_REDIS_PREFIX": f"bench-{uuid.uuid4().hex[:8]}:"}
        started = time.perf_counter()
        processes.append(subprocess.Popen([str(VENV_BIN / "medllm"), "serve", "--port", str(port), "--workers", "2"],
                                          env=serve_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        base = f"http://127.0.0.1:{port}"
        cold_start_s = wait_ready(base + "/readyz") + 0.0
        cold_start_s = time.perf_counter() - started
        processes.append(subprocess.Popen(
            [str(VENV_BIN / "uvicorn"), "serving_echo:app", "--app-dir", str(ROOT / "benchmarks"), "--port",
             str(echo_port), "--workers", "2", "--log-level", "warning", "--no-access-log"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        wait_ready(f"http://127.0.0.1:{echo_port}/docs")
        token = httpx.post(base + "/v1/auth/token", data={"grant_type": "client_credentials", "client_id": client_id,
                                                          "client_secret": secret}).json()["access_token"]
        auth = f"Bearer {token}"
        headers = {"Authorization": auth}
        body_path = home / "bundle.json"
        body_path.write_text(json.dumps(bundle(LOINC_ROWS)))
        script = home / "post.lua"
        script.write_text(WRK_SCRIPT)
        check = httpx.post(base + "/v1/diagnosis/risk?explain=false", content=body_path.read_bytes(),
                           headers={**headers, "Content-Type": "application/json"})
        assert check.status_code == 200, check.text
        results: dict[str, Any] = {"cold_start_to_ready_s": round(cold_start_s, 2)}
        results["echo"] = wrk(f"http://127.0.0.1:{echo_port}/echo", body_path, auth, args.seconds, args.connections,
                              script)
        results["diagnosis_no_explain"] = wrk(base + "/v1/diagnosis/risk?explain=false", body_path, auth, args.seconds,
                                              args.connections, script)
        results["diagnosis_explain"] = wrk(base + "/v1/diagnosis/risk?explain=true", body_path, auth, args.seconds,
                                           args.connections, script)
        # one request at a time
        with httpx.Client(base_url=base, headers=headers, timeout=30.0) as client:
            turns: list[float] = []
            for i in range(10 if args.quick else 40):
                session = client.post("/v1/triage/sessions", json={"language": "en"}).json()["session_id"]
                for text in ("I have a rash on my arms that itches", "no", "yes"):
                    t0 = time.perf_counter()
                    reply = client.post(f"/v1/triage/sessions/{session}/messages", json={"text": text})
                    turns.append((time.perf_counter() - t0) * 1000)
                    if reply.json().get("status") != "asking":
                        break
            results["triage_turn"] = percentiles(turns)
            study: list[float] = []
            for i in range(10 if args.quick else 50):
                blob = disc_instance("CT", study_uid=f"1.2.826.0.1.3680043.10.2.{i + 1}")
                t0 = time.perf_counter()
                response = client.post("/v1/imaging/studies", files=[("files", ("a.dcm", blob, "application/dicom"))])
                study.append((time.perf_counter() - t0) * 1000)
                assert response.status_code == 201, response.text
            results["imaging_one_64x64_instance"] = percentiles(study)
            drafts: list[float] = []
            for _ in range(10 if args.quick else 30):
                t0 = time.perf_counter()
                client.post("/v1/ehr/drafts", json={"text": "Patient: dry cough for a week.\nDoctor: likely viral."})
                drafts.append((time.perf_counter() - t0) * 1000)
            results["note_draft_extractive_fallback"] = percentiles(drafts)
        echo, plain = results["echo"], results["diagnosis_no_explain"]
        results["targets"] = {
            "diagnosis_p99_within_2x_echo": plain["p99_ms"] <= 2 * echo["p99_ms"],
            "diagnosis_at_least_300_rps": plain["requests_per_s"] >= 300,
            "diagnosis_explain_p99_le_50ms": results["diagnosis_explain"]["p99_ms"] <= 50,
            "imaging_p50_le_150ms": results["imaging_one_64x64_instance"]["p50_ms"] <= 150,
            "triage_turn_p99_le_300ms": results["triage_turn"]["p99_ms"] <= 300,
            "cold_start_le_15s": cold_start_s <= 15,
        }
        results["machine"] = {"cpus": os.cpu_count(), "python": platform.python_version(),
                              "workers": 2, "load_generator": "wrk -t2 on the same machine"}
        print(json.dumps(results, indent=2))
        if not args.quick:
            RESULTS.mkdir(parents=True, exist_ok=True)
            (RESULTS / "serving.json").write_text(json.dumps(results, indent=2) + "\n")
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
        stop_dev_server(home / "services")
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
