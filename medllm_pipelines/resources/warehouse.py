"""Warehouse resource: DuckDB file by default, PostgreSQL by URL."""

from __future__ import annotations

from dagster import ConfigurableResource
from pydantic import PrivateAttr

from medllm_pipelines.lib.common.warehouse import Warehouse


class WarehouseResource(ConfigurableResource):
    """Holds de-identified tables and audit tables (never identifiable data).

    ``url`` is ``duckdb:///<path>`` or ``postgresql+psycopg2://...``. In
    production it comes from ``EnvVar("MEDLLM_WAREHOUSE_URL")`` so a password
    in it never reaches metadata.
    """

    url: str

    _warehouse: Warehouse | None = PrivateAttr(default=None)

    def get(self) -> Warehouse:
        if self._warehouse is None:
            self._warehouse = Warehouse(self.url)
        return self._warehouse

    @property
    def backend(self) -> str:
        return "postgresql" if self.url.startswith("postgresql") else "duckdb"
