"""`medllm serve --workers 2` from spawn to `/readyz` 200, this tree against a git ref, side by side in one run.

One throw-away home (the project's OpenBao, the small packaged models of the serving tests), then alternately
the ref's code (a `git worktree`, put first on PYTHONPATH so that the parent and the spawned workers import it)
and the working tree's, `--runs` times each, on the same machine and home. Cold start covers imports, Vault,
models loaded and warmed, and the scenario objects built (de-identifier lexicons, knowledge graph, leak needles).

    .venv/bin/python benchmarks/bench_serve_cold_start.py --before HEAD~1   # writes results/serve_cold_start.json
    .venv/bin/python benchmarks/bench_serve_cold_start.py --runs 1 --quick  # this tree only, nothing written
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_serving import VENV_BIN, free_port, prepare_home, wait_ready  # noqa: E402


def cold_start(env: dict[str, str], packages: Path, code_root: Path | None) -> float:
    serve_env = {**os.environ, **env, "MEDLLM_SERVE_MODELS_DIR": str(packages),
                 "MEDLLM_REDIS_PREFIX": f"cold-{uuid.uuid4().hex[:8]}:"}
    if code_root is not None:
        serve_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(code_root), os.environ.get("PYTHONPATH")]))
    port = free_port()
    started = time.perf_counter()
    process = subprocess.Popen([str(VENV_BIN / "medllm"), "serve", "--port", str(port), "--workers", "2"],
                               env=serve_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_ready(f"http://127.0.0.1:{port}/readyz")
        return time.perf_counter() - started
    finally:
        process.terminate()
        process.wait(30)


def summary(samples: list[float]) -> dict[str, Any]:
    return {"runs_s": [round(s, 2) for s in samples], "median_s": round(statistics.median(samples), 2),
            "max_s": round(max(samples), 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", help="git ref to compare with (e.g. HEAD~1)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="print only, write nothing")
    args = parser.parse_args()
    from medllm_pipelines.lib.services.openbao import stop_dev_server

    home = Path(tempfile.mkdtemp(prefix="bench-cold-"))
    worktree = home / "before"
    try:
        env, _, _, packages = prepare_home(home)
        if args.before:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(worktree), args.before],
                           check=True, capture_output=True)
        before: list[float] = []
        after: list[float] = []
        for _ in range(args.runs):  # alternate, so that drift in the machine's load hits both alike
            if args.before:
                before.append(cold_start(env, packages, worktree))
            after.append(cold_start(env, packages, None))
        results: dict[str, Any] = {"this_tree": summary(after), "target_s": 15,
                                   "target_met": statistics.median(after) <= 15 and max(after) <= 15}
        if args.before:
            commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", args.before], check=True,
                                    capture_output=True, text=True).stdout.strip()
            results["before"] = {"ref": args.before, "commit": commit, **summary(before)}
        results["machine"] = {"cpus": os.cpu_count(), "python": platform.python_version(), "workers": 2}
        print(json.dumps(results, indent=2))
        if not args.quick:
            out = ROOT / "benchmarks" / "results" / "serve_cold_start.json"
            out.write_text(json.dumps(results, indent=2) + "\n")
            print(f"wrote {out}")
    finally:
        if args.before and worktree.exists():
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(worktree)],
                           capture_output=True)
        stop_dev_server(home / "services")
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
