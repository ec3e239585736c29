"""Ingestion throughput, memory and DICOM header indexing, on one core.

Measured, each in a fresh child process pinned to one CPU (pyarrow limited to
one thread), on feeds generated here from the synthetic hospital's resources
(no downloads):

1. **NDJSON ingest** (``iter_ndjson_batches``: stream, parse, validate every
   resource as ``fhir.resources.R4B`` does, quarantine, extract rows, write
   Parquet per table) in resources/s, and its ratio to **the limit** measured
   in the same run on the same file: orjson parse of every line + the same
   row extraction + Parquet write of the same tables (no validation, no
   lineage hashing). A second, lower limit - orjson parse + Parquet write of
   the raw lines, no flattening - is reported too. Runs alternate (limit,
   ingest, limit, ingest, ...) and the best of each is kept, so load from
   other processes on the machine hits both alike. Goal: ratio >= 0.25.
2. The same ingest with validation in ``full`` mode (every resource through
   ``model_validate``) on a subset, for the speed-up of the shape-cached path.
3. **Peak memory** (max RSS of the child) for 100k, 300k and 1M-resource
   feeds, with and without the re-send filter. Goal: <= 1.5 GB and flat.
4. **Equivalence** of shape-cached and full validation on mutated resources
   (false accepts / false rejects; must be 0).
5. **DICOM header indexing** (``index_dicom_object`` on paths: header only +
   offset completeness check) in files/s vs plain pydicom header reads
   (``dcmread(stop_before_pixels=True)``), the same header reads plus reading
   the fields the index keeps, and full reads of the same files.

Feeds contain defects at fixed rates (invalid dates, malformed lines, GBK
text, unknown types, re-sent lines), so quarantine is exercised.

    .venv/bin/python benchmarks/bench_ingest.py            # writes benchmarks/results/ingest.json
    .venv/bin/python benchmarks/bench_ingest.py --quick    # small sizes, for a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(ROOT))

BATCH_SIZE = 10_000
INDEX_KEYWORDS = (
    "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID", "Modality", "Rows", "Columns",
    "BitsAllocated", "SamplesPerPixel", "NumberOfFrames", "PatientID", "PatientName", "PatientBirthDate",
    "OtherPatientIDs", "OtherPatientIDsSequence", "InstitutionName", "AccessionNumber", "StudyDate", "StudyTime",
    "TimezoneOffsetFromUTC", "BurnedInAnnotation", "SeriesNumber", "InstanceNumber",
)
CPU = 0


# --- feed generation -----------------------------------------------------------------
def _templates(work: Path) -> list[bytes]:
    """One line template per resource of a small synthetic NDJSON export, with placeholders."""
    import orjson

    from medllm_pipelines.lib.synth import DefectRates, generate_hospital

    hospital = work / "hospital"
    generate_hospital(hospital, patients=300, seed=1, defect_rates=DefectRates.none())
    templates = []
    for path in sorted((hospital / "rvic" / "fhir" / "bulk").glob("*.ndjson")):
        for line in path.read_bytes().splitlines():
            resource = orjson.loads(line)
            resource["id"] = "@@ID@@"
            quantity = resource.get("valueQuantity")
            if quantity is not None:
                quantity["value"] = "@@VALUE@@"
            templates.append(orjson.dumps(resource))
    return templates


def write_feed(path: Path, size: int, templates: list[bytes]) -> dict[str, int]:
    """``size`` NDJSON lines from the templates with fresh ids and values, and seeded defects."""
    counts = {"lines": 0, "invalid_date": 0, "malformed": 0, "gbk": 0, "unknown_type": 0, "resent": 0}
    gbk = '{"resourceType":"Patient","id":"gbk","name":[{"text":"张三"}]}'.encode("gbk")
    previous = b""
    with path.open("wb") as out:
        for number in range(size):
            if number % 1499 == 1498 and previous:
                line = previous
                counts["resent"] += 1
            elif number % 4999 == 4998:
                line = gbk
                counts["gbk"] += 1
            elif number % 2503 == 2502:
                line = b'{"resourceType":"PatientRecord","id":"x%d"}' % number
                counts["unknown_type"] += 1
            else:
                template = templates[number % len(templates)]
                line = template.replace(b"@@ID@@", str(uuid.UUID(int=number + 1)).encode())
                line = line.replace(b'"@@VALUE@@"', b"%.1f" % (4 + (number % 97) / 10))
                if number % 997 == 996 and b'"effectiveDateTime":"' in line:
                    start = line.index(b'"effectiveDateTime":"') + 21
                    line = line[:start] + b"2024-13-45T00:00:00Z" + line[start + 20:]
                    counts["invalid_date"] += 1
                elif number % 1999 == 1998:
                    line = line[: len(line) // 2]
                    counts["malformed"] += 1
                previous = line
            out.write(line + b"\n")
            counts["lines"] += 1
    return counts


# --- child processes ----------------------------------------------------------------
def _single_core() -> None:
    try:
        os.sched_setaffinity(0, {CPU})
    except (AttributeError, OSError):
        pass
    import pyarrow as pa

    pa.set_cpu_count(1)
    pa.set_io_thread_count(1)


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def run_ingest(feed: Path, out: Path, *, mode: str = "shape_cached", resent: bool = True,
               limit_lines: int | None = None) -> dict[str, Any]:
    """Our ingest: stream -> validate -> rows/quarantine -> Parquet per table (+ a quarantine file)."""
    import itertools

    import pyarrow as pa
    import pyarrow.parquet as pq

    from medllm_pipelines.lib.common.records import QUARANTINE_COLUMNS
    from medllm_pipelines.lib.ingest.fhir import ResentFilter, iter_ndjson_batches
    from medllm_pipelines.lib.ingest.tables import arrow_schema
    from medllm_pipelines.lib.ingest.fhir_validation import ResourceValidator

    out.mkdir(parents=True, exist_ok=True)
    validator = ResourceValidator(mode)
    writers: dict[str, Any] = {}
    quarantine_schema = pa.schema([(c, pa.int64() if c == "position" else pa.string()) for c in QUARANTINE_COLUMNS])
    quarantine_writer = pq.ParquetWriter(out / "quarantine.parquet", quarantine_schema)
    seen = rows_out = quarantined = out_of_scope = resent_dropped = 0
    started = time.perf_counter()
    with feed.open("rb") as handle:
        source: Any = handle if limit_lines is None else itertools.islice(handle, limit_lines)
        for batch in iter_ndjson_batches(source, institution="rvic", source_object="b" * 64, asset="bench",
                                         batch_size=BATCH_SIZE, validator=validator,
                                         resent=ResentFilter() if resent else None):
            for table, rows in batch.rows.items():
                if not rows:
                    continue
                writer = writers.get(table)
                if writer is None:
                    writer = writers[table] = pq.ParquetWriter(out / f"{table}.parquet", arrow_schema(table))
                writer.write_table(pa.Table.from_pylist(rows, schema=arrow_schema(table)))
            if batch.quarantine:
                quarantine_writer.write_table(
                    pa.Table.from_pylist([q.as_row() for q in batch.quarantine], schema=quarantine_schema))
            seen += batch.resources_seen
            rows_out += batch.records_out
            quarantined += len(batch.quarantine)
            out_of_scope += batch.out_of_scope
            resent_dropped += batch.resent
    for writer in writers.values():
        writer.close()
    quarantine_writer.close()
    seconds = time.perf_counter() - started
    return {
        "resources": seen, "seconds": round(seconds, 3), "resources_per_s": round(seen / seconds),
        "rows_out": rows_out, "quarantined": quarantined, "resent_dropped": resent_dropped,
        "out_of_scope": out_of_scope,
        "reconciled": seen == rows_out + quarantined + out_of_scope + resent_dropped,
        "full_validations": validator.full_validations, "fast_accepts": validator.fast_accepts,
        "peak_rss_mb": round(_peak_rss_mb(), 1),
    }


def run_limit(feed: Path, out: Path, *, flatten: bool = True, limit_lines: int | None = None) -> dict[str, Any]:
    """The limit: orjson parse + (same extraction) + Parquet write of the same tables, nothing else."""
    import itertools

    import orjson
    import pyarrow as pa
    import pyarrow.parquet as pq

    from medllm_pipelines.lib.ingest.fhir_mapping import EXTRACTORS as _EXTRACTORS
    from medllm_pipelines.lib.ingest.tables import TABLE_OF_TYPE, arrow_schema

    out.mkdir(parents=True, exist_ok=True)
    raw_schema = pa.schema([("resource_type", pa.string()), ("json", pa.string())])
    writers: dict[str, Any] = {}
    pending: dict[str, list[dict[str, Any]]] = {}
    seen = 0

    def flush() -> None:
        for table, rows in pending.items():
            if not rows:
                continue
            schema = arrow_schema(table) if flatten else raw_schema
            writer = writers.get(table)
            if writer is None:
                writer = writers[table] = pq.ParquetWriter(out / f"{table}.parquet", schema)
            writer.write_table(pa.Table.from_pylist(rows, schema=schema))
            rows.clear()

    started = time.perf_counter()
    with feed.open("rb") as handle:
        lines = handle if limit_lines is None else itertools.islice(handle, limit_lines)
        for line in lines:
            seen += 1
            try:
                resource = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            rtype = resource.get("resourceType")
            table = TABLE_OF_TYPE.get(rtype)
            if table is None:
                continue
            if flatten:
                row = _EXTRACTORS[rtype](resource, {})
            else:
                row = {"resource_type": rtype, "json": line.decode("utf-8", "replace")}
            pending.setdefault(table, []).append(row)
            if seen % BATCH_SIZE == 0:
                flush()
    flush()
    for writer in writers.values():
        writer.close()
    seconds = time.perf_counter() - started
    return {"resources": seen, "seconds": round(seconds, 3), "resources_per_s": round(seen / seconds),
            "peak_rss_mb": round(_peak_rss_mb(), 1)}


def run_dicom(folder: Path, what: str) -> dict[str, Any]:
    import warnings

    import pydicom

    from medllm_pipelines.lib.ingest.dicom import index_dicom_object

    files = sorted(folder.glob("*.dcm"))
    warnings.simplefilter("ignore")
    started = time.perf_counter()
    indexed = 0
    for path in files:
        if what == "index":
            row, _ = index_dicom_object(path, institution="h1", source_object="x", asset="bench")
            indexed += row is not None
        elif what == "pydicom_header":
            pydicom.dcmread(path, stop_before_pixels=True)
            indexed += 1
        elif what == "pydicom_header_fields":  # the same header read, plus reading the fields the index keeps
            dataset = pydicom.dcmread(path, stop_before_pixels=True)
            _ = [dataset.get(keyword) for keyword in INDEX_KEYWORDS]
            indexed += 1
        else:
            dataset = pydicom.dcmread(path)
            _ = dataset.PixelData
            indexed += 1
    seconds = time.perf_counter() - started
    return {"files": len(files), "ok": indexed, "seconds": round(seconds, 3), "files_per_s": round(len(files) / seconds)}


def child(args: argparse.Namespace) -> None:
    _single_core()
    if args.child == "ingest":
        result = run_ingest(Path(args.feed), Path(args.out), mode=args.mode, resent=not args.no_resent,
                            limit_lines=args.limit_lines)
    elif args.child == "limit":
        result = run_limit(Path(args.feed), Path(args.out), flatten=not args.raw, limit_lines=args.limit_lines)
    elif args.child == "dicom":
        result = run_dicom(Path(args.feed), args.mode)
    else:
        raise SystemExit(f"unknown child {args.child}")
    print(json.dumps(result))


def spawn(*argv: str) -> dict[str, Any]:
    completed = subprocess.run([sys.executable, __file__, *argv], check=True, capture_output=True, text=True)
    return json.loads(completed.stdout.strip().splitlines()[-1])


# --- DICOM files ----------------------------------------------------------------------
def write_dicom_files(folder: Path, count: int) -> int:
    import pydicom
    from pydicom.data import get_testdata_file

    folder.mkdir(parents=True, exist_ok=True)
    sources = [pydicom.dcmread(get_testdata_file(name)) for name in ("CT_small.dcm", "MR_small.dcm")]
    total = 0
    for number in range(count):
        dataset = sources[number % len(sources)]
        dataset.SOPInstanceUID = f"2.25.{uuid.UUID(int=number + 1).int}"
        dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
        path = folder / f"im{number:05d}.dcm"
        dataset.save_as(path, enforce_file_format=True)
        total += path.stat().st_size
    return total


# --- main -------------------------------------------------------------------------------
def main(args: argparse.Namespace) -> None:
    import numpy as np

    from medllm_pipelines.lib.common.versions import package_versions

    sizes = [10_000, 30_000] if args.quick else [100_000, 300_000, 1_000_000]
    throughput_size = sizes[1]
    rounds = 2 if args.quick else 3
    results: dict[str, Any] = {
        "benchmark": "ingest",
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {"python": platform.python_version(), "cpus_visible": os.cpu_count(), "pinned_to_cpu": CPU,
                    "load_average_at_start": os.getloadavg(), "platform": platform.platform()},
        "packages": package_versions(["fhir.resources", "pydantic", "orjson", "pyarrow", "pydicom", "hl7apy"]),
        "batch_size": BATCH_SIZE,
    }
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
        work = Path(tmp)
        print("generating feeds ...", flush=True)
        templates = _templates(work)
        feeds: dict[int, Path] = {}
        results["feeds"] = {}
        for size in sizes:
            feeds[size] = work / f"feed-{size}.ndjson"
            counts = write_feed(feeds[size], size, templates)
            results["feeds"][str(size)] = {**counts, "bytes": feeds[size].stat().st_size}

        print(f"throughput on {throughput_size} resources ...", flush=True)
        feed = str(feeds[throughput_size])
        ours, flat, raw = [], [], []
        for round_number in range(rounds):
            flat.append(spawn("--child", "limit", "--feed", feed, "--out", str(work / f"limit-{round_number}")))
            ours.append(spawn("--child", "ingest", "--feed", feed, "--out", str(work / f"ours-{round_number}")))
            raw.append(spawn("--child", "limit", "--raw", "--feed", feed, "--out", str(work / f"raw-{round_number}")))
        best = lambda runs: max(runs, key=lambda r: r["resources_per_s"])
        subset = 20_000 if not args.quick else 5_000
        full = spawn("--child", "ingest", "--mode", "full", "--feed", feed, "--limit-lines", str(subset),
                     "--out", str(work / "full"))
        cached_subset = spawn("--child", "ingest", "--feed", feed, "--limit-lines", str(subset),
                              "--out", str(work / "cached-subset"))
        limit_subset = spawn("--child", "limit", "--feed", feed, "--limit-lines", str(subset),
                             "--out", str(work / "limit-subset"))
        results["throughput"] = {
            "resources": throughput_size,
            "ingest": best(ours),
            "limit_parse_flatten_write": best(flat),
            "limit_parse_write_raw": best(raw),
            "ratio_to_limit": round(best(ours)["resources_per_s"] / best(flat)["resources_per_s"], 3),
            "ratio_to_raw_limit": round(best(ours)["resources_per_s"] / best(raw)["resources_per_s"], 3),
            "rounds": {"ingest": [r["resources_per_s"] for r in ours],
                       "limit_parse_flatten_write": [r["resources_per_s"] for r in flat],
                       "limit_parse_write_raw": [r["resources_per_s"] for r in raw]},
            "full_validation_subset": {
                "resources": subset,
                "full_mode": full,
                "shape_cached_mode": cached_subset,
                "limit": limit_subset,
                "ratio_to_limit_full_mode": round(full["resources_per_s"] / limit_subset["resources_per_s"], 3),
                "speedup_of_shape_cache": round(cached_subset["resources_per_s"] / full["resources_per_s"], 2),
            },
        }

        print("memory ...", flush=True)
        memory = []
        for size in sizes:
            run = spawn("--child", "ingest", "--feed", str(feeds[size]), "--out", str(work / f"mem-{size}"))
            bare = spawn("--child", "ingest", "--no-resent", "--feed", str(feeds[size]),
                         "--out", str(work / f"mem-bare-{size}"))
            memory.append({"resources": size, "peak_rss_mb": run["peak_rss_mb"],
                           "peak_rss_mb_without_resent_filter": bare["peak_rss_mb"],
                           "resources_per_s": run["resources_per_s"], "quarantined": run["quarantined"],
                           "resent_dropped": run["resent_dropped"], "reconciled": run["reconciled"]})
        peaks = [m["peak_rss_mb_without_resent_filter"] for m in memory]
        peaks_filtered = [m["peak_rss_mb"] for m in memory]
        results["memory"] = {
            "runs": memory,
            "growth_mb_per_100k_without_filter": round(
                float(np.polyfit(sizes, peaks, 1)[0]) * 100_000, 2),
            "growth_mb_per_100k_with_resent_filter": round(
                float(np.polyfit(sizes, peaks_filtered, 1)[0]) * 100_000, 2),
        }

        print("validation equivalence ...", flush=True)
        import orjson

        from medllm_pipelines.lib.ingest.fhir_validation import differential_check

        seeds = [orjson.loads(t.replace(b"@@ID@@", b"r%d" % i).replace(b'"@@VALUE@@"', b"6.5"))
                 for i, t in enumerate(templates[:3000])]
        started = time.perf_counter()
        counts = differential_check(seeds, mutations=2_000 if args.quick else 20_000, seed=11)
        results["validation_equivalence"] = {**counts, "seconds": round(time.perf_counter() - started, 1)}

        print("dicom ...", flush=True)
        folder = work / "dicom"
        count = 300 if args.quick else 2_000
        total_bytes = write_dicom_files(folder, count)
        dicom: dict[str, list[dict[str, Any]]] = {"index": [], "pydicom_header": [], "pydicom_header_fields": [],
                                                  "pydicom_full": []}
        for _ in range(rounds):
            for what, runs in dicom.items():
                runs.append(spawn("--child", "dicom", "--mode", what, "--feed", str(folder), "--out", "-"))
        fastest = {what: max(runs, key=lambda r: r["files_per_s"]) for what, runs in dicom.items()}
        results["dicom"] = {
            "files": count, "mean_file_bytes": round(total_bytes / count),
            "index_files_per_s": fastest["index"]["files_per_s"],
            "pydicom_header_files_per_s": fastest["pydicom_header"]["files_per_s"],
            "pydicom_header_and_fields_files_per_s": fastest["pydicom_header_fields"]["files_per_s"],
            "pydicom_full_read_files_per_s": fastest["pydicom_full"]["files_per_s"],
            "index_vs_pydicom_header_and_fields": round(fastest["index"]["files_per_s"]
                                                        / fastest["pydicom_header_fields"]["files_per_s"], 3),
            "index_vs_pydicom_header": round(fastest["index"]["files_per_s"]
                                             / fastest["pydicom_header"]["files_per_s"], 3),
            "rounds": {what: [r["files_per_s"] for r in runs] for what, runs in dicom.items()},
        }
    results["goals"] = {
        "ratio_to_limit_at_least_0.25": results["throughput"]["ratio_to_limit"] >= 0.25,
        "peak_memory_at_most_1.5_gb": max(peaks_filtered + peaks) <= 1536,
        "memory_flat_without_filter": results["memory"]["growth_mb_per_100k_without_filter"] < 5,
        "validation_equivalent": counts["false_accepts"] == 0 and counts["false_rejects"] == 0,
    }
    results["machine"]["load_average_at_end"] = os.getloadavg()
    RESULTS.mkdir(parents=True, exist_ok=True)
    target = RESULTS / ("ingest_quick.json" if args.quick else "ingest.json")
    target.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    print(json.dumps({k: results[k] for k in ("throughput", "memory", "dicom", "goals")}, indent=2))
    print(f"written to {target}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes (smoke run)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--feed", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--mode", default="shape_cached", help=argparse.SUPPRESS)
    parser.add_argument("--raw", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--no-resent", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--limit-lines", type=int, default=None, help=argparse.SUPPRESS)
    parsed = parser.parse_args()
    if parsed.child:
        child(parsed)
    else:
        main(parsed)
