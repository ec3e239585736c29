"""Session fixtures that run the whole asset graph in-process against real services.

Embedded: DuckDB, SQLite Dagster storage and MLflow store under a temporary
MEDLLM_HOME, an OpenBao dev server started the way `medllm services up` does.
PostgreSQL: the same graph with Dagster storage, warehouse and MLflow on the
local server (fresh databases per session).
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

SMALL_HOSPITAL_PATIENTS = 160  # a test split of ~25 persons: enough for a stable AUC
SMALL_HOSPITAL_SEED = 11
PG_ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"

ENV_KEYS = (
    "MEDLLM_HOME",
    "MEDLLM_LANDING_DIR",
    "MEDLLM_LANDING_CONSUME",
    "MEDLLM_WAREHOUSE_URL",
    "MLFLOW_TRACKING_URI",
    "MEDLLM_MLFLOW_ARTIFACT_ROOT",
    "MEDLLM_DAGSTER_PG_URL",
    "DAGSTER_HOME",
    "VAULT_ADDR",
    "VAULT_TOKEN",
)


@contextmanager
def scoped_env(values: dict[str, str]) -> Iterator[None]:
    """Set exactly these variables (others of ENV_KEYS unset) for a session fixture."""
    saved = {k: os.environ.get(k) for k in ENV_KEYS}
    for key in ENV_KEYS:
        os.environ.pop(key, None)
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@dataclass
class Hospital:
    root: Path
    manifest: Any

    @property
    def identities(self) -> Path:
        return self.root / "_truth" / "identities.jsonl"

    def copy_landing_to(self, target: Path) -> None:
        """What the hospital delivers: everything except the `_truth` side folder."""
        shutil.copytree(self.root, target, ignore=shutil.ignore_patterns("_truth"), dirs_exist_ok=True)


# Bad input delivered beside the hospital's files (issue: malformed JSON, non-FHIR
# JSON, truncated DICOM, empty file, unknown file type, file outside a source folder).
BAD_INPUT = {
    "hzsf/fhir/bundles/zz-malformed.json": b'{"resourceType": "Bundle", "type": "collection", "entry": [',
    "hzsf/fhir/bundles/zz-not-fhir.json": b'{"report": "quarterly", "rows": [1, 2, 3]}',
    "rvic/fhir/bulk/zz-empty.ndjson": b"",
    "jhsq/fhir/bundles/zz-gbk.json": '{"resourceType": "Patient", "name": [{"text": "病人"}]}'.encode("gbk"),
    "hzsf/notes/zz-scan.pdf": b"%PDF-1.4 not a supported feed",
    "stray-file.json": b'{"resourceType": "Patient"}',
    "xyzh/fhir/bundles/bundle-1.json": b'{"resourceType": "Bundle", "type": "collection", "entry": []}',
}
BAD_INPUT_REASONS = {
    "malformed_json",
    "not_fhir",
    "empty_file",
    "encoding_error",
    "unsupported_file_type",
    "unknown_source",
    "unregistered_source",
    "truncated_file",
}


def plant_bad_input(landing: Path) -> None:
    for relpath, content in BAD_INPUT.items():
        path = landing / relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    # a DICOM file cut in the middle of its pixel data
    dicom = sorted(landing.glob("*/dicom/*/*.dcm"))[0]
    data = dicom.read_bytes()
    (dicom.parent / "zz-truncated.dcm").write_bytes(data[: len(data) - 2000])
    plant_burned_in_copy(dicom, dicom.parent / "zz-burned-in.dcm")


def plant_burned_in_copy(source: Path, target: Path) -> None:
    """A valid instance of the same study whose pixels carry burned-in text: it must never be released."""
    import pydicom
    from pydicom.uid import generate_uid

    ds = pydicom.dcmread(source)
    ds.SOPInstanceUID = generate_uid(entropy_srcs=[str(source), "burned-in"])
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.BurnedInAnnotation = "YES"
    ds.save_as(target, enforce_file_format=True)


@pytest.fixture(scope="session")
def small_hospital(tmp_path_factory: pytest.TempPathFactory) -> Hospital:
    from medllm_pipelines.lib.synth import generate_hospital

    root = tmp_path_factory.mktemp("hospital")
    manifest = generate_hospital(root, patients=SMALL_HOSPITAL_PATIENTS, seed=SMALL_HOSPITAL_SEED, write_identities=True)
    return Hospital(root, manifest)


@dataclass
class LifecycleRun:
    settings: Any
    defs: Any
    result: Any
    hospital: Hospital

    def materialization(self, asset_key: Any) -> dict[str, Any]:
        """Metadata of the (single) materialisation of an unpartitioned asset."""
        found = list(self.result.materializations(asset_key))
        if len(found) != 1:
            raise KeyError(f"{asset_key.to_user_string()}: {len(found)} materialisations")
        return found[0]

    def partition_total(self, asset_key: Any, field: str) -> int:
        """A count summed over every partition's materialisation of an ingest asset."""
        return sum(int(meta[field]) for meta in self.result.materializations(asset_key))

    def check_evaluations(self) -> list[Any]:
        return [e.event_specific_data for e in self.result.all_events if e.event_type_value == "ASSET_CHECK_EVALUATION"]


def run_lifecycle_in(
    home: Path, hospital: Hospital | None, extra_env: dict[str, str] | None = None, *, bad_input: bool = True
) -> LifecycleRun:
    """Deliver the hospital (None: deliver nothing) into MEDLLM_HOME/landing and materialise everything through Dagster.

    ``bad_input``: plant the malformed files of BAD_INPUT beside the hospital's (it needs a DICOM file).
    """
    from medllm_pipelines.runner import run_lifecycle
    from medllm_pipelines.definitions import make_definitions
    from medllm_pipelines.lib.security.openbao import start_local_server
    from medllm_pipelines.settings import load_settings, prepare_home

    env = {"MEDLLM_HOME": str(home), **(extra_env or {})}
    with scoped_env(env):
        settings = load_settings()
        prepare_home(settings)
        os.environ["DAGSTER_HOME"] = str(settings.dagster_home)
        start_local_server(settings.services_dir, port=0)  # what `medllm services up` starts
        if hospital is not None:
            hospital.copy_landing_to(settings.landing_dir)
        if bad_input:
            plant_bad_input(settings.landing_dir)
        from medllm_pipelines.cli import record_demo_approval

        record_demo_approval(settings)  # training refuses to run without a valid ethics approval
        result = run_lifecycle(settings)  # the function `medllm run` calls
        return LifecycleRun(settings, make_definitions(settings), result, hospital)


def stop_services(home: Path) -> None:
    from medllm_pipelines.lib.security.openbao import stop_dev_server

    stop_dev_server(home / "services")


@pytest.fixture(scope="session")
def embedded_run(tmp_path_factory: pytest.TempPathFactory, small_hospital: Hospital) -> Iterator[LifecycleRun]:
    home = tmp_path_factory.mktemp("medllm_home")
    try:
        yield run_lifecycle_in(home, small_hospital)
    finally:
        stop_services(home)


def _pg_admin(sql: str) -> None:
    import psycopg2

    conn = psycopg2.connect(PG_ADMIN_DSN, connect_timeout=5)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(sql)
    finally:
        conn.close()


@pytest.fixture(scope="session")
def postgres_databases() -> Iterator[dict[str, str]]:
    """Three fresh databases: Dagster storage, warehouse, MLflow backend."""
    try:
        _pg_admin("SELECT 1")
    except Exception as exc:  # the Makefile starts PostgreSQL; say so if it is down
        pytest.fail(f"PostgreSQL at 127.0.0.1:5432 is not reachable ({type(exc).__name__}); run `make postgres`")
    suffix = uuid.uuid4().hex[:8]
    names = {role: f"medllm_test_{role}_{suffix}" for role in ("dagster", "warehouse", "mlflow")}
    for name in names.values():
        _pg_admin(f"CREATE DATABASE {name}")
    try:
        yield {role: f"postgresql+psycopg2://postgres@127.0.0.1:5432/{name}" for role, name in names.items()}
    finally:
        for name in names.values():
            _pg_admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture(scope="session")
def postgres_run(
    tmp_path_factory: pytest.TempPathFactory, small_hospital: Hospital, postgres_databases: dict[str, str]
) -> Iterator[LifecycleRun]:
    home = tmp_path_factory.mktemp("medllm_home_pg")
    env = {
        "MEDLLM_WAREHOUSE_URL": postgres_databases["warehouse"],
        "MLFLOW_TRACKING_URI": postgres_databases["mlflow"],
        "MEDLLM_DAGSTER_PG_URL": postgres_databases["dagster"],
    }
    try:
        with scoped_env({"MEDLLM_HOME": str(home), **env}):
            yield run_lifecycle_in(home, small_hospital, env)
    finally:
        stop_services(home)
