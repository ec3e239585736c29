"""Great Expectations suites as versioned JSON files, run on in-memory frames.

The result names failed expectations and the *records* that failed them, by
source object hash and position, never by value: the frames validated here
can still hold identifiers.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from functools import cache, lru_cache
from pathlib import Path
from typing import Any

import pandas as pd

SUITES_DIR = Path(__file__).with_name("suites")
MAX_RECORDS_LISTED = 20


@dataclass(frozen=True)
class SuiteSpec:
    name: str
    version: str
    description: str
    expectations: tuple[dict[str, Any], ...]


@dataclass
class ExpectationOutcome:
    expectation: str
    column: str | None
    success: bool
    unexpected_count: int
    unexpected_percent: float
    failing_records: list[str] = field(default_factory=list)


@dataclass
class SuiteOutcome:
    suite: str
    suite_version: str
    success: bool
    evaluated: int
    rows: int
    outcomes: list[ExpectationOutcome]
    # GX's own validation result, already scrubbed of record values (see _scrub_result); for Data Docs.
    gx_result: Any = field(default=None, repr=False, compare=False)

    @property
    def failed(self) -> list[ExpectationOutcome]:
        return [o for o in self.outcomes if not o.success]

    def summary(self) -> str:
        if self.success:
            return f"{self.suite} v{self.suite_version}: {self.evaluated} expectations passed on {self.rows} rows"
        parts = [
            f"{o.expectation}({o.column or ''}) failed for {o.unexpected_count} rows"
            + (f" e.g. {', '.join(o.failing_records[:3])}" if o.failing_records else "")
            for o in self.failed
        ]
        return f"{self.suite} v{self.suite_version}: " + "; ".join(parts)

    def failures(self) -> dict[str, dict[str, Any]]:
        """Per failed expectation: how many rows, what share, and which records (source hash#position, never values)."""
        return {
            f"{o.expectation}({o.column})": {
                "unexpected_count": o.unexpected_count,
                "unexpected_percent": round(o.unexpected_percent, 3),
                "records": o.failing_records,
            }
            for o in self.failed
        }

    def as_metadata(self) -> dict[str, Any]:
        return {
            "suite": self.suite,
            "suite_version": self.suite_version,
            "expectations_evaluated": self.evaluated,
            "expectations_failed": len(self.failed),
            "rows_validated": self.rows,
            "failures": self.failures(),
        }


@cache
def load_suite(name: str) -> SuiteSpec:
    raw = json.loads((SUITES_DIR / f"{name}.json").read_text())
    return SuiteSpec(raw["name"], str(raw["version"]), raw.get("description", ""), tuple(raw["expectations"]))


def _record_ref(frame: pd.DataFrame, index: Any) -> str:
    """A record's address (source object hash prefix + position), never its values."""
    if "source_object" in frame.columns and index in frame.index:
        row = frame.loc[index]
        position = row.get("source_position")
        return f"{str(row['source_object'])[:12]}#{'' if pd.isna(position) else int(position)}"
    return f"row {index}"


_GX_LOCK = threading.Lock()


@lru_cache(maxsize=1)
def _gx_context() -> Any:
    """One ephemeral GX context per process: building a context costs ~1 s, a validation ~20 ms."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    # GX draws tqdm bars on stderr for every validation; they drown the run log.
    context.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
    return context


@cache
def _validation_definition(name: str) -> Any:
    """The suite's validation definition in the shared context, built once per suite."""
    import great_expectations as gx
    from great_expectations.expectations.expectation_configuration import (
        ExpectationConfiguration,
    )

    spec = load_suite(name)
    context = _gx_context()
    batch = (
        context.data_sources.add_pandas(f"medllm_{name}")
        .add_dataframe_asset(name)
        .add_batch_definition_whole_dataframe("whole_table")
    )
    suite = gx.ExpectationSuite(name=f"{spec.name}_v{spec.version}")
    for expectation in spec.expectations:
        suite.add_expectation_configuration(ExpectationConfiguration(type=expectation["type"], kwargs=expectation["kwargs"]))
    suite = context.suites.add(suite)
    return context.validation_definitions.add(gx.ValidationDefinition(name=f"{name}_validation", data=batch, suite=suite))


def run_suite(name: str, frame: pd.DataFrame) -> SuiteOutcome:
    """Validate ``frame`` against the named suite (ephemeral GX context, shared per process)."""
    spec = load_suite(name)
    frame = frame.reset_index(drop=True)
    with _GX_LOCK:
        validation = _validation_definition(name)
        result = validation.run(
            batch_parameters={"dataframe": frame},
            result_format={"result_format": "COMPLETE", "include_unexpected_rows": False},
        )
    outcomes: list[ExpectationOutcome] = []
    for item in result.results:
        kwargs = item.expectation_config.kwargs
        detail = item.result or {}
        indices = detail.get("unexpected_index_list") or []
        refs = [_record_ref(frame, i) for i in indices[:MAX_RECORDS_LISTED]]
        outcomes.append(
            ExpectationOutcome(
                expectation=item.expectation_config.type,
                column=kwargs.get("column") or kwargs.get("column_A") or ",".join(kwargs.get("column_list", [])) or None,
                success=bool(item.success),
                unexpected_count=int(detail.get("unexpected_count") or 0),
                unexpected_percent=float(detail.get("unexpected_percent") or 0.0),
                failing_records=refs,
            )
        )
        _scrub_result(item, refs)
    _scrub_meta(result)
    return SuiteOutcome(
        suite=spec.name,
        suite_version=spec.version,
        success=bool(result.success),
        evaluated=len(outcomes),
        rows=len(frame),
        outcomes=outcomes,
        gx_result=result,
    )


# Result keys that are counts and rates, safe to keep; everything else GX puts in
# an expectation result (unexpected values and their counts, observed values,
# index queries) may be a record value and is dropped or replaced by record refs.
_SAFE_RESULT_KEYS = {
    "element_count", "unexpected_count", "unexpected_percent", "unexpected_percent_total",
    "unexpected_percent_nonmissing", "missing_count", "missing_percent",
}


def _scrub_result(item: Any, refs: list[str]) -> None:
    """Replace the values in one GX expectation result by record references, in place."""
    detail = dict(item.result or {})
    kept = {k: v for k, v in detail.items() if k in _SAFE_RESULT_KEYS}
    observed = detail.get("observed_value")
    if isinstance(observed, (int, float)) and not isinstance(observed, bool):
        kept["observed_value"] = observed  # aggregate metrics (row counts, means) only
    if "unexpected_count" in detail:
        kept["partial_unexpected_list"] = list(refs)
        kept["partial_unexpected_counts"] = [{"value": ref, "count": 1} for ref in refs]
        kept["partial_unexpected_index_list"] = []
    item.result = kept
    if getattr(item, "exception_info", None):
        info = item.exception_info
        if isinstance(info, dict) and info.get("raised_exception"):
            item.exception_info = {"raised_exception": True, "exception_message": "expectation raised an error",
                                   "exception_traceback": None}


def _scrub_meta(result: Any) -> None:
    """Drop batch markers/specs that could carry frame contents from the result's meta."""
    meta = dict(getattr(result, "meta", {}) or {})
    for key in ("batch_spec", "batch_markers", "batch_parameters"):
        meta.pop(key, None)
    result.meta = meta


def build_data_docs(outcomes: list[SuiteOutcome], target_dir: str | Path, *, site_name: str = "medllm_quality") -> Path:
    """A static GX Data Docs site for these validation results, in ``target_dir``; returns index.html.

    Uses GX's own site builder (``SiteBuilder`` with a filesystem store backend)
    on an ephemeral context: no ``great_expectations.yml``, no network. The
    results are the scrubbed ones from :func:`run_suite`: failing records appear
    as ``<source hash prefix>#<position>``, never as values.
    """
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig
    from great_expectations.data_context.types.resource_identifiers import (
        ExpectationSuiteIdentifier,
        ValidationResultIdentifier,
    )

    target = Path(target_dir).resolve()
    target.mkdir(parents=True, exist_ok=True)
    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
    context.add_data_docs_site(
        site_name=site_name,
        site_config={
            "class_name": "SiteBuilder",
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
            "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(target)},
        },
    )
    for number, outcome in enumerate(outcomes):
        result = outcome.gx_result
        if result is None:
            raise ValueError(f"{outcome.suite}: no GX result to render (run it with run_suite)")
        suite_name = f"{outcome.suite}_v{outcome.suite_version}"
        if not context.suites.all() or suite_name not in {s.name for s in context.suites.all()}:
            suite = gx.ExpectationSuite(name=suite_name)
            for item in result.results:
                suite.add_expectation_configuration(item.expectation_config)
            context.suites.add(suite)
        run_id = result.meta.get("run_id") if isinstance(result.meta, dict) else None
        key = ValidationResultIdentifier(
            expectation_suite_identifier=ExpectationSuiteIdentifier(name=suite_name),
            run_id=run_id or f"medllm-{number}",
            batch_identifier=f"{outcome.suite}-{number}",
        )
        context.validation_results_store.set(key, result)
    context.build_data_docs(site_names=[site_name])
    index = target / "index.html"
    if not index.is_file():
        raise RuntimeError("GX did not write index.html")
    return index
