"""The run-wide leak scan: one Aho-Corasick pass vs one substring search per identifier, side by side.

The needles are the identifiers of a synthetic hospital (names zh/en, resident
IDs, MRNs, phones, e-mails, addresses); the haystack is what a run leaves
outside the raw zone, imitated at a chosen size: half binary (model weights,
DICOM pixels), half JSON-ish text (event logs, metadata, reports), with a
handful of identifiers planted so both methods must find the same hits.

    .venv/bin/python benchmarks/bench_leak_scan.py            # writes benchmarks/results/leak_scan.json
    .venv/bin/python benchmarks/bench_leak_scan.py --quick    # 200 patients, 4 MB
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(ROOT))


def haystack(size: int, planted: list[str], seed: int) -> bytes:
    rng = random.Random(seed)
    binary = rng.randbytes(size // 2)
    lines = []
    total = 0
    while total < size // 2:
        line = json.dumps({"step": rng.randrange(10**6), "loss": rng.random(), "ts": rng.randrange(10**12),
                           "metric": f"val_{rng.choice(['auc', 'loss', 'f1'])}", "rows": rng.randrange(10**5)})
        lines.append(line)
        total += len(line) + 1
    text = "\n".join(lines)
    for i, value in enumerate(planted):  # spread the planted identifiers through the text
        at = (i + 1) * len(text) // (len(planted) + 1)
        text = text[:at] + f' "note": "{value}" ' + text[at:]
    return binary + text.encode("utf-8")


def substring_scan(data: bytes, needles: dict[str, set[str]]) -> dict[str, int]:
    """The method before the matcher: one search per identifier, all-digit ones not inside a longer number."""
    import re

    found: dict[str, int] = {}
    for kind, values in needles.items():
        count = 0
        for value in values:
            needle = value.encode("utf-8")
            if needle not in data:
                continue
            if needle.isdigit():
                count += len(re.findall(rb"(?<![0-9])(?<![0-9]\.)" + re.escape(needle) + rb"(?![0-9])", data))
            else:
                count += data.count(needle)
        if count:
            found[kind] = count
    return found


def best_of(rounds: int, job) -> tuple[float, object]:
    best, result = float("inf"), None
    for _ in range(rounds):
        started = time.perf_counter()
        result = job()
        best = min(best, time.perf_counter() - started)
    return best, result


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--patients", type=int, default=1000)
    parser.add_argument("--megabytes", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.patients, args.megabytes, args.rounds = 200, 4, 1

    from medllm_pipelines.lib.security.home_scan import load_identity_needles
    from medllm_pipelines.lib.security.leak_scan import IdentifierMatcher
    from medllm_pipelines.lib.synth import DefectRates, generate_hospital

    with tempfile.TemporaryDirectory() as work:
        generate_hospital(Path(work), patients=args.patients, seed=7, defect_rates=DefectRates.none(),
                          write_identities=True)
        needles = load_identity_needles(Path(work) / "_truth" / "identities.jsonl")
    n_needles = sum(len(v) for v in needles.values())
    planted = [min(needles[kind]) for kind in sorted(needles)]
    data = haystack(args.megabytes * 1024 * 1024, planted, seed=3)

    build_s, matcher = best_of(args.rounds, lambda: IdentifierMatcher(needles))
    ours_s, ours = best_of(args.rounds, lambda: dict(matcher.count(data)))
    peer_s, peer = best_of(1, lambda: substring_scan(data, needles))
    agree = ours == peer
    result = {
        "benchmark": "leak_scan",
        "what": "identifier search over a run's outputs: Aho-Corasick (pyahocorasick, what every leak scan now "
                "uses) vs a substring search per identifier (what the per-table gates did before)",
        "patients": args.patients,
        "identifiers": n_needles,
        "haystack_mb": args.megabytes,
        "automaton_build_s": round(build_s, 4),
        "aho_corasick_s": round(ours_s, 4),
        "aho_corasick_mb_per_s": round(args.megabytes / ours_s, 1),
        "substring_per_identifier_s": round(peer_s, 4),
        "speedup": round(peer_s / ours_s, 1),
        "same_hits": agree,
        "hits": ours,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "note": "substring search timed once (it is the slow side); Aho-Corasick best of rounds",
    }
    print(json.dumps(result, indent=2, ensure_ascii=False))
    if not args.quick:
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "leak_scan.json").write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    return 0 if agree else 1


if __name__ == "__main__":
    raise SystemExit(main())
