"""What the dbt assets tell a reader in the Dagster UI: the model's meaning and every column's, not raw SQL.

The YAML (dbt/models/**/_*.yml, shared words in dbt/models/_column_docs.md)
must describe every column a model produces, with its type; the translator
must turn that into the asset's description and ``dagster/column_schema``.
A build on the small warehouse of test_dbt_project checks that the YAML lists
exactly the columns (and types) the models produce, so a column added to a
model or a var entry added in dbt_project.yml cannot go undescribed.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pytest

from medllm_pipelines.lib.common.warehouse import Warehouse
from medllm_pipelines.lib.curate import dbt_project
from medllm_pipelines_tests.dbt.test_dbt_project import write_sources
from medllm_pipelines_tests.lib.common.test_data_dictionary import VALUE_SHAPES

# YAML data_type -> the type DuckDB reports for the built relation.
DUCKDB_TYPES = {
    "varchar": "VARCHAR",
    "integer": "INTEGER",
    "bigint": "BIGINT",
    "double precision": "DOUBLE",
    "boolean": "BOOLEAN",
    "timestamp": "TIMESTAMP",
}


@pytest.fixture(scope="module")
def manifest() -> dict[str, Any]:
    path = dbt_project.ensure_manifest(dbt_project.dbt_connection("duckdb:///unused.duckdb"))
    return json.loads(Path(path).read_text())


def models(manifest: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {n["name"]: n for n in manifest["nodes"].values() if n["resource_type"] == "model"}


def test_every_model_column_in_the_manifest_is_described_and_typed(manifest: dict[str, Any]) -> None:
    undescribed = [
        f"{name}.{column}"
        for name, node in models(manifest).items()
        for column, props in node["columns"].items()
        if not (props.get("description") or "").strip() or props.get("data_type") not in DUCKDB_TYPES
    ]
    assert not undescribed, f"columns without a description or a known data_type: {undescribed}"
    assert all((node.get("description") or "").strip() for node in models(manifest).values())


def test_no_dbt_description_carries_a_value_from_the_data(manifest: dict[str, Any]) -> None:
    texts = {name: node.get("description") or "" for name, node in models(manifest).items()}
    texts |= {f"{name}.{c}": p.get("description") or "" for name, node in models(manifest).items()
              for c, p in node["columns"].items()}
    texts |= {f"source {s['name']}.{c}": p.get("description") or "" for s in manifest["sources"].values()
              for c, p in s["columns"].items()}
    for where, text in texts.items():
        for shape, pattern in VALUE_SHAPES.items():
            assert not pattern.search(text), f"{where}: looks like a {shape}"


def test_dbt_asset_specs_carry_the_column_schema_and_the_yaml_description(manifest: dict[str, Any]) -> None:
    from dagster import TableSchema

    from medllm_pipelines.defs.curate import dbt as curate_dbt

    by_name = models(manifest)
    specs = {spec.key.path[-1]: spec for spec in curate_dbt.curate_dbt_models.specs}
    assert set(specs) == set(by_name)
    for name, spec in specs.items():
        node = by_name[name]
        description = spec.description or ""
        assert "Raw SQL" not in description and not re.search(r"\bselect\b|\{\{", description), name
        assert description.startswith(" ".join(node["description"].split())[:40]), name
        assert f"`dbt/{node['original_file_path']}`" in description, name
        schema = spec.metadata["dagster/column_schema"]
        assert isinstance(schema, TableSchema)
        assert [c.name for c in schema.columns] == list(node["columns"]), name
        for column in schema.columns:
            assert column.description == node["columns"][column.name]["description"], f"{name}.{column.name}"
            assert column.type == node["columns"][column.name]["data_type"], f"{name}.{column.name}"


def test_the_yaml_lists_every_column_a_build_produces(tmp_path: Path, manifest: dict[str, Any]) -> None:
    url = f"duckdb:///{tmp_path / 'warehouse.duckdb'}"
    warehouse = Warehouse(url)
    write_sources(warehouse)
    warehouse.dispose()
    dbt_project.run_dbt(["run"], dbt_project.dbt_connection(url), target_path=tmp_path / "target",
                        environ={**os.environ, "DBT_LOG_PATH": str(tmp_path)})
    warehouse = Warehouse(url)
    try:
        for name, node in models(manifest).items():
            built = warehouse.query(
                "SELECT column_name, data_type FROM information_schema.columns "
                "WHERE table_schema = 'curate' AND table_name = :name ORDER BY ordinal_position",
                {"name": name},
            )
            declared = [(c, DUCKDB_TYPES[p["data_type"]]) for c, p in node["columns"].items()]
            assert list(built.itertuples(index=False, name=None)) == declared, name
    finally:
        warehouse.dispose()
