"""Rate limits and the result cache, shared by every worker and replica through Redis.

Rate limits: a fixed one-minute window per principal (or per client address before authentication), counted
with ``INCR`` + ``EXPIRE`` in one pipeline. Result cache: the key is an HMAC-SHA-256 of the canonical input under
a key only the service holds (a Vault-wrapped data key), never the input itself, and the cached value is
AES-GCM encrypted under a key derived from the same secret, so Redis holds no readable patient data.
Without Redis (``MEDLLM_REDIS_URL=none`` or Redis down at start) limits are per process and nothing is cached;
``/readyz`` reports it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

__all__ = ["RateDecision", "RateLimiter", "ResultCache", "connect_redis", "canonical_json"]


def connect_redis(url: str | None) -> Any | None:
    """A Redis client if ``url`` is set and the server answers PING within a second; else None."""
    if not url:
        return None
    import redis

    client = redis.Redis.from_url(url, socket_timeout=1.0, socket_connect_timeout=1.0)
    try:
        client.ping()
    except redis.RedisError:
        return None
    return client


def canonical_json(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str).encode("utf-8")


@dataclass(frozen=True)
class RateDecision:
    allowed: bool
    limit: int
    remaining: int
    reset_s: int


class RateLimiter:
    """``limit`` requests per minute per key; Redis when given, else a per-process table."""

    def __init__(self, redis_client: Any | None, limit_per_minute: int, *, prefix: str = "medllm:rl:") -> None:
        self.redis, self.limit, self.prefix = redis_client, int(limit_per_minute), prefix
        self._local: dict[tuple[str, int], int] = {}
        self._lock = threading.Lock()

    def hit(self, key: str, *, now: float | None = None) -> RateDecision:
        now = time.time() if now is None else now
        window = int(now // 60)
        reset = 60 - int(now % 60)
        if self.redis is not None:
            try:
                pipe = self.redis.pipeline()
                name = f"{self.prefix}{key}:{window}"
                pipe.incr(name)
                pipe.expire(name, 120)
                count = int(pipe.execute()[0])
            except Exception:  # Redis gone mid-flight: fall back rather than refuse every request
                count = self._local_hit(key, window)
        else:
            count = self._local_hit(key, window)
        return RateDecision(count <= self.limit, self.limit, max(0, self.limit - count), reset)

    def _local_hit(self, key: str, window: int) -> int:
        with self._lock:
            for stale in [k for k in self._local if k[1] < window]:
                del self._local[stale]
            count = self._local.get((key, window), 0) + 1
            self._local[(key, window)] = count
            return count


class ResultCache:
    """Encrypted results keyed by an HMAC of (scenario, model versions, canonical input)."""

    def __init__(self, redis_client: Any | None, secret: bytes, ttl_s: int, *, prefix: str = "medllm:cache:") -> None:
        if len(secret) < 32:
            raise ValueError("the cache secret must be at least 256 bits")
        self.redis, self.ttl_s, self.prefix = redis_client, int(ttl_s), prefix
        self._mac_key = hmac.new(secret, b"medllm-cache-key:v1", hashlib.sha256).digest()
        self._aead = AESGCM(hmac.new(secret, b"medllm-cache-value:v1", hashlib.sha256).digest())

    @property
    def enabled(self) -> bool:
        return self.redis is not None and self.ttl_s > 0

    def key(self, scenario: str, models: Mapping[str, Any], payload: Any) -> str:
        material = canonical_json({"scenario": scenario, "models": models, "input": payload})
        return self.prefix + scenario + ":" + hmac.new(self._mac_key, material, hashlib.sha256).hexdigest()

    def get(self, key: str) -> Any | None:
        if not self.enabled:
            return None
        try:
            blob = self.redis.get(key)
        except Exception:
            return None
        if not blob or len(blob) < 13:
            return None
        try:
            return json.loads(self._aead.decrypt(blob[:12], blob[12:], key.encode()))
        except Exception:  # a value written under another secret or tampered with: a miss
            return None

    def put(self, key: str, value: Any) -> None:
        if not self.enabled:
            return
        nonce = os.urandom(12)
        blob = nonce + self._aead.encrypt(nonce, canonical_json(value), key.encode())
        try:
            self.redis.set(key, blob, ex=self.ttl_s)
        except Exception:
            return
