"""The one place that reads the environment.

Everything local lives under ``MEDLLM_HOME`` (default ``./.medllm``). Production
is the same code with environment variables pointing at real servers:

==============================  ==============================================
variable                        effect
==============================  ==============================================
``MEDLLM_HOME``                 root of all local state (default ``./.medllm``)
``MEDLLM_LANDING_DIR``          landing zone (default ``$MEDLLM_HOME/landing``)
``MEDLLM_LANDING_CONSUME``      ``false`` keeps landed files after ingestion
``MEDLLM_WAREHOUSE_URL``        ``postgresql+psycopg2://...`` for PostgreSQL;
                                default a DuckDB file under MEDLLM_HOME
``MLFLOW_TRACKING_URI``         tracking server or database URI; default a
                                SQLite store under MEDLLM_HOME
``MEDLLM_MLFLOW_ARTIFACT_ROOT`` artifact root for new experiments
``MEDLLM_MLFLOW_UI_URL``        base URL used for run links in metadata
``MEDLLM_DAGSTER_PG_URL``       Dagster run/event/schedule storage on
                                PostgreSQL (dagster-postgres)
``VAULT_ADDR`` / ``VAULT_TOKEN`` a real Vault; default the project's OpenBao
                                local OpenBao server (state file under MEDLLM_HOME)
``VAULT_CACERT``                CA bundle for Vault TLS
``MEDLLM_SOURCES_FILE``         source-institution registry (default: packaged)
``MEDLLM_K_ANONYMITY_K``        k every released person-level table must reach
                                (default 5)
``MEDLLM_L_DIVERSITY_L``        l reported for declared sensitive columns (default 2)
``MEDLLM_DP_DATASET``           privacy-ledger name of the released cohort
``MEDLLM_DP_EPSILON_BUDGET``    total epsilon of that dataset (default 10; fixed
                                when its ledger is created)
``MEDLLM_DP_EPSILON_PER_RELEASE`` epsilon one statistics release spends (default 1)
``MEDLLM_ARRIVALS_START``       first day of the daily-arrivals partitions
                                (default: the day the first file arrived)
``MEDLLM_PURPOSE``              processing purpose of the run, one declared in
                                the de-identification policy (default: its
                                ``default_purpose``)
``MEDLLM_TRAINING_SIZE``        ``demo`` (default: each spec's ``training``
                                block, minutes on a laptop) or ``full`` (its
                                ``full`` overrides, for production hardware)
``MEDLLM_REDIS_URL``            the REST service's rate limits and result cache
                                (default ``redis://127.0.0.1:6379/0``; ``none``:
                                per-process limits and no shared cache)
``MEDLLM_REDIS_PREFIX``          key prefix in Redis (default ``medllm:``)
``MEDLLM_SERVE_STORE_URL``      the service's note/session store (default a
                                SQLite file under MEDLLM_HOME; PostgreSQL URL in
                                production)
``MEDLLM_SERVE_*``              token lifetime, rate limit, body limit, cache
                                TTL, model refresh interval: see
                                :func:`serving_settings`
==============================  ==============================================

Nothing else in the package calls ``os.environ`` for configuration, so no other
module branches on embedded vs production.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

EMBEDDED = "embedded"
PRODUCTION = "production"

_TRUE = {"1", "true", "yes", "on"}
TRAINING_SIZES = ("demo", "full")  # the sizes ModelSpec.training_for accepts
TRAINING_PROCESSES = ("in_process", "subprocess")  # where a model trains (MEDLLM_TRAINING_PROCESS)


@dataclass(frozen=True)
class Settings:
    """Resolved configuration; paths are absolute."""

    home: Path
    landing_dir: Path
    landing_consume: bool
    warehouse_url: str
    mlflow_tracking_uri: str
    mlflow_artifact_root: str
    mlflow_ui_url: str
    dagster_home: Path
    dagster_pg_url: str | None
    vault_addr: str | None
    vault_token_in_env: bool
    vault_cacert: str | None
    sources_file: str | None = None
    k_anonymity_k: int = 5
    l_diversity_l: int = 2
    dp_dataset: str = "deidentified-cohort"
    dp_epsilon_budget: float = 10.0
    dp_epsilon_per_release: float = 1.0
    arrivals_start: str | None = None  # MEDLLM_ARRIVALS_START (YYYY-MM-DD); None: the first arrival, else today
    purpose: str | None = None  # MEDLLM_PURPOSE; None: the de-identification policy's default_purpose
    training_size: str = "demo"  # MEDLLM_TRAINING_SIZE: "demo" or "full" (ModelSpec.training_for)
    training_process: str = "in_process"  # MEDLLM_TRAINING_PROCESS: "in_process" or "subprocess" (Dagster Pipes)

    # --- derived locations -------------------------------------------------
    @property
    def services_dir(self) -> Path:
        return self.home / "services"

    @property
    def openbao_state_file(self) -> Path:
        return self.services_dir / "openbao.json"

    @property
    def raw_zone_dir(self) -> Path:
        return self.home / "raw_zone"

    @property
    def deidentified_dir(self) -> Path:
        return self.home / "deidentified"

    @property
    def first_arrival_file(self) -> Path:
        """The day the first file of this deployment arrived: where ``ingest/daily_arrivals`` starts."""
        return self.home / "ingest" / "first_arrival"

    @property
    def models_dir(self) -> Path:
        return self.home / "models"

    @property
    def reports_dir(self) -> Path:
        return self.home / "reports"

    @property
    def governance_dir(self) -> Path:
        """Ethics approvals and data-sharing agreements (versioned records)."""
        return self.home / "governance"

    @property
    def security_dir(self) -> Path:
        """Principals registry and the audit log (0700)."""
        return self.home / "security"

    @property
    def principals_file(self) -> Path:
        return self.security_dir / "principals.json"

    @property
    def clients_file(self) -> Path:
        """OAuth client credentials of the REST service (hashed secrets, sealed records)."""
        return self.security_dir / "clients.json"

    @property
    def demo_client_file(self) -> Path:
        """The demo clinician's client id and secret that `make demo` writes (0600) for a first API call."""
        return self.security_dir / "demo_client.json"

    @property
    def serving_dir(self) -> Path:
        """The REST service's embedded store (notes, triage sessions, studies, feedback) and metrics files."""
        return self.home / "serving"

    @property
    def audit_log_file(self) -> Path:
        """The hash-chained audit log (``.head`` and ``.lock`` beside it)."""
        return self.security_dir / "audit.jsonl"

    @property
    def exports_dir(self) -> Path:
        """Governed exports (envelope-encrypted) and their index, for key rotation."""
        return self.home / "exports"

    @property
    def privacy_ledger_dir(self) -> Path:
        """Differential-privacy budget ledgers (``ArtifactStoreResource.folder("governance", "privacy_ledger")``)."""
        return self.governance_dir / "privacy_ledger"

    @property
    def warehouse_is_postgres(self) -> bool:
        return self.warehouse_url.startswith("postgresql")

    @property
    def uses_local_openbao(self) -> bool:
        return self.vault_addr is None

    def component_modes(self) -> dict[str, str]:
        """Which backing service each component uses (for status output)."""
        return {
            "dagster_storage": "postgresql" if self.dagster_pg_url else "sqlite",
            "warehouse": "postgresql" if self.warehouse_is_postgres else "duckdb",
            "mlflow": _mlflow_kind(self.mlflow_tracking_uri),
            "vault": "local openbao server" if self.uses_local_openbao else "external vault",
        }

    @property
    def mode(self) -> str:
        modes = self.component_modes()
        embedded = (
            modes["dagster_storage"] == "sqlite"
            and modes["warehouse"] == "duckdb"
            and modes["mlflow"] == "sqlite"
            and self.uses_local_openbao
        )
        return EMBEDDED if embedded else PRODUCTION


def _mlflow_kind(uri: str) -> str:
    if uri.startswith("sqlite:"):
        return "sqlite"
    if uri.startswith("postgresql"):
        return "postgresql"
    if uri.startswith(("http://", "https://")):
        return "tracking server"
    return uri.split(":", 1)[0]


def _number(env: Mapping[str, str], name: str, default: float, kind: type, minimum: float) -> float:
    text = env.get(name, "").strip()
    if not text:
        return kind(default)
    try:
        value = kind(text)
    except ValueError:
        raise ValueError(f"{name} must be {'an integer' if kind is int else 'a number'}, got {text!r}") from None
    if not (math.isfinite(value) and value >= minimum):
        raise ValueError(f"{name} must be a finite number >= {minimum}, got {text!r}")
    return value


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Resolve settings from ``environ`` (default ``os.environ``)."""
    env = os.environ if environ is None else environ
    home = Path(env.get("MEDLLM_HOME", ".medllm")).expanduser().resolve()
    landing = Path(env.get("MEDLLM_LANDING_DIR", str(home / "landing"))).expanduser().resolve()
    warehouse_url = env.get("MEDLLM_WAREHOUSE_URL") or f"duckdb:///{home / 'warehouse' / 'medllm.duckdb'}"
    tracking_uri = env.get("MLFLOW_TRACKING_URI") or f"sqlite:///{home / 'mlflow' / 'mlflow.db'}"
    artifact_root = env.get("MEDLLM_MLFLOW_ARTIFACT_ROOT") or (home / "mlflow" / "artifacts").as_uri()
    return Settings(
        home=home,
        landing_dir=landing,
        landing_consume=env.get("MEDLLM_LANDING_CONSUME", "true").strip().lower() in _TRUE,
        warehouse_url=warehouse_url,
        mlflow_tracking_uri=tracking_uri,
        mlflow_artifact_root=artifact_root,
        mlflow_ui_url=env.get("MEDLLM_MLFLOW_UI_URL", "http://127.0.0.1:5000").rstrip("/"),
        dagster_home=Path(env.get("DAGSTER_HOME", str(home / "dagster_home"))).expanduser().resolve(),
        dagster_pg_url=env.get("MEDLLM_DAGSTER_PG_URL") or None,
        vault_addr=env.get("VAULT_ADDR") or None,
        vault_token_in_env=bool(env.get("VAULT_TOKEN")),
        vault_cacert=env.get("VAULT_CACERT") or None,
        sources_file=env.get("MEDLLM_SOURCES_FILE") or None,
        k_anonymity_k=int(_number(env, "MEDLLM_K_ANONYMITY_K", 5, int, 1)),
        l_diversity_l=int(_number(env, "MEDLLM_L_DIVERSITY_L", 2, int, 1)),
        dp_dataset=env.get("MEDLLM_DP_DATASET") or "deidentified-cohort",
        dp_epsilon_budget=_number(env, "MEDLLM_DP_EPSILON_BUDGET", 10.0, float, 1e-9),
        dp_epsilon_per_release=_number(env, "MEDLLM_DP_EPSILON_PER_RELEASE", 1.0, float, 1e-9),
        purpose=processing_purpose(env),
        arrivals_start=env.get("MEDLLM_ARRIVALS_START") or None,
        training_size=training_size(env),
        training_process=training_process(env),
    )


def training_size(environ: Mapping[str, str] | None = None) -> str:
    """``MEDLLM_TRAINING_SIZE``: "demo" (default) or "full"; anything else is refused with the choices."""
    env = os.environ if environ is None else environ
    size = (env.get("MEDLLM_TRAINING_SIZE") or "demo").strip().lower()
    if size not in TRAINING_SIZES:
        raise ValueError(f"MEDLLM_TRAINING_SIZE must be one of {', '.join(TRAINING_SIZES)}, got {size!r}")
    return size


def training_process(environ: Mapping[str, str] | None = None) -> str:
    """``MEDLLM_TRAINING_PROCESS``: "in_process" (default) or "subprocess" (the model trains in a child process
    launched through Dagster Pipes); anything else is refused with the choices."""
    env = os.environ if environ is None else environ
    process = (env.get("MEDLLM_TRAINING_PROCESS") or "in_process").strip().lower().replace("-", "_")
    if process not in TRAINING_PROCESSES:
        raise ValueError(f"MEDLLM_TRAINING_PROCESS must be one of {', '.join(TRAINING_PROCESSES)}, got {process!r}")
    return process


_EMBEDDED_DAGSTER_YAML = """\
# Written by medllm_pipelines.settings: embedded mode (SQLite storage).
storage:
  sqlite:
    base_dir: {base}
run_coordinator:
  module: dagster._core.run_coordinator
  class: QueuedRunCoordinator
  config:
    max_concurrent_runs: 1
telemetry:
  enabled: false
"""


def prepare_home(settings: Settings) -> None:
    """Create MEDLLM_HOME's folders and the Dagster instance config.

    Embedded mode writes a SQLite ``dagster.yaml``; with
    ``MEDLLM_DAGSTER_PG_URL`` set, ``infra/dagster.yaml`` (PostgreSQL via
    dagster-postgres, the URL read from the environment by Dagster itself) is
    copied instead, so the secret never lands in a file.
    """
    for folder in (
        settings.home,
        settings.landing_dir,
        settings.raw_zone_dir,
        settings.deidentified_dir,
        settings.models_dir,
        settings.reports_dir,
        settings.dagster_home,
    ):
        folder.mkdir(parents=True, exist_ok=True)
    settings.services_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    if settings.warehouse_url.startswith("duckdb:///"):
        Path(settings.warehouse_url.removeprefix("duckdb:///")).parent.mkdir(parents=True, exist_ok=True)
    if settings.mlflow_tracking_uri.startswith("sqlite:///"):
        Path(settings.mlflow_tracking_uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    if settings.mlflow_artifact_root.startswith("file://"):
        # A file URI is percent-encoded ("my%20home", non-ASCII names): decode it.
        Path(unquote(urlparse(settings.mlflow_artifact_root).path)).mkdir(parents=True, exist_ok=True)
    yaml_path = settings.dagster_home / "dagster.yaml"
    if settings.dagster_pg_url:
        content = (Path(__file__).resolve().parent / "infra_templates" / "dagster_postgres.yaml").read_text()
    else:
        content = _EMBEDDED_DAGSTER_YAML.format(base=settings.dagster_home / "storage")
    if not yaml_path.exists() or yaml_path.read_text() != content:
        yaml_path.write_text(content)


def activate(settings: Settings) -> None:
    """Point Dagster at our home (process-wide; only the CLI calls this)."""
    os.environ["DAGSTER_HOME"] = str(settings.dagster_home)


def processing_purpose(environ: Mapping[str, str] | None = None) -> str | None:
    """The declared purpose a run processes data for (``MEDLLM_PURPOSE``); None: the policy's default."""
    env = os.environ if environ is None else environ
    return env.get("MEDLLM_PURPOSE") or None


@dataclass(frozen=True)
class ServingSettings:
    """The REST service's knobs (``medllm serve``); every one an environment variable."""

    redis_url: str | None  # None: per-process rate limits, no shared cache
    store_url: str
    token_ttl_s: int
    rate_limit_per_minute: int
    max_body_bytes: int
    cache_ttl_s: int
    model_refresh_s: float
    packaged_models_dir: str | None  # MEDLLM_SERVE_MODELS_DIR: packaged model folders instead of the registry
    model_alias: str = "champion"  # MEDLLM_SERVE_MODEL_ALIAS: "challenger" for a staging replica
    redis_prefix: str = "medllm:"  # MEDLLM_REDIS_PREFIX: one per deployment sharing a Redis


def serving_settings(settings: Settings, environ: Mapping[str, str] | None = None) -> ServingSettings:
    """Resolve ``MEDLLM_REDIS_URL``, ``MEDLLM_SERVE_STORE_URL`` and the ``MEDLLM_SERVE_*`` limits."""
    env = os.environ if environ is None else environ
    redis_url = env.get("MEDLLM_REDIS_URL", "redis://127.0.0.1:6379/0").strip()
    store_url = env.get("MEDLLM_SERVE_STORE_URL") or f"sqlite:///{settings.serving_dir / 'store.sqlite'}"
    return ServingSettings(
        redis_url=None if redis_url.lower() in {"", "none", "off"} else redis_url,
        store_url=store_url,
        token_ttl_s=int(_number(env, "MEDLLM_SERVE_TOKEN_TTL_S", 900, int, 30)),
        rate_limit_per_minute=int(_number(env, "MEDLLM_SERVE_RATE_LIMIT_PER_MINUTE", 600, int, 1)),
        max_body_bytes=int(_number(env, "MEDLLM_SERVE_MAX_BODY_BYTES", 16 * 1024 * 1024, int, 1024)),
        cache_ttl_s=int(_number(env, "MEDLLM_SERVE_CACHE_TTL_S", 300, int, 0)),
        model_refresh_s=_number(env, "MEDLLM_SERVE_MODEL_REFRESH_S", 30.0, float, 0.5),
        packaged_models_dir=env.get("MEDLLM_SERVE_MODELS_DIR") or None,
        model_alias=env.get("MEDLLM_SERVE_MODEL_ALIAS") or "champion",
        redis_prefix=env.get("MEDLLM_REDIS_PREFIX") or "medllm:",
    )
