"""The dbt project as Dagster assets in the curate group, in the lifecycle's lineage graph.

Every dbt model is an asset ``curate/<model>`` (the relation ``curate.<model>``
in the warehouse); every dbt source maps to the Python asset that writes its
table (``meta.dagster.asset_key`` in ``dbt/models/staging/_sources.yml``), so
the graph reads ``deidentify/patients -> curate/stg_deidentify__patients ->
... -> curate/patient_features``. dbt tests are asset checks, blocking when
their severity is ``error`` (all of ours).

The asset graph comes from ``dbt/target/manifest.json``: importing this module
without it fails with a message that says how to create it (``make dbt-parse``).
Under ``dagster dev`` the manifest is refreshed on load.
"""

import os
import shutil
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from dagster import AssetDep, AssetExecutionContext, AssetKey, EnvVar, Output
from dagster_dbt import DagsterDbtTranslator, DbtCliResource, DbtProject, dbt_assets
from pydantic import Field

from medllm_pipelines.defs import keys
from medllm_pipelines.defs.metadata import run_id_of, versions_metadata
from medllm_pipelines.lib.common.records import frame_content_hash
from medllm_pipelines.lib.common.versions import package_versions
from medllm_pipelines.lib.curate import dbt_project as project
from medllm_pipelines.resources.warehouse import WarehouseResource
from medllm_pipelines.settings import Settings

DBT_ASSETS_NAME = "curate_dbt_models"

DBT_PROJECT = DbtProject(
    project_dir=project.DBT_PROJECT_DIR,
    profiles_dir=project.DBT_PROFILES_DIR,
    target_path=project.DBT_TARGET_PATH,
)
DBT_PROJECT.prepare_if_dev()  # `dagster dev` only: re-parse so model edits show up on reload
MANIFEST_PATH = project.require_manifest(DBT_PROJECT.manifest_path)
if project.manifest_is_stale(MANIFEST_PATH):
    warnings.warn(
        f"{MANIFEST_PATH} is older than the dbt project: the asset graph may not match dbt/. Run `make dbt-parse`.",
        stacklevel=1,
    )


def _written_by(source_props: Mapping[str, Any]) -> list[AssetKey]:
    meta = (source_props.get("config") or {}).get("meta") or source_props.get("meta") or {}
    return [AssetKey(list(path)) for path in (meta.get("medllm") or {}).get("written_by", [])]


class MedllmDbtTranslator(DagsterDbtTranslator):
    """Models -> ``curate/<model>`` in group curate; sources -> the assets that write them.

    A source declared with ``meta.medllm.written_by`` (audit.quarantine, which
    every ingest and quality asset appends to) has no single owner: models
    reading it depend on each writer instead of on a key of its own.
    """

    def get_asset_key(self, dbt_resource_props: Mapping[str, Any]) -> AssetKey:
        if dbt_resource_props["resource_type"] == "source":
            return super().get_asset_key(dbt_resource_props)
        return AssetKey([keys.CURATE, dbt_resource_props["name"]])

    def get_group_name(self, dbt_resource_props: Mapping[str, Any]) -> str:
        return keys.CURATE

    def get_asset_spec(self, manifest: Mapping[str, Any], unique_id: str, project: Any):
        spec = super().get_asset_spec(manifest, unique_id, project)
        props = self.get_resource_props(manifest, unique_id)
        if props["resource_type"] == "source":
            return spec
        replaced: dict[AssetKey, list[AssetKey]] = {}
        for parent_id in props.get("depends_on", {}).get("nodes", []):
            source = manifest.get("sources", {}).get(parent_id)
            if source is not None and _written_by(source):
                replaced[self.get_asset_key(source)] = _written_by(source)
        if not replaced:
            return spec
        deps = [dep for dep in spec.deps if dep.asset_key not in replaced]
        present = {dep.asset_key for dep in deps}
        for writers in replaced.values():
            for writer in writers:
                if writer not in present:
                    deps.append(AssetDep(writer))
                    present.add(writer)
        return spec.replace_attributes(deps=deps)


TRANSLATOR = MedllmDbtTranslator()
_DBT_VERSIONS = package_versions(["dbt-core", "dbt-duckdb", "dbt-postgres"])


@contextmanager
def _scoped_environ(values: Mapping[str, str]) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in project.CONNECTION_ENV_KEYS}
    for key in project.CONNECTION_ENV_KEYS:
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


class MedllmDbtCliResource(DbtCliResource):
    """dagster-dbt's CLI resource, connected to our warehouse through environment variables only.

    dbt's profiles.yml reads the connection from the environment; ``cli``
    sets those variables (derived from ``warehouse_url``) only while it starts
    the dbt process, so no file ever holds the path or the password.
    """

    warehouse_url: str = Field(
        description="duckdb:///<path> or postgresql+psycopg2://... (the warehouse resource's URL)"
    )

    def cli(self, args, **kwargs):  # type: ignore[override]
        connection = project.dbt_connection(self.warehouse_url)
        with _scoped_environ(connection.env):
            return super().cli(args, **kwargs)


def dbt_resource(settings: Settings, environ: Mapping[str, str] | None = None) -> MedllmDbtCliResource:
    """The dbt resource for ``settings``: target ``duckdb`` or ``postgres`` from the warehouse URL.

    A URL that came from ``MEDLLM_WAREHOUSE_URL`` is bound as ``EnvVar`` so a
    password in it is resolved at run time and never shown in the UI.
    """
    env = os.environ if environ is None else environ
    from_env = env.get("MEDLLM_WAREHOUSE_URL") == settings.warehouse_url
    return MedllmDbtCliResource(
        project_dir=os.fspath(project.DBT_PROJECT_DIR),
        profiles_dir=os.fspath(project.DBT_PROFILES_DIR),
        target=project.dbt_connection(settings.warehouse_url).target,
        dbt_executable=project.dbt_executable(),
        warehouse_url=EnvVar("MEDLLM_WAREHOUSE_URL") if from_env else settings.warehouse_url,
    )


def build_dbt_resources(settings: Settings, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Resources the dbt assets need beyond ``build_resources``: ``{"dbt": ...}``."""
    return {"dbt": dbt_resource(settings, environ)}


def _metadata_value(value: Any) -> Any:
    return getattr(value, "value", value)


def _mart_metadata(warehouse: WarehouseResource, node: Mapping[str, Any]) -> dict[str, Any]:
    """Row count and content hash of a mart table, read after dbt has exited (DuckDB has one writer)."""
    schema, table = node["schema"], node.get("alias") or node["name"]
    frame = warehouse.get().read_table(schema, table)
    return {
        "dagster/row_count": len(frame),
        "content_sha256": frame_content_hash(frame),
        "warehouse_table": f"{schema}.{table}",
        "warehouse_backend": warehouse.backend,
    }


@dbt_assets(
    manifest=MANIFEST_PATH,
    project=DBT_PROJECT,
    dagster_dbt_translator=TRANSLATOR,
    name=DBT_ASSETS_NAME,
)
def curate_dbt_models(context: AssetExecutionContext, dbt: MedllmDbtCliResource, warehouse: WarehouseResource):
    """``dbt build``: staging views, intermediate views, mart tables, and every dbt test as an asset check.

    Events are collected until dbt exits, then mart tables get their row count
    and content hash: while dbt runs it holds the DuckDB file's single write lock.
    Each run writes its dbt artifacts to its own folder under dbt/target/runs/,
    removed when the build succeeds and kept (path in the log) when it fails.
    """
    target_path = project.run_target_path(Path(dbt.project_dir), run_id_of(context))
    invocation = dbt.cli(["build"], context=context, target_path=target_path)
    events: list[Any] = []
    failure: Exception | None = None
    try:
        events.extend(invocation.stream())  # extend keeps the events yielded before a failure
    except Exception as exc:  # noqa: BLE001  -- a failing model or test: report what did run, then fail
        failure = exc
    nodes = invocation.manifest.get("nodes", {})
    common = {
        **versions_metadata(dbt_core=_DBT_VERSIONS["dbt-core"], dbt_adapter=_DBT_VERSIONS[f"dbt-{dbt.target}"]),
        "dbt_target": dbt.target or "",
    }
    for event in events:
        if isinstance(event, Output):
            node = nodes.get(str(_metadata_value(event.metadata.get("unique_id"))), {})
            extra = dict(common)
            if node.get("config", {}).get("materialized") == "table":
                extra.update(_mart_metadata(warehouse, node))
            yield event.with_metadata({**event.metadata, **extra})
        else:
            yield event
    if failure is not None:
        context.log.error(f"dbt build failed; its artifacts and log are in {target_path}")
        raise failure
    shutil.rmtree(target_path, ignore_errors=True)


ASSETS = [curate_dbt_models]
