"""Wall time of `medllm run` on a synthetic hospital, per stage, and Dagster's overhead.

Three measurements on the same delivered files, each in a fresh MEDLLM_HOME:

1. ``cli``: ``medllm run`` as a subprocess (what a user waits for, imports included);
   per-step durations read back from the Dagster event log of that run.
2. ``orchestrated``: the same job executed in-process through Dagster
   (``run_lifecycle``, the function ``medllm run`` calls).
3. ``direct``: every asset and asset check function invoked directly, in
   topological order, with the same resources and no executor, event log or
   run storage.

Heavy libraries are imported before (2) and (3) so neither pays first-import
costs the other does not. Overhead = (orchestrated - direct) / orchestrated.

    .venv/bin/python benchmarks/bench_lifecycle.py --patients 1000
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def _fresh_home(base: Path, name: str, hospital: Path) -> Path:
    """A new MEDLLM_HOME holding the delivery, with the synthetic-data ethics approval on file."""
    from medllm_pipelines.cli import record_demo_approval
    from medllm_pipelines.settings import load_settings

    home = base / name
    shutil.copytree(hospital, home / "landing", ignore=shutil.ignore_patterns("_truth"))
    record_demo_approval(load_settings({"MEDLLM_HOME": str(home)}))
    return home


def _env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MEDLLM_", "DAGSTER_", "MLFLOW_", "VAULT_"))}
    env["MEDLLM_HOME"] = str(home)
    return env


def step_durations(dagster_home: Path, run_ids: list[str] | None = None) -> dict[str, float]:
    """Seconds per step (asset or check), STEP_START -> STEP_SUCCESS/FAILURE, summed over the
    lifecycle's runs (ingest steps run once per institution partition)."""
    from dagster import DagsterEventType, DagsterInstance

    instance = DagsterInstance.from_config(str(dagster_home))
    try:
        if run_ids is None:
            run_ids = [run.run_id for run in instance.get_runs()]
        durations: dict[str, float] = defaultdict(float)
        for run_id in run_ids:
            starts: dict[str, float] = {}
            for record in instance.all_logs(run_id):
                event = record.dagster_event
                if event is None or event.step_key is None:
                    continue
                if event.event_type == DagsterEventType.STEP_START:
                    starts[event.step_key] = record.timestamp
                elif event.event_type in (DagsterEventType.STEP_SUCCESS, DagsterEventType.STEP_FAILURE):
                    durations[event.step_key] += record.timestamp - starts[event.step_key]
        return {k: round(v, 3) for k, v in durations.items()}
    finally:
        instance.dispose()


def stage_of(step_key: str) -> str:
    if step_key == "fhir_resources":
        return "ingest"
    return step_key.split("__", 1)[0]


def per_stage(durations: dict[str, float]) -> dict[str, float]:
    totals: dict[str, float] = defaultdict(float)
    for step, seconds in durations.items():
        totals[stage_of(step)] += seconds
    return {k: round(v, 3) for k, v in totals.items()}


def run_cli(home: Path) -> dict[str, Any]:
    started = time.perf_counter()
    proc = subprocess.run(
        [str(ROOT / ".venv" / "bin" / "medllm"), "run"], env=_env(home), capture_output=True, text=True, check=False
    )
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"medllm run failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    durations = step_durations(home / "dagster_home")
    return {"wall_s": round(wall, 2), "steps_s": durations, "stages_s": per_stage(durations)}


def _prepare(home: Path) -> Any:
    for key in [k for k in os.environ if k.startswith(("MEDLLM_", "DAGSTER_", "MLFLOW_", "VAULT_"))]:
        del os.environ[key]
    os.environ["MEDLLM_HOME"] = str(home)
    from medllm_pipelines.lib.services.openbao import start_local_server
    from medllm_pipelines.settings import activate, load_settings, prepare_home

    settings = load_settings()
    prepare_home(settings)
    activate(settings)
    start_local_server(settings.services_dir, port=0)
    return settings


def run_orchestrated(home: Path, freeze_gc: bool = False) -> dict[str, Any]:
    from medllm_pipelines.runner import run_lifecycle

    settings = _prepare(home)
    started = time.perf_counter()
    result = run_lifecycle(settings, log_level="WARNING", freeze_gc=freeze_gc)
    wall = time.perf_counter() - started
    if not result.success:
        raise RuntimeError("orchestrated run failed")
    durations = step_durations(settings.dagster_home, result.run_ids)
    return {"wall_s": round(wall, 2), "steps_s": durations, "stages_s": per_stage(durations),
            **privacy_and_model_outcome(result)}


def privacy_and_model_outcome(result: Any) -> dict[str, Any]:
    """What disclosure control costs the model: test ROC-AUC beside the k-anonymity recoding of that run."""
    from medllm_pipelines.defs import keys

    evaluation = next(iter(result.materializations(keys.DIABETES_EVALUATION)), {})
    patients = next(iter(result.materializations(keys.DEID_PATIENTS)), {})
    scan = next(iter(result.materializations(keys.PRIVACY_LEAK_SCAN)), {})
    return {
        "model_roc_auc": evaluation.get("model_roc_auc"),
        "baseline_roc_auc": evaluation.get("baseline_roc_auc"),
        "k_anonymity": {k.split("/", 1)[1]: v for k, v in patients.items()
                        if k.startswith("k_anonymity/") and isinstance(v, (int, float, bool, str))},
        "leak_scan": {k: scan.get(k) for k in ("locations_with_hits", "identifiers_searched", "bytes_scanned",
                                                "scan_seconds")},
    }


def run_direct(home: Path) -> dict[str, Any]:
    """Call every asset and check function directly (Dagster's direct invocation), in dependency order."""
    from dagster import AssetKey, DagsterInstance
    from dagster import build_resources as init_resources

    from medllm_pipelines.definitions import ALL_ASSETS, ALL_CHECKS, make_definitions
    from medllm_pipelines.lib.ingest.sources import UNROUTED, load_sources
    from medllm_pipelines.defs.resources import build_resources
    from medllm_pipelines.runner import ensure_partitions

    settings = _prepare(home)
    partitions = [*load_sources(settings.sources_file).codes, UNROUTED]

    graph = make_definitions(settings).resolve_asset_graph()
    order = graph.toposorted_asset_keys
    defs_by_key: dict[AssetKey, Any] = {}
    for asset_def in ALL_ASSETS:
        for key in asset_def.keys:
            defs_by_key[key] = asset_def
    checks_by_asset: dict[AssetKey, list[Any]] = defaultdict(list)
    for check in ALL_CHECKS:
        for check_key in check.check_keys:
            checks_by_asset[check_key.asset_key].append(check)
    done: set[int] = set()
    timings: dict[str, float] = {}
    from medllm_pipelines.defs.resources import build_dbt_resources

    configured = {**build_resources(settings), **build_dbt_resources(settings)}
    started = time.perf_counter()
    with init_resources(configured) as initialised, DagsterInstance.ephemeral() as instance:
        ensure_partitions(instance, partitions)
        resources = {name: getattr(initialised, name) for name in configured}
        _invoke_in_order(order, defs_by_key, checks_by_asset, resources, timings, done, instance, partitions)
    wall = time.perf_counter() - started
    return {"wall_s": round(wall, 2), "steps_s": timings, "stages_s": per_stage(timings)}


def _invoke_in_order(order, defs_by_key, checks_by_asset, resources, timings, done, instance, partitions) -> None:
    from dagster import build_asset_check_context, build_asset_context

    # a multi-asset runs once, when the last of its keys comes up: all of its upstreams are done by then
    last_key = {id(defs_by_key[k]): k for k in order}
    for key in order:
        asset_def = defs_by_key[key]
        if id(asset_def) not in done and last_key[id(asset_def)] == key:
            done.add(id(asset_def))
            t0 = time.perf_counter()
            if "dbt" in asset_def.required_resource_keys:
                # the dbt project "called directly" is `dbt build` itself, no Dagster around it
                from medllm_pipelines.lib.curate.dbt_project import dbt_connection, run_dbt

                run_dbt(["build"], dbt_connection(resources["warehouse"].url), target_path=Path(tempfile.mkdtemp()))
            else:
                for partition in partitions if asset_def.partitions_def else [None]:
                    with build_asset_context(resources=resources, partition_key=partition, instance=instance) as context:
                        output = asset_def(context)
                        if hasattr(output, "__iter__") and not isinstance(output, (dict, str)):
                            list(output)
            timings[asset_def.node_def.name] = round(time.perf_counter() - t0, 3)
        if last_key[id(asset_def)] != key:
            continue
        checks = {id(c): c for k in asset_def.keys for c in checks_by_asset.get(k, [])}
        for check in checks.values():
            if "dbt" in check.required_resource_keys:
                continue  # dbt tests ran inside `dbt build` above
            t0 = time.perf_counter()
            # Checks are called as plain functions: Dagster's direct check invocation
            # cannot open resources that have a teardown (the Vault client).
            function = check.node_def.compute_fn.decorated_fn
            wanted = {n: resources[n] for n in inspect.signature(function).parameters if n in resources}
            function(build_asset_check_context(), **wanted)
            # (checks that read the run's materialisation metadata from the instance, such as
            # records_reconciled, have nothing to read here: only their cost is measured)
            timings[check.node_def.name] = round(time.perf_counter() - t0, 3)


def import_time(repeats: int = 5) -> dict[str, Any]:
    """Fresh-process wall time of `import medllm_pipelines.definitions`."""
    samples = []
    code = "import time; t=time.perf_counter(); import medllm_pipelines.definitions; print(time.perf_counter()-t)"
    for _ in range(repeats):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=_env(Path(tempfile.gettempdir()) / "medllm-import-bench"))
        samples.append(float(out.stdout.strip()))
    return {"median_s": round(statistics.median(samples), 3), "samples_s": [round(s, 3) for s in samples]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--patients", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--rounds", type=int, default=3, help="rounds of each in-process mode (rotating order)")
    args = parser.parse_args()

    from medllm_pipelines.lib.synth import generate_hospital

    base = Path(tempfile.mkdtemp(prefix="medllm-bench-"))
    try:
        hospital = base / "hospital"
        t0 = time.perf_counter()
        manifest = generate_hospital(hospital, patients=args.patients, seed=args.seed)
        synth_s = time.perf_counter() - t0
        files = sum(1 for p in hospital.rglob("*") if p.is_file() and "_truth" not in p.parts)

        cli = run_cli(_fresh_home(base, "cli", hospital))
        # warm heavy imports for both in-process measurements
        import great_expectations  # noqa: F401
        import lightning  # noqa: F401
        import mlflow  # noqa: F401
        import torch  # noqa: F401

        # Rotate the modes each round so drift in machine load hits all of them;
        # each mode is summarised by its median round. "orchestrated_gc_freeze" keeps
        # measuring the gc.freeze() option beside the default.
        runners = {
            "orchestrated": run_orchestrated,
            "direct": run_direct,
            "orchestrated_gc_freeze": lambda home: run_orchestrated(home, freeze_gc=True),
        }
        rounds: dict[str, list[dict[str, Any]]] = {mode: [] for mode in runners}
        modes = list(runners)
        for index in range(args.rounds):
            for mode in modes[index % len(modes) :] + modes[: index % len(modes)]:
                rounds[mode].append(runners[mode](_fresh_home(base, f"{mode}-{index}", hospital)))

        def median_round(mode: str) -> dict[str, Any]:
            ordered = sorted(rounds[mode], key=lambda r: r["wall_s"])
            return ordered[(len(ordered) - 1) // 2]

        orchestrated, direct = median_round("orchestrated"), median_round("direct")
        frozen = median_round("orchestrated_gc_freeze")
        overhead = (orchestrated["wall_s"] - direct["wall_s"]) / orchestrated["wall_s"]
        result = {
            "benchmark": "lifecycle",
            "patients": args.patients,
            "seed": args.seed,
            "landed_files": files,
            "synth_s": round(synth_s, 2),
            "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
            "medllm_run_cli": cli,
            "orchestrated_in_process": orchestrated,
            "direct_invocation": direct,
            "orchestrated_gc_freeze": frozen,
            "rounds_wall_s": {mode: [r["wall_s"] for r in runs] for mode, runs in rounds.items()},
            "dagster_overhead_fraction": round(overhead, 4),
            "import_definitions": import_time(),
            "optimal_roc_auc": manifest.diabetes["optimal_roc_auc"],
            "targets": {"medllm_run_s": 600, "dagster_overhead_fraction": 0.20, "import_definitions_s": 5.0},
        }
        RESULTS.mkdir(parents=True, exist_ok=True)
        out = args.out or RESULTS / f"lifecycle_{args.patients}.json"
        out.write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps({k: result[k] for k in ("patients", "synth_s", "dagster_overhead_fraction")}, indent=2))
        print(f"cli wall {cli['wall_s']}s, orchestrated {orchestrated['wall_s']}s, direct {direct['wall_s']}s -> {out}")
    finally:
        from medllm_pipelines.lib.services.openbao import stop_dev_server

        for services in base.glob("*/services"):
            stop_dev_server(services)
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
