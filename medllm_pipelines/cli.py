"""The ``medllm`` command: services, synthetic hospital, runs through Dagster, demo."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import click

from medllm_pipelines.runner import LifecycleResult, run_lifecycle
from medllm_pipelines.settings import Settings, activate, load_settings, prepare_home


def _settings() -> Settings:
    settings = load_settings()
    prepare_home(settings)
    activate(settings)
    return settings


def postgres_status(dsn: str = "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres") -> dict[str, Any]:
    """Is the local PostgreSQL reachable? (Reported by `services status`; started by the Makefile.)"""
    try:
        import psycopg2

        conn = psycopg2.connect(dsn.replace("postgresql+psycopg2", "postgresql"), connect_timeout=3)
        try:
            with conn.cursor() as cur:
                cur.execute("SHOW server_version")
                version = cur.fetchone()[0]
        finally:
            conn.close()
        return {"running": True, "version": version, "addr": "127.0.0.1:5432"}
    except Exception as exc:  # any failure means "not usable", reported as such
        return {"running": False, "error": type(exc).__name__, "addr": "127.0.0.1:5432"}


def ensure_services(settings: Settings, echo: bool = True) -> None:
    """Start the local persistent OpenBao when no external Vault is configured.

    Its keys live on disk under the services dir, so the encrypted raw zone stays
    readable after `medllm services down` or a reboot.
    """
    if not settings.uses_local_openbao:
        return
    from medllm_pipelines.lib.services.openbao import start_local_server

    server = start_local_server(settings.services_dir)
    if echo:
        state = "reused" if server.reused else "started"
        click.echo(
            f"OpenBao (persistent, storage in {server.data_dir}) {state} at {server.addr} (pid {server.pid}); "
            f"root token and unseal key in {server.state_file} (0600): losing that file loses the encrypted data"
        )


@click.group()
def main() -> None:
    """medllm-pipelines: the T/HBSEA 013-2024 model lifecycle on Dagster."""


# --- services -------------------------------------------------------------------
@main.group()
def services() -> None:
    """Local services: the project's OpenBao server (Vault API) and PostgreSQL's state."""


@services.command("up")
def services_up() -> None:
    settings = _settings()
    if settings.uses_local_openbao:
        ensure_services(settings)
    else:
        click.echo(f"external Vault configured (VAULT_ADDR={settings.vault_addr}); no local OpenBao started")
    pg = postgres_status()
    click.echo(f"PostgreSQL at 127.0.0.1:5432: {'running ' + pg.get('version', '') if pg['running'] else 'not running'}")


@services.command("down")
def services_down() -> None:
    from medllm_pipelines.lib.services.openbao import stop_dev_server

    settings = _settings()
    stopped = stop_dev_server(settings.services_dir)
    click.echo("OpenBao stopped (its keys stay on disk for the next `up`)" if stopped else "no OpenBao started by medllm was running")


@services.command("status")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def services_status(as_json: bool) -> None:
    from medllm_pipelines.lib.services.openbao import server_status

    settings = _settings()
    status = {
        "mode": settings.mode,
        "components": settings.component_modes(),
        "medllm_home": str(settings.home),
        "openbao": server_status(settings.services_dir) if settings.uses_local_openbao else {"external": settings.vault_addr},
        "postgresql": postgres_status(),
    }
    if as_json:
        click.echo(json.dumps(status, indent=2))
        return
    click.echo(f"mode: {status['mode']}  (MEDLLM_HOME={settings.home})")
    for component, backend in status["components"].items():
        click.echo(f"  {component:16s} {backend}")
    bao = status["openbao"]
    if settings.uses_local_openbao:
        click.echo(f"openbao: {'running at ' + str(bao['addr']) + ' pid ' + str(bao['pid']) if bao['running'] else 'stopped'}"
                   f"{'' if not bao['running'] else (' (healthy)' if bao['healthy'] else ' (unhealthy)')}")
    pg = status["postgresql"]
    click.echo(f"postgresql: {'running ' + pg.get('version', '') if pg['running'] else 'not running'} at {pg['addr']}")


# --- synthetic hospital ---------------------------------------------------------
@main.command()
@click.option("--out", "out_dir", type=click.Path(path_type=Path), required=True, help="landing folder to write")
@click.option("--patients", type=int, default=1000, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--clean", is_flag=True, help="no seeded defects")
@click.option("--write-identities", is_flag=True, help="also write _truth/identities.jsonl (plaintext PHI, for leak tests)")
def synth(out_dir: Path, patients: int, seed: int, clean: bool, write_identities: bool) -> None:
    """Generate the synthetic hospital (deterministic by seed)."""
    manifest = _synth(out_dir, patients, seed, clean, write_identities)
    click.echo(
        f"wrote {patients} patients to {out_dir}: {len(manifest.defects)} seeded defects, "
        f"T2D prevalence {manifest.diabetes['prevalence']:.3f}, optimal ROC-AUC {manifest.diabetes['optimal_roc_auc']:.3f} "
        f"(manifest: {out_dir / '_truth' / 'manifest.json'})"
    )


def _synth(out_dir: Path, patients: int, seed: int, clean: bool, write_identities: bool) -> Any:
    from medllm_pipelines.lib.synth import DefectRates, generate_hospital

    started = time.perf_counter()
    last = [0.0]

    def progress(done: int, total: int) -> None:
        now = time.perf_counter()
        if now - last[0] > 2 or done == total:
            last[0] = now
            click.echo(f"  synth: {done}/{total} patients", err=True)

    manifest = generate_hospital(
        out_dir,
        patients=patients,
        seed=seed,
        defect_rates=DefectRates.none() if clean else None,
        write_identities=write_identities,
        progress=progress,
    )
    click.echo(f"  synth: done in {time.perf_counter() - started:.1f}s", err=True)
    return manifest


# --- runs -----------------------------------------------------------------------
def _rounded(value: object) -> str:
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def _summarise(result: LifecycleResult) -> int:
    from medllm_pipelines.defs import keys

    for run in result.runs:
        click.echo(
            f"Dagster run {run.run_id} ({run.job_def.name}, institutions {', '.join(result.partitions)}) "
            f"{'succeeded' if run.success else 'FAILED'}"
        )
    for check in result.failed_checks():
        click.echo(f"  failed check: {check}")
    model = next(iter(result.materializations(keys.DIABETES_MODEL)), None)
    if model and model.get("trained") is False:
        click.echo(f"model NOT trained: {model.get('reason')} (the data stages completed; deliver more data and rerun)")
    for evaluation_key in keys.EVALUATIONS:
        report = next(iter(result.materializations(evaluation_key)), None)
        if report and report.get("evaluated") is not False:
            primary = report.get("primary_metric")
            click.echo(f"evaluation {report.get('registered_model')} v{report.get('registered_version')}: "
                       f"{primary} {_rounded(report.get(f'model_{primary}'))} vs baseline "
                       f"{_rounded(report.get(f'baseline_{primary}'))}; gate "
                       f"{'passed (champion)' if report.get('gate_passed') else 'failed'}; {report.get('report_html')}")
    return 0 if result.success else 1


@main.command()
@click.option("--landing", type=click.Path(path_type=Path), default=None, help="landing zone (default $MEDLLM_HOME/landing)")
@click.option("--keep-landed", is_flag=True, help="do not remove files from the landing zone after ingestion")
@click.option("--job", "job_name", default=None, help="lifecycle_job (default), ingest_job or downstream_job")
def run(landing: Path | None, keep_landed: bool, job_name: str | None) -> None:
    """Materialise the whole asset graph for what is in the landing zone."""
    if landing is not None:
        os.environ["MEDLLM_LANDING_DIR"] = str(landing.resolve())
    if keep_landed:
        os.environ["MEDLLM_LANDING_CONSUME"] = "false"
    settings = _settings()
    ensure_services(settings)
    click.echo(f"running {job_name or 'lifecycle_job'} on {settings.landing_dir} (mode: {settings.mode})")
    result = run_lifecycle(settings, job_name=job_name)
    sys.exit(_summarise(result))


def mlflow_ui_command(settings: Settings) -> str:
    """The MLflow UI on the host and port the run links in asset metadata point at (MEDLLM_MLFLOW_UI_URL)."""
    from urllib.parse import urlsplit

    ui = urlsplit(settings.mlflow_ui_url)
    host, port = ui.hostname or "127.0.0.1", ui.port or (443 if ui.scheme == "https" else 80)
    return f".venv/bin/mlflow ui --backend-store-uri {settings.mlflow_tracking_uri} --host {host} --port {port}"


def dagster_ui_command(settings: Settings) -> str:
    """The command ``demo`` prints for the Dagster UI; run as printed, without the venv on PATH, it must load
    (tested: dbt is found beside the interpreter, not on PATH)."""
    return f"DAGSTER_HOME={settings.dagster_home} .venv/bin/dagster dev -w workspace.yaml"


@main.command()
@click.option("--patients", type=int, default=1000, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
def demo(patients: int, seed: int) -> None:
    """Services up + synthetic hospital + the whole lifecycle, then where to look."""
    settings = _settings()
    ensure_services(settings)
    click.echo(f"generating a synthetic hospital of {patients} patients into {settings.landing_dir}")
    _synth(settings.landing_dir, patients, seed, clean=False, write_identities=False)
    record_demo_approval(settings)
    result = run_lifecycle(settings)
    code = _summarise(result)
    from medllm_pipelines.cli_serve import ensure_demo_client

    demo_client = ensure_demo_client(settings)
    click.echo("\nwhere to look:")
    click.echo(f"  REST API:    .venv/bin/medllm serve  -> http://127.0.0.1:8000/ui/ (demo client id and secret in "
               f"{demo_client}, 0600)")
    click.echo(f"  Dagster UI:  {dagster_ui_command(settings)}")
    click.echo(f"  MLflow UI:   {mlflow_ui_command(settings)}")
    click.echo(f"  reports:     {settings.reports_dir}")
    click.echo(f"  warehouse:   {settings.warehouse_url}")
    sys.exit(code)


@main.command("stage-corpus")
@click.option("--corpus", type=click.Path(exists=True, file_okay=False, path_type=Path), required=True,
              help="folder of files written elsewhere (e.g. ../shared/conformance)")
@click.option("--landing", type=click.Path(path_type=Path), required=True, help="landing zone to deliver into")
@click.option("--folder", "folders", multiple=True, help="only these top-level sub-folders (repeatable)")
def stage_corpus_command(corpus: Path, landing: Path, folders: tuple[str, ...]) -> None:
    """Deliver a folder of FHIR / HL7 v2 / DICOM files as a landing zone, one source per sub-folder,
    each file into the feed its content says, and write the source registry it needs."""
    from medllm_pipelines.lib.ingest.corpus import stage_corpus

    staged = stage_corpus(corpus, landing, folders=folders or None)
    for code, kinds in staged.by_source_and_kind.items():
        click.echo(f"  {code}: " + ", ".join(f"{n} {kind}" for kind, n in kinds.items()))
    if staged.skipped:
        click.echo(f"  not deliveries (skipped): {len(staged.skipped)} ({', '.join(staged.skipped[:5])})")
    click.echo(f"delivered {len(staged.delivered)} files; run them with:")
    click.echo(f"  MEDLLM_SOURCES_FILE={staged.sources_file} medllm run --landing {landing} && medllm reconcile --json")


@main.command()
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def reconcile(as_json: bool) -> None:
    """For the latest materialisations: records in, out, quarantined per stage, institution and reason."""
    from medllm_pipelines.reconcile import format_report, reconciliation_report

    report = reconciliation_report(_settings())
    if as_json:
        click.echo(json.dumps(report, indent=2, ensure_ascii=False, default=str))
    else:
        click.echo(format_report(report))
    if any(row["reconciled"] is False for row in report["stages"]) or report["files_unaccounted"] or report["files_unbalanced"]:
        sys.exit(1)


@main.command()
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def datasets(as_json: bool) -> None:
    """Every labelled set and split: version, counts per split and class, agreement, leakage check."""
    from medllm_pipelines.lib.common.warehouse import Warehouse
    from medllm_pipelines.lib.curate.catalog import format_datasets, list_datasets

    warehouse = Warehouse(_settings().warehouse_url)
    try:
        found = list_datasets(warehouse)
    finally:
        warehouse.dispose()
    click.echo(json.dumps(found, indent=2, ensure_ascii=False, default=str) if as_json else format_datasets(found))


@main.group()
def governance() -> None:
    """Ethics approvals (clause 4.1.2): a model is trained only under a valid approval."""


def record_demo_approval(settings: Settings) -> None:
    """The demo's synthetic data needs no committee, but the gate is real: record a visibly
    synthetic approval for the demo project unless one is on file."""
    import datetime as dt

    from medllm_pipelines.lib.curate.spec import load_spec, spec_ids
    from medllm_pipelines.lib.security.governance import ApprovalError, EthicsApproval, GovernanceStore

    spec = load_spec("t2d_risk")
    store = GovernanceStore(settings.governance_dir)
    today = dt.date.today()
    try:
        store.require_valid_approval(spec.project, spec.id, today, spec_version=spec.version)
    except ApprovalError:  # every spec of the demo project: the model zoo trains all of them
        store.record_approval(
            EthicsApproval(
                id="demo-synthetic-data",
                project=spec.project,
                purpose="demonstration on synthetic data only (no real patient)",
                scope=tuple(spec_ids()),
                approved_on=today,
                expires_on=today + dt.timedelta(days=30),
                committee="none: synthetic demo data",
            ),
            recorded_by="medllm demo",
        )
        click.echo("recorded a 30-day demo ethics approval for synthetic data (medllm governance list)")


@governance.command("approve")
@click.option("--id", "approval_id", required=True)
@click.option("--project", required=True)
@click.option("--scope", multiple=True, required=True, help="model spec id, optionally @version (repeatable)")
@click.option("--purpose", required=True)
@click.option("--committee", required=True)
@click.option("--approved-on", type=click.DateTime(formats=["%Y-%m-%d"]), required=True)
@click.option("--expires-on", type=click.DateTime(formats=["%Y-%m-%d"]), required=True)
@click.option("--recorded-by", required=True)
def governance_approve(approval_id, project, scope, purpose, committee, approved_on, expires_on, recorded_by) -> None:
    """Record an ethics committee's approval (versioned; revocation keeps history)."""
    from medllm_pipelines.lib.security.governance import EthicsApproval, GovernanceStore

    GovernanceStore(_settings().governance_dir).record_approval(
        EthicsApproval(
            id=approval_id,
            project=project,
            purpose=purpose,
            scope=tuple(scope),
            approved_on=approved_on.date(),
            expires_on=expires_on.date(),
            committee=committee,
        ),
        recorded_by=recorded_by,
    )
    click.echo(f"approval {approval_id} recorded for project {project}")


@governance.command("list")
def governance_list() -> None:
    from medllm_pipelines.lib.security.governance import GovernanceStore

    for approval in GovernanceStore(_settings().governance_dir).approvals():
        state = f"revoked {approval.revoked_on}" if approval.revoked_on else f"expires {approval.expires_on}"
        click.echo(f"{approval.id}: project {approval.project}, scope {', '.join(approval.scope)}, {state}, by {approval.committee}")


@main.command("scan-leaks")
@click.option("--identities", type=click.Path(exists=True, path_type=Path), required=True,
              help="identities.jsonl written by `medllm synth --write-identities`")
def scan_leaks(identities: Path) -> None:
    """Search every file and warehouse table under MEDLLM_HOME for the given identifiers."""
    from medllm_pipelines.lib.security.home_scan import scan_home

    settings = _settings()
    hits = scan_home(settings, identities)
    if not hits:
        click.echo("no identifier found in plaintext under MEDLLM_HOME or in the warehouse")
        return
    for hit in hits:
        click.echo(f"LEAK {hit.identifier_kind} x{hit.count} in {hit.location}")
    sys.exit(1)


from medllm_pipelines.cli_models import register as _register_models
from medllm_pipelines.cli_security import register as _register_security
from medllm_pipelines.cli_serve import register as _register_serve
from medllm_pipelines.cli_text import register as _register_text

_register_security(main)
_register_text(main)
_register_models(main)
_register_serve(main)

if __name__ == "__main__":
    main()
