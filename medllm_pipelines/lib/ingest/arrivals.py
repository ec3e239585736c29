"""Feeds over time: what arrived each day, and the day the first file arrived.

The daily partitions of ``ingest/daily_arrivals`` must be known when the code
loads (a Dagster partitions definition is static), but the first arrival is a
fact of the ledger, known only once files land. The ingest stage therefore
records that day once, in a small file (:func:`record_first_arrival`), and the
definitions read it at load time (:func:`arrivals_start`): the time axis starts
at the first arrival instead of years of empty days. Before anything has
arrived, today is the start (no day before it can hold an arrival).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pandas as pd

from medllm_pipelines.lib.common.files import write_private_atomic
from medllm_pipelines.lib.ingest.intake import QUARANTINED

SUMMARY_COLUMNS = ["institution", "file_kind", "status", "files", "bytes", "day"]


def arrival_days(ledger: pd.DataFrame, timezone: str) -> pd.Series:
    """The local day (``YYYY-MM-DD`` in ``timezone``) each ledger row landed; NaN where ``landed_at`` is unreadable."""
    landed = pd.to_datetime(ledger["landed_at"], utc=True, errors="coerce")
    return landed.dt.tz_convert(timezone).dt.strftime("%Y-%m-%d")


def first_arrival_day(ledger: pd.DataFrame, timezone: str) -> str | None:
    """The day the first file of the ledger landed, or None for an empty ledger."""
    days = arrival_days(ledger, timezone).dropna()
    return None if days.empty else str(days.min())


@dataclass(frozen=True)
class DaySummary:
    """Files landed on one day, per institution, kind and status (a table of :data:`SUMMARY_COLUMNS`)."""

    day: str
    frame: pd.DataFrame

    def as_metadata(self) -> dict[str, Any]:
        by_institution = self.frame.groupby("institution")["files"].sum()
        return {
            "day": self.day,
            "files": int(self.frame["files"].sum()),
            "bytes": int(self.frame["bytes"].sum()),
            "files_by_institution": {str(k): int(v) for k, v in by_institution.items()},
            "quarantined_files": int(self.frame.loc[self.frame["status"] == QUARANTINED, "files"].sum()),
        }


def summarise_day(ledger: pd.DataFrame, day: str, timezone: str) -> DaySummary:
    """The ledger's rows of ``day`` (local to ``timezone``), counted per institution, kind and status."""
    todays = ledger[arrival_days(ledger, timezone) == day]
    summary = (
        todays.assign(institution=todays["institution"].fillna("<none>"))
        .groupby(["institution", "file_kind", "status"], as_index=False)
        .agg(files=("content_sha256", "count"), bytes=("size_bytes", "sum"))
        .assign(day=day)
    )
    return DaySummary(day, summary.astype({"files": "int64", "bytes": "int64"})[SUMMARY_COLUMNS])


def read_first_arrival(marker: str | Path) -> str | None:
    """The recorded first-arrival day, or None when nothing has been recorded (or the file is not a date)."""
    try:
        text = Path(marker).read_text().strip()
        dt.date.fromisoformat(text)
    except (FileNotFoundError, ValueError):
        return None
    return text


def record_first_arrival(marker: str | Path, day: str | None) -> str | None:
    """Keep the earliest of the recorded day and ``day`` in ``marker``; return what is recorded.

    Written once in the normal course (the first ingest run); rewritten only
    when an earlier day turns up (a ledger restored from before the marker).
    """
    recorded = read_first_arrival(marker)
    if day is None or (recorded is not None and recorded <= day):
        return recorded
    dt.date.fromisoformat(day)  # never record anything but a date
    write_private_atomic(marker, day + "\n")
    return day


def arrivals_start(marker: str | Path | None, timezone: str, configured: str | None = None,
                   now: dt.datetime | None = None) -> str:
    """The first daily partition: ``configured`` (an operator's choice), else the recorded first
    arrival, else today in ``timezone`` (nothing has arrived yet, so no earlier day can hold data)."""
    if configured:
        return dt.date.fromisoformat(configured).isoformat()
    recorded = read_first_arrival(marker) if marker else None
    if recorded is not None:
        return recorded
    return (now or dt.datetime.now(dt.UTC)).astimezone(ZoneInfo(timezone)).strftime("%Y-%m-%d")
