"""The ingest stage's two partition axes: source institution, and arrival day.

Institutions: one dynamic partition per registered source (added by its
landing sensor or by ``medllm run``) plus ``unrouted`` for files outside any
registered source folder, so one institution's feed is taken in, parsed,
re-run or backfilled without touching the others.

Days: ``ingest/daily_arrivals`` summarises the ledger per local day. The
partitions definition has to be fixed when the code loads, so its start is
read then (``lib/ingest/arrivals.py``): the day the first file arrived, as the
ingest stage recorded it, else today. ``end_offset=1``: today is a partition
too (the summary fills as the day goes).
"""

from __future__ import annotations

from pathlib import Path

from dagster import DailyPartitionsDefinition, DynamicPartitionsDefinition

from medllm_pipelines.lib.ingest.arrivals import arrivals_start

INSTITUTION_PARTITIONS = DynamicPartitionsDefinition(name="institution")

ARRIVALS_TIMEZONE = "Asia/Shanghai"
# The start of a definition built without a deployment to read it from (the
# module-level defaults of defs/ingest/arrivals.py); make_definitions passes
# the deployment's own start instead.
FALLBACK_ARRIVALS_START = "2024-01-01"


def daily_partitions(start_date: str) -> DailyPartitionsDefinition:
    """Local days (``ARRIVALS_TIMEZONE``) from ``start_date`` (``YYYY-MM-DD``) to today."""
    return DailyPartitionsDefinition(start_date=start_date, timezone=ARRIVALS_TIMEZONE, end_offset=1)


def deployment_arrivals_start(first_arrival_file: str | Path | None, configured: str | None = None) -> str:
    """The first day of this deployment's daily partitions (see the module docstring)."""
    return arrivals_start(first_arrival_file, ARRIVALS_TIMEZONE, configured)
