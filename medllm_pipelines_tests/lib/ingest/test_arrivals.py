"""Daily arrival summaries, and the first-arrival day the daily partitions start at."""

from __future__ import annotations

import datetime as dt
import stat
from pathlib import Path

import pandas as pd

from medllm_pipelines.lib.ingest.arrivals import (
    arrivals_start,
    first_arrival_day,
    read_first_arrival,
    record_first_arrival,
    summarise_day,
)

TZ = "Asia/Shanghai"


def ledger() -> pd.DataFrame:
    rows = [
        ("a" * 64, "hzsf", "fhir_bundle", 10, "stored", "2024-03-04T15:30:00+00:00"),  # 23:30 on 03-04 in Shanghai
        ("b" * 64, "hzsf", "fhir_bundle", 20, "stored", "2024-03-04T16:30:00+00:00"),  # 00:30 on 03-05 in Shanghai
        ("c" * 64, None, "fhir_bundle", 5, "quarantined", "2024-03-05T01:00:00+00:00"),
        ("d" * 64, "rvic", "dicom", 100, "stored", "not a time"),
    ]
    return pd.DataFrame(rows, columns=["content_sha256", "institution", "file_kind", "size_bytes", "status", "landed_at"])


def test_a_day_is_summarised_in_local_time_per_institution_kind_and_status():
    summary = summarise_day(ledger(), "2024-03-05", TZ)

    assert summary.as_metadata() == {
        "day": "2024-03-05", "files": 2, "bytes": 25, "files_by_institution": {"<none>": 1, "hzsf": 1},
        "quarantined_files": 1,
    }
    assert list(summary.frame.columns) == ["institution", "file_kind", "status", "files", "bytes", "day"]
    assert summarise_day(ledger(), "2024-03-06", TZ).as_metadata()["files"] == 0


def test_the_first_arrival_is_the_earliest_local_day_of_the_ledger():
    assert first_arrival_day(ledger(), TZ) == "2024-03-04"
    assert first_arrival_day(ledger().iloc[0:0], TZ) is None


def test_the_first_arrival_is_recorded_once_privately_and_only_moves_earlier(tmp_path: Path):
    marker = tmp_path / "state" / "first_arrival"

    assert record_first_arrival(marker, "2024-03-05") == "2024-03-05"
    assert stat.S_IMODE(marker.stat().st_mode) == 0o600
    assert record_first_arrival(marker, "2024-04-01") == "2024-03-05"  # a later day never moves it
    assert record_first_arrival(marker, None) == "2024-03-05"
    assert record_first_arrival(marker, "2024-03-01") == "2024-03-01"  # a restored, older ledger does
    assert read_first_arrival(marker) == "2024-03-01"


def test_the_daily_partitions_start_at_a_configured_day_else_the_first_arrival_else_today(tmp_path: Path):
    marker = tmp_path / "first_arrival"
    now = dt.datetime(2026, 12, 5, 20, 0, tzinfo=dt.UTC)  # already 12-06 in Shanghai

    assert arrivals_start(marker, TZ, now=now) == "2026-12-06"
    assert arrivals_start(None, TZ, now=now) == "2026-12-06"
    marker.write_text("2026-11-30\n")
    assert arrivals_start(marker, TZ, now=now) == "2026-11-30"
    assert arrivals_start(marker, TZ, configured="2025-01-02", now=now) == "2025-01-02"
    marker.write_text("garbage")
    assert arrivals_start(marker, TZ, now=now) == "2026-12-06"
