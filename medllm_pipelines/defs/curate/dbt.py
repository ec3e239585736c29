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

import shutil
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dagster import AssetDep, AssetExecutionContext, AssetKey, Output
from dagster_dbt import DagsterDbtTranslator, DbtProject, dbt_assets

from medllm_pipelines.defs import keys
from medllm_pipelines.defs.metadata import run_id_of, versions_metadata
from medllm_pipelines.lib.common.records import frame_content_hash
from medllm_pipelines.lib.common.versions import package_versions
from medllm_pipelines.lib.curate import dbt_project as project
from medllm_pipelines.resources.dbt import MedllmDbtCliResource
from medllm_pipelines.resources.warehouse import WarehouseResource

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


def _project_file(manifest_path: str | None) -> str | None:
    """A manifest path (``models/x.sql`` or ``medllm://models/x.yml``) as a path from the repository root."""
    if not manifest_path:
        return None
    relative = manifest_path.split("://", 1)[-1]
    return f"{project.DBT_PROJECT_DIR.name}/{relative}"


class MedllmDbtTranslator(DagsterDbtTranslator):
    """Models -> ``curate/<model>`` in group curate; sources -> the assets that write them.

    A source declared with ``meta.medllm.written_by`` (audit.quarantine, which
    every ingest and quality asset appends to) has no single owner: models
    reading it depend on each writer instead of on a key of its own.

    Descriptions are the YAML's words and where the model lives, not its raw
    SQL (dagster-dbt's default appends it, which buries the meaning in the UI).
    Column schemas come from dagster-dbt's own ``get_metadata``: every model
    column in the YAML, with its ``description`` and ``data_type``, becomes
    ``dagster/column_schema`` (the YAML lists every column, tested).
    """

    def get_description(self, dbt_resource_props: Mapping[str, Any]) -> str:
        kind, name = dbt_resource_props["resource_type"], dbt_resource_props["name"]
        text = (dbt_resource_props.get("description") or "").strip() or f"dbt {kind} {name}"
        defined = _project_file(dbt_resource_props.get("original_file_path"))
        described = _project_file(dbt_resource_props.get("patch_path"))
        where = [f"defined in `{defined}`"] if defined else []
        if described and described != defined:
            where.append(f"described in `{described}`")
        return f"{text}\n\ndbt {kind} `{name}`: {', '.join(where)}" if where else text

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
