"""dagster-dbt's CLI resource, connected to the warehouse through environment variables only."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

from dagster_dbt import DbtCliResource
from pydantic import Field

from medllm_pipelines.lib.curate import dbt_project as project


@contextmanager
def scoped_environ(values: Mapping[str, str]) -> Iterator[None]:
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
        with scoped_environ(connection.env):
            return super().cli(args, **kwargs)
