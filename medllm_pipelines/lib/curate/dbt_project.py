"""The dbt project (``dbt/``) from Python: where it is, how dbt reaches the warehouse, its manifest.

dbt reads its connection from environment variables only (``dbt/profiles.yml``);
this module derives them from the warehouse URL, so the DuckDB file path or the
PostgreSQL password never lands in a file. The password travels as
``DBT_ENV_SECRET_*``, which dbt scrubs from its logs and artifacts.

Dagster (dagster-dbt) builds the curate group's dbt assets from
``dbt/target/manifest.json`` when the definitions are imported; ``dbt parse``
writes it (``make dbt-parse``, part of ``make install``). Run as a module::

    python -m medllm_pipelines.cli_dbt parse   # write the manifest
    python -m medllm_pipelines.cli_dbt docs    # dbt docs generate

against the warehouse the environment selects (``medllm_pipelines.settings``).
"""

from __future__ import annotations

import getpass
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

from medllm_pipelines.lib.common.files import exclusive_lock

DBT_PROJECT_DIR = Path(__file__).resolve().parents[3] / "dbt"
DBT_PROFILES_DIR = DBT_PROJECT_DIR
DBT_TARGET_PATH = "target"
MANIFEST_PATH = DBT_PROJECT_DIR / DBT_TARGET_PATH / "manifest.json"
# The schema every dbt model is built in (profiles.yml): model `x` is `curate.x`.
DBT_SCHEMA = "curate"

DUCKDB_TARGET = "duckdb"
POSTGRES_TARGET = "postgres"

# Environment variables read by dbt/profiles.yml.
DUCKDB_PATH_ENV = "MEDLLM_DBT_DUCKDB_PATH"
PG_HOST_ENV = "MEDLLM_DBT_PG_HOST"
PG_PORT_ENV = "MEDLLM_DBT_PG_PORT"
PG_USER_ENV = "MEDLLM_DBT_PG_USER"
PG_PASSWORD_ENV = "DBT_ENV_SECRET_MEDLLM_PG_PASSWORD"
PG_DBNAME_ENV = "MEDLLM_DBT_PG_DBNAME"
PG_SSLMODE_ENV = "MEDLLM_DBT_PG_SSLMODE"
CONNECTION_ENV_KEYS = (
    DUCKDB_PATH_ENV,
    PG_HOST_ENV,
    PG_PORT_ENV,
    PG_USER_ENV,
    PG_PASSWORD_ENV,
    PG_DBNAME_ENV,
    PG_SSLMODE_ENV,
)

# Files whose change can change the manifest (the project's graph).
_PROJECT_GLOBS = ("dbt_project.yml", "models/**/*", "macros/**/*", "tests/**/*")


class DbtManifestMissingError(RuntimeError):
    """The manifest dagster-dbt builds the asset graph from has not been generated."""


@dataclass(frozen=True)
class DbtConnection:
    """Which profiles.yml target to use, and the environment variables it reads."""

    target: str
    env: dict[str, str]

    def __repr__(self) -> str:  # never show the password
        shown = {k: ("***" if k == PG_PASSWORD_ENV and v else v) for k, v in self.env.items()}
        return f"DbtConnection(target={self.target!r}, env={shown!r})"


def dbt_connection(warehouse_url: str) -> DbtConnection:
    """Map a warehouse URL (``duckdb:///path`` or ``postgresql+psycopg2://...``) to a dbt target.

    Missing PostgreSQL parts take libpq's defaults (port 5432, the OS user),
    so dbt connects where SQLAlchemy does.
    """
    if warehouse_url.startswith("duckdb:///"):
        return DbtConnection(DUCKDB_TARGET, {DUCKDB_PATH_ENV: warehouse_url.removeprefix("duckdb:///")})
    if not warehouse_url.startswith("postgresql"):
        raise ValueError("warehouse URL must start with duckdb:/// or postgresql")
    parts = urlsplit(warehouse_url)
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    dbname = unquote(parts.path.lstrip("/"))
    if not dbname:
        raise ValueError("the PostgreSQL warehouse URL names no database")
    env = {
        PG_HOST_ENV: unquote(parts.hostname or query.get("host", "") or "127.0.0.1"),
        PG_PORT_ENV: str(parts.port or query.get("port", "") or 5432),
        PG_USER_ENV: unquote(parts.username) if parts.username else getpass.getuser(),
        PG_PASSWORD_ENV: unquote(parts.password) if parts.password else "",
        PG_DBNAME_ENV: dbname,
        PG_SSLMODE_ENV: query.get("sslmode", "prefer"),
    }
    return DbtConnection(POSTGRES_TARGET, env)


def dbt_executable() -> str:
    """The dbt of this interpreter's environment (a venv's bin/ is often not on PATH)."""
    beside = Path(sys.executable).with_name("dbt")
    if beside.exists():
        return str(beside)
    found = shutil.which("dbt")
    if found is None:
        raise FileNotFoundError("dbt is not installed in this environment (dbt-core, dbt-duckdb, dbt-postgres)")
    return found


def project_files(project_dir: Path = DBT_PROJECT_DIR) -> list[Path]:
    files: set[Path] = set()
    for pattern in _PROJECT_GLOBS:
        files.update(p for p in project_dir.glob(pattern) if p.is_file())
    return sorted(files)


def manifest_is_stale(manifest_path: Path = MANIFEST_PATH, project_dir: Path = DBT_PROJECT_DIR) -> bool:
    """True when a model, macro, test or dbt_project.yml is newer than the manifest."""
    if not manifest_path.exists():
        return True
    built = manifest_path.stat().st_mtime
    return any(p.stat().st_mtime > built for p in project_files(project_dir))


def require_manifest(manifest_path: Path = MANIFEST_PATH) -> Path:
    """The manifest's path, or a clear error saying how to create it."""
    if not manifest_path.exists():
        raise DbtManifestMissingError(
            f"dbt manifest not found at {manifest_path}. The curate group's dbt assets are built from it "
            "when the Dagster definitions load. Generate it with `make dbt-parse` (part of `make install`) or "
            "`python -m medllm_pipelines.cli_dbt parse`, and again after changing dbt/."
        )
    return manifest_path


def run_target_path(project_dir: Path, run_id: str) -> Path:
    """A fresh dbt target folder for one Dagster run, seeded with the parse cache.

    Separate folders keep concurrent runs' artifacts apart; copying
    ``partial_parse.msgpack`` lets dbt skip a full re-parse (it falls back to
    one by itself when the project or profile differs).
    """
    target = project_dir / DBT_TARGET_PATH / "runs" / f"{run_id[:8]}-{uuid.uuid4().hex[:8]}"
    target.mkdir(parents=True, exist_ok=True)
    cache = project_dir / DBT_TARGET_PATH / "partial_parse.msgpack"
    if cache.exists():
        shutil.copy2(cache, target / cache.name)
    return target


def run_dbt(
    args: Sequence[str],
    connection: DbtConnection,
    *,
    project_dir: Path = DBT_PROJECT_DIR,
    profiles_dir: Path = DBT_PROFILES_DIR,
    target_path: str | Path = DBT_TARGET_PATH,
    environ: Mapping[str, str] | None = None,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    """Run one dbt command in a subprocess; connection details go through its environment only."""
    base = dict(os.environ if environ is None else environ)
    for key in CONNECTION_ENV_KEYS:  # nothing stale from the caller's environment
        base.pop(key, None)
    env = {**base, **connection.env, "DBT_SEND_ANONYMOUS_USAGE_STATS": "false"}
    command = [
        dbt_executable(),
        *args,
        "--project-dir",
        str(project_dir),
        "--profiles-dir",
        str(profiles_dir),
        "--target-path",
        str(target_path),
        "--target",
        connection.target,
    ]
    completed = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if check and completed.returncode != 0:
        tail = "\n".join((completed.stdout + completed.stderr).splitlines()[-40:])
        raise RuntimeError(f"`dbt {' '.join(args)}` failed (exit {completed.returncode}):\n{tail}")
    return completed


def parse_project(
    connection: DbtConnection,
    *,
    project_dir: Path = DBT_PROJECT_DIR,
    environ: Mapping[str, str] | None = None,
) -> Path:
    """``dbt parse``: write ``target/manifest.json`` (no database connection is opened)."""
    run_dbt(["parse", "--quiet"], connection, project_dir=project_dir, profiles_dir=project_dir, environ=environ)
    return require_manifest(project_dir / DBT_TARGET_PATH / "manifest.json")


def ensure_manifest(
    connection: DbtConnection,
    *,
    project_dir: Path = DBT_PROJECT_DIR,
    environ: Mapping[str, str] | None = None,
) -> Path:
    """Parse only when the manifest is missing or older than the project (safe across processes)."""
    manifest = project_dir / DBT_TARGET_PATH / "manifest.json"
    with exclusive_lock(manifest.parent / ".parse.lock"):  # pytest-xdist workers: one parses, the others reuse it
        if manifest_is_stale(manifest, project_dir):
            parse_project(connection, project_dir=project_dir, environ=environ)
    return manifest


def generate_docs(
    connection: DbtConnection,
    *,
    project_dir: Path = DBT_PROJECT_DIR,
    environ: Mapping[str, str] | None = None,
) -> Path:
    """``dbt docs generate``: the catalog is read from the warehouse, so it must exist."""
    run_dbt(["docs", "generate"], connection, project_dir=project_dir, profiles_dir=project_dir, environ=environ)
    return project_dir / DBT_TARGET_PATH / "index.html"
