"""Great Expectations suites as versioned JSON files, run on in-memory frames.

The result names failed expectations and the *records* that failed them, by
source object hash and position, never by value: the frames validated here
can still hold identifiers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache
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


@lru_cache(maxsize=None)
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


def run_suite(name: str, frame: pd.DataFrame) -> SuiteOutcome:
    """Validate ``frame`` against the named suite with an ephemeral GX context."""
    import great_expectations as gx
    from great_expectations.expectations.expectation_configuration import ExpectationConfiguration

    spec = load_suite(name)
    frame = frame.reset_index(drop=True)
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    # GX draws tqdm bars on stderr for every validation; they drown the run log.
    context.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
    batch = (
        context.data_sources.add_pandas(f"medllm_{name}")
        .add_dataframe_asset(name)
        .add_batch_definition_whole_dataframe("whole_table")
    )
    suite = gx.ExpectationSuite(name=f"{spec.name}_v{spec.version}")
    for expectation in spec.expectations:
        suite.add_expectation_configuration(ExpectationConfiguration(type=expectation["type"], kwargs=expectation["kwargs"]))
    suite = context.suites.add(suite)
    validation = context.validation_definitions.add(gx.ValidationDefinition(name=f"{name}_validation", data=batch, suite=suite))
    result = validation.run(
        batch_parameters={"dataframe": frame},
        result_format={"result_format": "COMPLETE", "include_unexpected_rows": False},
    )
    outcomes: list[ExpectationOutcome] = []
    for item in result.results:
        kwargs = item.expectation_config.kwargs
        detail = item.result or {}
        indices = detail.get("unexpected_index_list") or []
        outcomes.append(
            ExpectationOutcome(
                expectation=item.expectation_config.type,
                column=kwargs.get("column") or kwargs.get("column_A") or ",".join(kwargs.get("column_list", [])) or None,
                success=bool(item.success),
                unexpected_count=int(detail.get("unexpected_count") or 0),
                unexpected_percent=float(detail.get("unexpected_percent") or 0.0),
                failing_records=[_record_ref(frame, i) for i in indices[:MAX_RECORDS_LISTED]],
            )
        )
    return SuiteOutcome(
        suite=spec.name,
        suite_version=spec.version,
        success=bool(result.success),
        evaluated=len(outcomes),
        rows=len(frame),
        outcomes=outcomes,
    )
