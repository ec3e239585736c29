"""What one worker holds: keys, principals, clients, tokens, audit, limits, cache, store and models.

Built once per worker process at start-up (:func:`build_context`); tests build it on a throw-away home with the
project's OpenBao. Nothing here is per-user state: sessions, notes and limits live in the store and Redis.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medllm_pipelines.lib.security.audit import transit_audit_log
from medllm_pipelines.lib.security.clients import ClientRegistry
from medllm_pipelines.lib.security.rbac import AccessControl, Decision, PrincipalRegistry
from medllm_pipelines.lib.security.tokens import TokenIssuer, TokenVerifier
from medllm_pipelines.lib.security.vault_client import DEFAULT_TOKEN_KEY_NAME, SIGNING_KEY_TYPE
from medllm_pipelines.serving.audit import RequestAudit
from medllm_pipelines.serving.limits import RateLimiter, ResultCache, connect_redis
from medllm_pipelines.serving.models import ModelManager
from medllm_pipelines.settings import ServingSettings, Settings

__all__ = ["DECISION_CACHE_S", "ServiceContext", "build_context"]

# An allowed decision without MFA is reused for this long: checking the principal's sealed record costs a Vault
# round trip, too much per request. A deactivation or role change takes effect within this many seconds.
DECISION_CACHE_S = 5.0
CACHE_KEY_FILE = "cache_key.wrapped"


@dataclass
class ServiceContext:
    settings: Settings
    serving: ServingSettings
    keys: Any  # TransitKeyService
    registry: PrincipalRegistry
    access: AccessControl
    clients: ClientRegistry
    issuer: TokenIssuer
    verifier: TokenVerifier
    audit: RequestAudit
    limiter: RateLimiter
    token_limiter: RateLimiter
    cache: ResultCache
    redis: Any | None
    models: ModelManager
    store: Any = None  # lib.scenarios.store.DocumentStore, opened lazily
    started_at: float = field(default_factory=time.time)
    _decisions: dict[tuple[str, str], tuple[float, Decision]] = field(default_factory=dict)
    _store_lock: threading.Lock = field(default_factory=threading.Lock)
    scenario_cache: dict[str, Any] = field(default_factory=dict)

    def decide(self, principal: str, action: str, mfa: str | None) -> Decision:
        """The RBAC decision; allowed non-MFA decisions are reused for DECISION_CACHE_S."""
        privileged = self.access.matrix.requires_mfa(action)
        key = (principal, action)
        if not privileged:
            cached = self._decisions.get(key)
            if cached and time.monotonic() - cached[0] < DECISION_CACHE_S:
                return cached[1]
        decision = self.access.authorize(principal, action, mfa=mfa)
        if decision.allowed and not privileged:
            self._decisions[key] = (time.monotonic(), decision)
        return decision

    def document_store(self) -> Any:
        with self._store_lock:
            if self.store is None:
                from medllm_pipelines.lib.scenarios.store import DocumentStore

                if self.serving.store_url.startswith("sqlite:///"):
                    Path(self.serving.store_url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
                self.store = DocumentStore(self.serving.store_url, self.keys)
            return self.store

    def close(self) -> None:
        self.models.stop()
        self.audit.close()


def _cache_secret(keys: Any, folder: Path) -> bytes:
    """The cache's secret: a Vault data key, stored wrapped so every worker and replica unwraps the same one."""
    from medllm_pipelines.lib.common.files import exclusive_lock, write_private_atomic

    path = folder / CACHE_KEY_FILE
    folder.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(folder / (CACHE_KEY_FILE + ".lock")):
        if path.is_file():
            return bytes(keys.unwrap_data_key(path.read_text().strip()))
        plaintext, wrapped = keys.generate_data_key()
        write_private_atomic(path, wrapped)
        return bytes(plaintext)


def build_context(settings: Settings, serving: ServingSettings, keys: Any, *, warm: Any = None,
                  start_refresh: bool = True, warm_scenarios: Any = None) -> ServiceContext:
    """Open everything a worker needs; fails (and the worker does not start) if Vault is unusable."""
    keys.ensure_transit({DEFAULT_TOKEN_KEY_NAME: SIGNING_KEY_TYPE})
    registry = PrincipalRegistry(settings.principals_file, keys)
    access = AccessControl(registry)  # each request is audited once by the middleware, decision included
    clients = ClientRegistry(settings.clients_file, keys)
    issuer = TokenIssuer(keys, key_name=DEFAULT_TOKEN_KEY_NAME, ttl_s=serving.token_ttl_s)
    verifier = TokenVerifier(keys, key_name=DEFAULT_TOKEN_KEY_NAME)
    verifier.refresh()
    audit = RequestAudit(transit_audit_log(settings.audit_log_file, keys))
    redis_client = connect_redis(serving.redis_url)
    prefix = serving.redis_prefix
    limiter = RateLimiter(redis_client, serving.rate_limit_per_minute, prefix=f"{prefix}rl:")
    token_limiter = RateLimiter(redis_client, max(10, serving.rate_limit_per_minute // 10), prefix=f"{prefix}rl-token:")
    cache = ResultCache(redis_client, _cache_secret(keys, settings.serving_dir), serving.cache_ttl_s,
                        prefix=f"{prefix}cache:")
    models = ModelManager(tracking_uri=settings.mlflow_tracking_uri, store_root=settings.models_dir,
                          alias=serving.model_alias,
                          packaged_dir=Path(serving.packaged_models_dir) if serving.packaged_models_dir else None,
                          warm=warm)
    models.refresh()
    ctx = ServiceContext(settings, serving, keys, registry, access, clients, issuer, verifier, audit, limiter,
                         token_limiter, cache, redis_client, models)
    if warm_scenarios is not None:  # scenario objects first built here, not by the first request
        warm_scenarios(ctx)
        models.set_on_change(lambda old, new: warm_scenarios(ctx, new.name))
    if start_refresh:
        models.start(serving.model_refresh_s)
    return ctx
