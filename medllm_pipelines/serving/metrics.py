"""Prometheus metrics of the service (row P4): requests, latency per endpoint, errors, cache, models served.

With several uvicorn workers each process writes its samples to ``PROMETHEUS_MULTIPROC_DIR`` (set by
``medllm serve`` before the workers start) and ``/metrics`` aggregates them, so any worker answers for all.
"""

from __future__ import annotations

import os

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import multiprocess

__all__ = ["CACHE", "CONTENT_TYPE_LATEST", "ERRORS", "LATENCY", "MODEL_INFO", "REQUESTS", "render"]

REQUESTS = Counter("medllm_http_requests_total", "HTTP requests by route, method and status",
                   ["route", "method", "status"])
LATENCY = Histogram("medllm_http_request_duration_seconds", "Request latency by route", ["route"],
                    buckets=(0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0, 2.0, 5.0, 10.0))
ERRORS = Counter("medllm_http_errors_total", "Problem responses by route and reason code", ["route", "reason"])
CACHE = Counter("medllm_cache_requests_total", "Result cache lookups by scenario and outcome",
                ["scenario", "outcome"])
MODEL_INFO = Gauge("medllm_model_version_served", "1 for each model version a worker serves",
                   ["model", "version", "alias"], multiprocess_mode="liveall")


def render() -> bytes:
    """The exposition text: every worker's samples when running multi-process, else this process's."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry)
    from prometheus_client import REGISTRY

    return generate_latest(REGISTRY)
