"""``python -m medllm_pipelines.cli_dbt {parse|docs}``: the dbt manifest and docs for the configured warehouse.

Make's ``dbt-parse`` and ``dbt-docs`` call it; it is light (no Dagster import),
so the manifest can be written before the Definitions can load.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from medllm_pipelines.lib.curate.dbt_project import (
    DUCKDB_PATH_ENV,
    DUCKDB_TARGET,
    dbt_connection,
    generate_docs,
    parse_project,
)
from medllm_pipelines.settings import load_settings


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args not in (["parse"], ["docs"]):
        print("usage: python -m medllm_pipelines.cli_dbt {parse|docs}", file=sys.stderr)
        return 2
    settings = load_settings()
    connection = dbt_connection(settings.warehouse_url)
    if args == ["parse"]:
        print(f"dbt manifest ({connection.target}): {parse_project(connection)}")
        return 0
    if connection.target == DUCKDB_TARGET and not Path(connection.env[DUCKDB_PATH_ENV]).exists():
        print(
            f"no warehouse at {connection.env[DUCKDB_PATH_ENV]}: run the lifecycle first (`make run` or `make demo`)",
            file=sys.stderr,
        )
        return 1
    print(f"dbt docs ({connection.target}): {generate_docs(connection)}  (serve: dbt docs serve --project-dir dbt)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
