"""Every request an entry in the hash-chained audit log, written in batches.

One entry per request (who, role, route, outcome, reason code, request id, status, latency; never a body or a
patient identifier). Writing each alone would cost a Vault round trip (the head MAC) and an fsync per request;
a background thread appends what accumulated every ``interval_s`` in one locked batch (``AuditLog.append_many``).
Security decisions (token issuance, signing a note, every denial) call :meth:`flush` before answering, so the
window in which a crash loses entries only ever holds routine, allowed requests; the window is documented.
If the log cannot be appended to (Vault down, integrity error), ``healthy`` turns false and ``/readyz`` fails,
so a load balancer stops sending traffic to a replica that cannot audit.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from typing import Any

from medllm_pipelines.lib.security.audit import AuditLog

__all__ = ["RequestAudit"]

LOG = logging.getLogger("medllm.serving.audit")


class RequestAudit:
    def __init__(self, log: AuditLog, *, interval_s: float = 0.25, max_batch: int = 512) -> None:
        self.log, self.interval_s, self.max_batch = log, interval_s, max_batch
        self._pending: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self.healthy = True
        self.last_error: str | None = None
        self._thread = threading.Thread(target=self._run, name="medllm-audit", daemon=True)
        self._thread.start()

    def record(self, *, actor: str, role: str, action: str, resource: str, outcome: str, reason: str = "",
               details: Mapping[str, Any] | None = None, flush: bool = False) -> None:
        entry = {"actor": actor, "role": role, "action": action, "resource": resource, "outcome": outcome,
                 "reason": reason, "details": dict(details or {})}
        with self._lock:
            self._pending.append(entry)
            full = len(self._pending) >= self.max_batch
        if flush:
            self.flush()
        elif full:
            self._wake.set()

    def flush(self) -> None:
        with self._write_lock:
            with self._lock:
                batch, self._pending = self._pending, []
            if not batch:
                return
            try:
                self.log.append_many(batch)
                self.healthy, self.last_error = True, None
            except Exception as exc:  # keep the entries: they are written when the log works again
                with self._lock:
                    self._pending = batch + self._pending
                self.healthy, self.last_error = False, type(exc).__name__
                LOG.error("audit log append failed (%s); the service reports not ready", type(exc).__name__)
                raise

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=5)
        try:
            self.flush()
        except Exception:
            LOG.error("audit entries could not be written at shutdown")

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.interval_s)
            self._wake.clear()
            try:
                self.flush()
            except Exception:
                continue
