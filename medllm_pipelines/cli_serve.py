"""``medllm serve``: the REST service on uvicorn, and the demo client ``make demo`` leaves for a first call."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import click

from medllm_pipelines.settings import Settings, load_settings, prepare_home, serving_settings

__all__ = ["DEMO_CLIENT_PRINCIPAL", "app_factory", "ensure_demo_client", "register"]

DEMO_CLIENT_PRINCIPAL = "demo-clinician"


def _key_service(settings: Settings) -> Any:
    from medllm_pipelines.lib.security.vault_connection import key_service_for

    return key_service_for(settings)  # without importing Dagster: ~2 s less per worker at start


def app_factory() -> Any:
    """uvicorn's factory (``--factory``): settings from the environment, one context per worker."""
    from medllm_pipelines.serving.app import configure_logging, create_app
    from medllm_pipelines.serving.context import build_context
    from medllm_pipelines.serving.scenarios import warm, warm_scenarios

    settings = load_settings()
    serving = serving_settings(settings)
    configure_logging()
    quiet_pydicom()
    import torch

    torch.set_num_threads(1)  # one thread per worker: 2 threads each on 2 workers oversubscribe the cores 2x
    return create_app(lambda: build_context(settings, serving, _key_service(settings), warm=warm,
                                            warm_scenarios=warm_scenarios),
                      max_body_bytes=serving.max_body_bytes)


def quiet_pydicom() -> None:
    """pydicom warns about invalid values quoting the value (possibly a name): never in the service's logs."""
    import logging
    import warnings

    import pydicom

    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
    logging.getLogger("pydicom").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module="pydicom")


def ensure_demo_client(settings: Settings) -> Path:
    """A clinician principal with client credentials, written to a 0600 file (replaced on every demo)."""
    from medllm_pipelines.lib.security.audit import transit_audit_log
    from medllm_pipelines.lib.security.clients import ClientRegistry
    from medllm_pipelines.lib.security.rbac import PrincipalRegistry

    keys = _key_service(settings)
    settings.security_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    registry = PrincipalRegistry(settings.principals_file, keys)
    audit = transit_audit_log(settings.audit_log_file, keys)
    if registry.find(DEMO_CLIENT_PRINCIPAL) is None:
        registry.add_principal(DEMO_CLIENT_PRINCIPAL, "clinician")
        audit.append(actor="medllm-demo", role="none", action="manage_roles",
                     resource=f"principal:{DEMO_CLIENT_PRINCIPAL}", outcome="succeeded",
                     reason="make demo: the demo clinician of the REST service", details={"role": "clinician"})
    issued = ClientRegistry(settings.clients_file, keys).add(DEMO_CLIENT_PRINCIPAL)
    audit.append(actor="medllm-demo", role="none", action="manage_roles",
                 resource=f"principal:{DEMO_CLIENT_PRINCIPAL}", outcome="succeeded",
                 reason="make demo: issued client credentials", details={"client_id": issued.client_id})
    from medllm_pipelines.lib.common.files import write_private_atomic

    write_private_atomic(settings.demo_client_file, json.dumps({**issued.as_dict(), "token_url":
                         "http://127.0.0.1:8000/v1/auth/token"}, indent=2) + "\n")
    return settings.demo_client_file


@click.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, type=int, show_default=True)
@click.option("--workers", default=1, type=int, show_default=True, help="uvicorn worker processes")
@click.option("--certfile", type=click.Path(exists=True, dir_okay=False), default=None, help="TLS certificate (PEM)")
@click.option("--keyfile", type=click.Path(exists=True, dir_okay=False), default=None, help="TLS private key (PEM)")
@click.option("--log-level", default="warning", show_default=True, help="uvicorn's own log level")
def serve(host: str, port: int, workers: int, certfile: str | None, keyfile: str | None, log_level: str) -> None:
    """Serve the four scenarios with the champion models (OpenAPI at /docs, web page at /ui)."""
    import uvicorn

    from medllm_pipelines.cli import ensure_services

    if bool(certfile) != bool(keyfile):
        raise click.UsageError("TLS needs both --certfile and --keyfile")
    settings = load_settings()
    prepare_home(settings)
    ensure_services(settings)
    # every worker writes its samples here and /metrics aggregates them; an operator's own folder is respected
    metrics_dir = Path(os.environ.get("PROMETHEUS_MULTIPROC_DIR") or settings.serving_dir / "prometheus")
    metrics_dir.mkdir(parents=True, exist_ok=True)
    if workers > 1:
        for stale in metrics_dir.glob("*.db"):
            stale.unlink()
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
    scheme = "https" if certfile else "http"
    click.echo(f"serving on {scheme}://{host}:{port}  (web page {scheme}://{host}:{port}/ui/, API docs /docs)")
    uvicorn.run("medllm_pipelines.cli_serve:app_factory", factory=True, host=host, port=port, workers=workers,
                ssl_certfile=certfile, ssl_keyfile=keyfile, log_level=log_level, access_log=False,
                timeout_graceful_shutdown=10)


def register(main: click.Group) -> None:
    main.add_command(serve)


