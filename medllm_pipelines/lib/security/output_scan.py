"""The run-wide leak scan: everything a run wrote outside the encrypted raw zone.

Per-table leak gates guard the de-identified warehouse tables; this module
looks everywhere else a direct identifier could slip out: MLflow (run names,
params, tags, metric keys, artifacts, logged models), Dagster asset metadata,
check results and log messages, and the files of the artifact store and
Dagster's home (compute logs).

Thousands of identifiers against megabytes of model files and logs is a
multi-pattern search: one Aho-Corasick pass (pyahocorasick) per haystack
instead of one substring search per identifier (~200x faster at 7,000
needles over 5 MB). A hit reports where, which kind and how many, with the
surrounding bytes masked; never the value.
"""

from __future__ import annotations

import tempfile
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medllm_pipelines.lib.security.leak_scan import IdentifierMatcher, LeakHit

UNSCANNED = "_unscanned"  # haystack kinds that could not be read
MAX_FILE_BYTES = 512 * 1024 * 1024  # larger files are listed as skipped, not read into memory


@dataclass
class ScanTally:
    """What was looked at, so an empty result can be told apart from an empty scan."""

    items: Counter[str] = field(default_factory=Counter)  # haystack kind -> how many scanned
    bytes_scanned: int = 0
    skipped: list[str] = field(default_factory=list)

    def as_metadata(self) -> dict[str, Any]:
        return {"scanned": dict(sorted(self.items.items())), "bytes_scanned": self.bytes_scanned,
                "skipped": self.skipped}


def scan_items(items: Iterable[tuple[str, str, str | bytes]], matcher: IdentifierMatcher,
               tally: ScanTally) -> list[LeakHit]:
    """``(haystack kind, location, content)`` triples; one hit per location and identifier kind."""
    hits: list[LeakHit] = []
    for kind, location, content in items:
        if kind.endswith(UNSCANNED):
            tally.skipped.append(location)  # not readable: the scan cannot vouch for it
            continue
        data = content.encode("utf-8") if isinstance(content, str) else content
        tally.items[kind] += 1
        tally.bytes_scanned += len(data)
        found = matcher.count(data)
        if found:
            context = matcher.mask(data)
            hits.extend(LeakHit(location, ident, n, context) for ident, n in sorted(found.items()))
    return hits


def files_under(folders: Iterable[Path], root_label: dict[Path, str] | None = None,
                exclude: Iterable[Path] = ()) -> Iterator[tuple[str, str, bytes]]:
    """Every regular file below ``folders`` (``exclude``d subtrees skipped), as scan items."""
    excluded = [Path(p).resolve() for p in exclude]
    for folder in folders:
        folder = Path(folder).resolve()
        if not folder.is_dir():
            continue
        label = (root_label or {}).get(folder, folder.name)
        for path in sorted(folder.rglob("*")):
            resolved = path.resolve()
            if not path.is_file() or any(resolved.is_relative_to(e) for e in excluded):
                continue
            if path.stat().st_size > MAX_FILE_BYTES:
                yield "file_unscanned_too_large", f"{label}/{path.relative_to(folder)}", b""
                continue
            try:
                data = path.read_bytes()
            except OSError:
                continue
            yield "file", f"{label}/{path.relative_to(folder)}", data


def mlflow_items(tracking_uri: str, *, experiment_prefix: str = "") -> Iterator[tuple[str, str, str | bytes]]:
    """Run names, params, tags, metric keys and every artifact of every run; logged models likewise."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    experiments = [e for e in client.search_experiments() if e.name.startswith(experiment_prefix)]
    for experiment in experiments:
        yield "mlflow_experiment", f"mlflow:{experiment.experiment_id}", f"{experiment.name}\n{experiment.tags}"
        for run in client.search_runs([experiment.experiment_id], max_results=50_000):
            where = f"mlflow:{experiment.experiment_id}/{run.info.run_id}"
            yield "mlflow_run_name", f"{where}/run_name", run.info.run_name or ""
            yield "mlflow_params", f"{where}/params", "\n".join(f"{k}={v}" for k, v in sorted(run.data.params.items()))
            yield "mlflow_tags", f"{where}/tags", "\n".join(f"{k}={v}" for k, v in sorted(run.data.tags.items()))
            yield "mlflow_metric_keys", f"{where}/metrics", "\n".join(sorted(run.data.metrics))
            yield from _artifact_items(tracking_uri, run.info.run_id, None, where)
        for model in _logged_models(client, experiment.experiment_id):
            where = f"mlflow:{experiment.experiment_id}/models/{model.model_id}"
            yield "mlflow_model_params", f"{where}/params", "\n".join(f"{k}={v}" for k, v in sorted((model.params or {}).items()))
            yield "mlflow_model_tags", f"{where}/tags", "\n".join(f"{k}={v}" for k, v in sorted((model.tags or {}).items()))
            yield from _artifact_items(tracking_uri, None, model.artifact_location, where)


def _logged_models(client: Any, experiment_id: str) -> list[Any]:
    try:
        return list(client.search_logged_models(experiment_ids=[experiment_id], max_results=10_000))
    except (AttributeError, TypeError):  # an MLflow without logged models
        return []


def _artifact_items(tracking_uri: str, run_id: str | None, artifact_uri: str | None,
                    where: str) -> Iterator[tuple[str, str, bytes]]:
    import mlflow.artifacts

    with tempfile.TemporaryDirectory(prefix="medllm-leak-scan-") as tmp:
        try:
            if artifact_uri:
                local = mlflow.artifacts.download_artifacts(artifact_uri=artifact_uri, dst_path=tmp,
                                                            tracking_uri=tracking_uri)
            else:
                local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="", dst_path=tmp,
                                                            tracking_uri=tracking_uri)
        except Exception as exc:  # noqa: BLE001 - any store failure: reported as unscanned, which fails the gate
            yield "mlflow_artifacts_unscanned", f"{where}/artifacts ({type(exc).__name__})", b""
            return
        root = Path(local)
        paths = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for path in paths:
            rel = path.name if root.is_file() else path.relative_to(root)
            yield "mlflow_artifact", f"{where}/artifacts/{rel}", path.read_bytes()


def warehouse_items(warehouse: Any) -> Iterator[tuple[str, str, str]]:
    """Every non-empty, non-boolean column of every warehouse table (a ``lib.common.warehouse.Warehouse``)."""
    for schema, table, frame in warehouse.iter_tables():
        for column in frame.columns:
            values = frame[column].dropna()
            if values.empty or frame[column].dtype == bool:
                continue
            yield "warehouse_column", f"warehouse:{schema}.{table}.{column}", "\x00".join(values.astype(str).tolist())


def local_folder(uri: str) -> Path | None:
    """The folder a ``file:`` (or plain path) URI names; None for a remote store."""
    from urllib.parse import unquote, urlparse

    parsed = urlparse(uri)
    return Path(unquote(parsed.path)) if parsed.scheme in ("", "file") else None


@dataclass(frozen=True)
class RunWideScan:
    """The outcome of one run-wide scan: where identifiers were found, and what could not be read."""

    identifiers_searched: int
    identifier_kinds: list[str]
    hits: list[LeakHit]
    tally: ScanTally
    seconds: float

    @property
    def passed(self) -> bool:
        return not self.hits and not self.tally.skipped

    @property
    def verdict(self) -> str:
        if self.hits:
            return f"{len(self.hits)} location(s) hold identifiers; see findings"
        if self.tally.skipped:
            return f"{len(self.tally.skipped)} location(s) could not be scanned; see unscanned"
        return "no raw-zone identifier found outside the raw zone"

    def as_metadata(self, limit: int = 200) -> dict[str, Any]:
        return {
            "identifiers_searched": self.identifiers_searched,
            "identifier_kinds": self.identifier_kinds,
            "locations_with_hits": len(self.hits),
            **{f"scanned[{k}]": v for k, v in sorted(self.tally.items.items())},
            "bytes_scanned": self.tally.bytes_scanned,
            "unscanned": self.tally.skipped[:limit],
            "scan_seconds": round(self.seconds, 2),
            "findings": [{"location": h.location, "kind": h.identifier_kind, "count": h.count, "context": h.context}
                         for h in self.hits[:limit]],
        }


def scan_run_outputs(matcher: IdentifierMatcher, sources: Iterable[Iterable[tuple[str, str, str | bytes]]]) -> RunWideScan:
    """Scan every ``(kind, location, content)`` of every source with one matcher; values never leave it."""
    import time

    started = time.perf_counter()
    tally = ScanTally()
    hits: list[LeakHit] = []
    for items in sources:
        hits += scan_items(items, matcher, tally)
    return RunWideScan(matcher.size, sorted(matcher.kinds), hits, tally, time.perf_counter() - started)
