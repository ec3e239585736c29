"""The lifecycle on files other projects publish, run as a newcomer would run it.

``medllm stage-corpus`` delivers ../shared/conformance/ (or ``--corpus DIR``,
any folder of FHIR / HL7 v2 / DICOM files kept outside the repository) into a
fresh MEDLLM_HOME, ``medllm run`` runs the whole lifecycle as a subprocess and
``medllm reconcile --json`` accounts for every file. Written to
benchmarks/results/conformance.json: whether the run succeeded, its wall time,
every file's outcome (ingested / quarantined with its reason), and per stage
records in = out + quarantined + removed, with whether it balances.

    .venv/bin/python benchmarks/bench_conformance.py [--corpus DIR] [--out NAME]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
CORPUS = ROOT.parent / "shared" / "conformance"
MEDLLM = str(ROOT / ".venv" / "bin" / "medllm")


def _env(home: Path, sources_file: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MEDLLM_", "DAGSTER_", "MLFLOW_", "VAULT_"))}
    return {**env, "MEDLLM_HOME": str(home), "MEDLLM_SOURCES_FILE": str(sources_file)}


def _medllm(*args: str, env: dict[str, str], check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([MEDLLM, *args], env=env, capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise RuntimeError(f"medllm {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def measure(corpus: Path, base: Path, folders: tuple[str, ...] | None) -> dict[str, Any]:
    home, landing = base / "home", base / "home" / "landing"
    sources_file = base / "sources.yaml"
    env = _env(home, sources_file)
    from medllm_pipelines.lib.ingest.corpus import stage_corpus

    staged = stage_corpus(corpus, landing, sources_file=sources_file, folders=folders)
    # by content: `medllm run` consumes the landing zone
    by_hash = {hashlib.sha256((landing / landed).read_bytes()).hexdigest(): source
               for landed, source in staged.delivered.items()}
    _medllm("services", "up", env=env)
    try:
        from medllm_pipelines.cli import record_demo_approval
        from medllm_pipelines.settings import load_settings

        record_demo_approval(load_settings(env))
        started = time.perf_counter()
        run = _medllm("run", env=env, check=False)
        wall = time.perf_counter() - started
        reconcile = _medllm("reconcile", "--json", env=env, check=False)
    finally:
        _medllm("services", "down", env=env, check=False)
    report = json.loads(reconcile.stdout) if reconcile.stdout.strip().startswith("{") else {}
    files = report.get("files", [])
    outcomes = []
    for entry in files:
        records_out = sum(a.get("out", 0) for a in entry.get("assets", []))
        reasons = Counter(r for a in entry.get("assets", []) for r in a.get("quarantined_by_reason", {}))
        outcomes.append({
            "file": by_hash.get(entry["content_sha256"], entry["content_sha256"][:12]),
            "outcome": entry.get("outcome"),
            "records_out": records_out,
            "reason_code": entry.get("reason_code"),
            "quarantined_by_reason": dict(reasons),
        })
    stages = [
        {k: row.get(k) for k in ("asset", "in", "out", "quarantined", "removed", "reconciled")}
        for row in report.get("stages", [])
    ]
    return {
        "run_succeeded": run.returncode == 0,
        "run_wall_s": round(wall, 1),
        "run_tail": run.stdout[-1500:] if run.returncode else None,
        "reconcile_exit": reconcile.returncode,
        "files_delivered": len(staged.delivered),
        "files_skipped_not_deliveries": staged.skipped,
        "files_in_ledger": len(files),
        "files_unaccounted": report.get("files_unaccounted"),
        "files_unbalanced": report.get("files_unbalanced"),
        "files_ingested": sum(1 for o in outcomes if o["records_out"] > 0),
        "files": sorted(outcomes, key=lambda o: o["file"]),
        "stages_unreconciled": [s["asset"] for s in stages if s["reconciled"] is False],
        "stages": stages,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=CORPUS)
    parser.add_argument("--out", default="conformance")
    parser.add_argument("--folder", dest="folders", action="append",
                        help="top-level sub-folders to deliver (default: fhir, hl7v2, dicom; text/ is the "
                             "de-identification dev set, measured by bench_text_deid.py); 'all' for every one")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench_conformance_") as tmp:
        folders = None if args.folders == ["all"] else tuple(args.folders or ("fhir", "hl7v2", "dicom"))
        result = measure(args.corpus.resolve(), Path(tmp), folders)
    payload = {
        "benchmark": "conformance",
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {"python": platform.python_version(), "platform": platform.platform(),
                    "cpus_visible": os.cpu_count()},
        "corpus": str(args.corpus),
        "folders": args.folders or ["fhir", "hl7v2", "dicom"],
        **result,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.out}.json").write_text(json.dumps(payload, indent=2, ensure_ascii=False) + "\n")
    print(json.dumps({k: payload[k] for k in ("run_succeeded", "run_wall_s", "files_delivered", "files_ingested",
                                              "files_unaccounted", "files_unbalanced", "stages_unreconciled")}))
    sys.exit(0 if result["run_succeeded"] and not result["stages_unreconciled"] else 1)


if __name__ == "__main__":
    main()
