"""The whole-lifecycle tier: two runs of the whole asset graph per session, and selections of it.

Whole runs are few and expensive (CONVENTIONS rule 18), so each happens once per session and every
module that needs one reads the same fixture:

- ``embedded_run``: DuckDB, SQLite Dagster storage and MLflow store under a temporary MEDLLM_HOME, an
  OpenBao dev server started the way `medllm services up` does; the small synthetic hospital with bad
  input planted beside it.
- ``postgres_run``: the same graph with Dagster storage, warehouse and MLflow on the local PostgreSQL
  server (fresh databases per session); the same hospital and bad input, and the conformance corpus
  (../shared/conformance: files other projects publish) delivered beside them, so that data we did not
  write goes through every stage, training included, on the production backends.

Scenarios that rest on part of the graph (hospital sizes, consent withdrawal, a Vault outage) run in a
home of their own and materialise only that part (``run_lifecycle_in(..., selection=...)``): the same
lifecycle job, executed in process, restricted to an asset selection.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

SMALL_HOSPITAL_PATIENTS = 160  # a test split of ~25 persons: enough for a stable AUC
SMALL_HOSPITAL_SEED = 11
PG_ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
CONFORMANCE = Path(__file__).resolve().parents[1].parent / "shared" / "conformance"
CORPUS_FOLDERS = ("fhir", "hl7v2", "dicom")

ENV_KEYS = (
    "MEDLLM_HOME",
    "MEDLLM_LANDING_DIR",
    "MEDLLM_LANDING_CONSUME",
    "MEDLLM_WAREHOUSE_URL",
    "MLFLOW_TRACKING_URI",
    "MEDLLM_MLFLOW_ARTIFACT_ROOT",
    "MEDLLM_DAGSTER_PG_URL",
    "MEDLLM_SOURCES_FILE",
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


WHOLE_RUN_FIXTURES = ("embedded_run", "postgres_run")


def _whole_run_group(path: Path) -> str | None:
    """The whole-lifecycle fixture a test module reads (its source names it), or None."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return None
    return next((name for name in WHOLE_RUN_FIXTURES if name in text), None)


@pytest.hookimpl(tryfirst=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """Under pytest-xdist with ``--dist loadfile`` (``make test``: ``-n 2``), send every module that reads one
    whole-lifecycle run to the same worker, so that each whole run still happens once per session; every other
    module is a unit of its own (its module-scoped fixtures run once). xdist's own ``loadgroup`` cannot do this
    with pytest 9.2: it renames ``item._nodeid``, which pytest 9 no longer reads. The two whole runs are queued
    first, so that they start at once on different workers."""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadScopeScheduling

    root = Path(str(config.rootpath))
    groups: dict[str, str] = {}

    class WholeRunsFirst(OrderedDict):
        """The work queue with the whole runs in front: the first two units go to the two workers."""

        def __setitem__(self, scope: str, tests: Any) -> None:
            super().__setitem__(scope, tests)
            if scope in WHOLE_RUN_FIXTURES:
                self.move_to_end(scope, last=False)

    class WholeRunScheduling(LoadScopeScheduling):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.workqueue = WholeRunsFirst()

        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::", 1)[0]
            if module not in groups:
                groups[module] = _whole_run_group(root / module) or module
            return groups[module]

    return WholeRunScheduling(config, log)


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


def landed_hashes(landing: Path) -> dict[str, str]:
    """landing relpath -> SHA-256 of every file waiting in the landing zone (what a run must account for)."""
    return {
        path.relative_to(landing).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(landing.rglob("*"))
        if path.is_file()
    }


@dataclass
class CorpusDelivery:
    """The conformance corpus as delivered: which file became which delivery, under which source codes."""

    hash_of: dict[str, str]  # corpus relpath -> content hash of the delivered file
    codes: tuple[str, ...]  # the source codes its folders became (``fhir``, ``hl7v2``, ``dicom``)


def stage_corpus_beside_hospital(workdir: Path) -> tuple[Path, Path, CorpusDelivery]:
    """Lay ../shared/conformance out as deliveries (``medllm stage-corpus``) and register its sources next to the
    hospital's: returns (staged landing folder, merged source registry, what was delivered)."""
    import yaml

    from medllm_pipelines.lib.ingest.corpus import stage_corpus
    from medllm_pipelines.lib.ingest.sources import DEFAULT_SOURCES_FILE

    staged_landing = workdir / "corpus-landing"
    staged = stage_corpus(CONFORMANCE, staged_landing, sources_file=workdir / "corpus-sources.yaml",
                          folders=CORPUS_FOLDERS)
    hospital_registry = yaml.safe_load(DEFAULT_SOURCES_FILE.read_text())
    corpus_registry = yaml.safe_load(staged.sources_file.read_text())
    hospital_codes = {s["code"] for s in hospital_registry["sources"]}
    assert not hospital_codes & {s["code"] for s in corpus_registry["sources"]}, "corpus and hospital share a code"
    merged = {
        "version": f"{hospital_registry['version']}+{corpus_registry['version']}",
        "sources": [*hospital_registry["sources"], *corpus_registry["sources"]],
    }
    registry = workdir / "sources-hospital-and-corpus.yaml"
    registry.write_text(yaml.safe_dump(merged, allow_unicode=True, sort_keys=False))
    hash_of = {
        corpus: hashlib.sha256((staged_landing / landing).read_bytes()).hexdigest()
        for landing, corpus in staged.delivered.items()
    }
    codes = tuple(sorted(s["code"] for s in corpus_registry["sources"]))
    return staged_landing, registry, CorpusDelivery(hash_of, codes)


@pytest.fixture(scope="session")
def small_hospital(tmp_path_factory: pytest.TempPathFactory) -> Hospital:
    from medllm_pipelines.lib.synth import generate_hospital

    root = tmp_path_factory.mktemp("hospital")
    manifest = generate_hospital(root, patients=SMALL_HOSPITAL_PATIENTS, seed=SMALL_HOSPITAL_SEED, write_identities=True)
    return Hospital(root, manifest)


# --- selections of the graph -------------------------------------------------------------
def through(*targets: Any) -> Any:
    """``targets`` and every asset upstream of them, ingestion included: the part of the graph they rest on."""
    from dagster import AssetSelection

    return AssetSelection.assets(*targets).upstream()


def dbt_models(defs: Any) -> Any:
    """The dbt models of the curate group (one dbt invocation: parse and build cost ~20 s at any size)."""
    from dagster import AssetSelection

    return AssetSelection.assets(*[k for a in defs.assets if "dbt" in a.required_resource_keys for k in a.keys])


def selected_keys(selection: Any, graph: Any) -> set[Any]:
    """The keys ``selection`` resolves to, with the other outputs of any multi-asset it cuts (they run as one step)."""
    return set(selection.required_multi_asset_neighbors().resolve(graph))


def materialise(settings: Any, selection: Any, *, partitions: list[str] | None = None,
                log_level: str = "WARNING") -> Any:
    """Materialise ``selection`` (a dagster AssetSelection) as one in-process run of the lifecycle job.

    What ``runner.run_lifecycle`` does for the whole graph, restricted to a selection: the ingest assets
    cover every registered institution (or ``partitions``) in the one run, the asset checks of the
    selected assets run with them. Returns a ``runner.LifecycleResult``.
    """
    from dagster import DagsterInstance

    from medllm_pipelines.definitions import make_definitions
    from medllm_pipelines.defs import keys
    from medllm_pipelines.lib.ingest.sources import UNROUTED, load_sources
    from medllm_pipelines.runner import LifecycleResult, ensure_partitions, partition_range_tags

    defs = make_definitions(settings)
    graph = defs.resolve_asset_graph()
    chosen = sorted(selected_keys(selection, graph), key=lambda k: k.to_user_string())
    names = list(partitions or [*load_sources(settings.sources_file).codes, UNROUTED])
    result = LifecycleResult(partitions=names)
    with DagsterInstance.get() as instance:
        ensure_partitions(instance, names)
        tags = {"medllm/trigger": "test-selection"}
        if any(graph.get(key).is_partitioned for key in chosen):
            tags.update(partition_range_tags(instance, names))
        result.runs.append(defs.resolve_job_def(keys.LIFECYCLE_JOB).execute_in_process(
            instance=instance, raise_on_error=False, asset_selection=chosen, tags=tags,
            run_config={"loggers": {"console": {"config": {"log_level": log_level}}}},
        ))
    return result


# --- runs --------------------------------------------------------------------------------
@dataclass
class LifecycleRun:
    settings: Any
    defs: Any
    result: Any
    hospital: Hospital | None
    env: dict[str, str] = field(default_factory=dict)  # the environment the run saw: reruns use it too
    selection: frozenset[Any] | None = None  # the asset keys of a partial run; None: the whole graph
    delivered: dict[str, str] = field(default_factory=dict)  # landing relpath -> hash, before the first run
    corpus: CorpusDelivery | None = None
    _report: dict[str, Any] | None = field(default=None, repr=False)

    @property
    def expected_keys(self) -> set[Any]:
        """What the run had to materialise: its selection, or every asset of the graph."""
        if self.selection is not None:
            return set(self.selection)
        return set(self.defs.resolve_asset_graph().get_all_asset_keys())

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

    def reconciliation(self) -> dict[str, Any]:
        """`medllm reconcile --json` for this home (computed on first use, then kept)."""
        if self._report is None:
            from medllm_pipelines.reconcile import reconciliation_report

            with scoped_env(self.env):
                self._report = reconciliation_report(self.settings)
        return self._report

    def rerun(self, *, job_name: str | None = None, selection: Any = None, partitions: list[str] | None = None,
              log_level: str = "WARNING") -> Any:
        """Run again in the same home: a job as `medllm run` runs it, or a selection (``materialise``)."""
        from medllm_pipelines.runner import run_lifecycle

        with scoped_env(self.env):
            if selection is not None:
                return materialise(self.settings, selection, partitions=partitions, log_level=log_level)
            return run_lifecycle(self.settings, job_name=job_name, partitions=partitions, log_level=log_level)


def assert_withheld_persons_leave_person_keyed_tables(run: LifecycleRun) -> dict[str, Any]:
    """No de-identified row points at a person the released patients table lacks, and each person-keyed
    table counts what it withheld under the rule that withheld the person. Returns deidentify/patients' metadata."""
    from medllm_pipelines.defs import keys
    from medllm_pipelines.lib.common.warehouse import Warehouse
    from medllm_pipelines.lib.deidentify.risk import K_ANONYMITY_SUPPRESSED

    patients_meta = run.materialization(keys.DEID_PATIENTS)
    warehouse = Warehouse(run.settings.warehouse_url)
    try:
        released = set(warehouse.read_table("deidentify", "patients")["patient_pseudonym"])
        for key in (keys.DEID_OBSERVATIONS, keys.DEID_CONDITIONS, keys.CONSENT_REGISTRY):
            frame = warehouse.read_table(*key.path)
            assert set(frame["patient_pseudonym"]) <= released, key.to_user_string()
            meta = run.materialization(key)
            assert f"removed[{K_ANONYMITY_SUPPRESSED}]" in meta and meta["reconciled"] is True
            if patients_meta[f"persons_withheld[{K_ANONYMITY_SUPPRESSED}]"] == 0:
                assert meta[f"removed[{K_ANONYMITY_SUPPRESSED}]"] == 0
    finally:
        warehouse.dispose()
    return patients_meta


def run_lifecycle_in(
    home: Path,
    hospital: Hospital | None,
    extra_env: dict[str, str] | None = None,
    *,
    bad_input: bool = True,
    corpus: bool = False,
    selection: Any = None,
    log_level: str = "INFO",
) -> LifecycleRun:
    """Deliver the hospital (None: deliver nothing) into MEDLLM_HOME/landing and materialise through Dagster.

    ``bad_input``: plant the malformed files of BAD_INPUT beside the hospital's (it needs a DICOM file).
    ``corpus``: deliver ../shared/conformance beside them, its folders registered as sources of their own.
    ``selection``: a dagster AssetSelection, or a callable of the Definitions giving one (``materialise``);
    None runs the whole graph as `medllm run` does (``runner.run_lifecycle``).
    The caller stops the OpenBao server (``stop_services(home)``).
    """
    from medllm_pipelines.cli import record_demo_approval
    from medllm_pipelines.definitions import make_definitions
    from medllm_pipelines.lib.services.openbao import start_local_server
    from medllm_pipelines.runner import run_lifecycle
    from medllm_pipelines.settings import load_settings, prepare_home

    env = {"MEDLLM_HOME": str(home), **(extra_env or {})}
    delivery = None
    if corpus:
        staged_landing, registry, delivery = stage_corpus_beside_hospital(home.parent / f"{home.name}-corpus")
        env["MEDLLM_SOURCES_FILE"] = str(registry)
    with scoped_env(env):
        settings = load_settings()
        prepare_home(settings)
        env["DAGSTER_HOME"] = os.environ["DAGSTER_HOME"] = str(settings.dagster_home)
        start_local_server(settings.services_dir, port=0)  # what `medllm services up` starts
        if hospital is not None:
            hospital.copy_landing_to(settings.landing_dir)
        if bad_input:
            plant_bad_input(settings.landing_dir)
        if delivery is not None:
            shutil.copytree(staged_landing, settings.landing_dir, dirs_exist_ok=True)
        delivered = landed_hashes(settings.landing_dir)
        record_demo_approval(settings)  # training refuses to run without a valid ethics approval
        defs = make_definitions(settings)
        if selection is None:
            result = run_lifecycle(settings, log_level=log_level)  # the function `medllm run` calls
            chosen = None
        else:
            selection = selection(defs) if callable(selection) else selection
            result = materialise(settings, selection, log_level=log_level)
            chosen = frozenset(selected_keys(selection, defs.resolve_asset_graph()))
        return LifecycleRun(settings, defs, result, hospital, dict(env), chosen, delivered, delivery)


def stop_services(home: Path) -> None:
    from medllm_pipelines.lib.services.openbao import stop_dev_server

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
    """The hospital, its bad input and (when ../shared/conformance is present) the conformance corpus."""
    home = tmp_path_factory.mktemp("medllm_home_pg")
    env = {
        "MEDLLM_WAREHOUSE_URL": postgres_databases["warehouse"],
        "MLFLOW_TRACKING_URI": postgres_databases["mlflow"],
        "MEDLLM_DAGSTER_PG_URL": postgres_databases["dagster"],
    }
    try:
        yield run_lifecycle_in(home, small_hospital, env, corpus=CONFORMANCE.is_dir())
    finally:
        stop_services(home)
