"""Reads and writes the de-identification assets share: the person index, raw partitions, released tables.

Wiring only (which raw-zone table or warehouse table an asset key lives in);
what is done with the frames is in ``lib.deidentify``.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
from dagster import AssetKey

from medllm_pipelines.defs import keys
from medllm_pipelines.defs.keys import raw_table_name, warehouse_location
from medllm_pipelines.defs.metadata import frame_metadata
from medllm_pipelines.lib.deidentify.persons import PersonIndex
from medllm_pipelines.lib.security.raw_zone import RawZone
from medllm_pipelines.resources.warehouse import WarehouseResource

# Identifiable: which (pseudonym, institution) registrations were withheld and by which rule. Kept in the
# encrypted raw zone (a list of rare persons), read by every person-keyed de-identified table of the run.
WITHHELD_REGISTRATIONS_TABLE = "deidentify_withheld_registrations"


def read_person_index(zone: RawZone) -> PersonIndex:
    """The person-to-pseudonym index of this run's ``deidentify/pseudonym_map``."""
    return PersonIndex.from_map(zone.read_table(raw_table_name(keys.PSEUDONYM_MAP)))


def read_withheld_registrations(zone: RawZone) -> pd.DataFrame:
    """Registrations the released patients table withholds (written by deidentify/patients in this run)."""
    return zone.read_table(WITHHELD_REGISTRATIONS_TABLE)


def read_raw_partitions(zone: RawZone, asset_key: AssetKey, columns: list[str]) -> pd.DataFrame:
    """Every partition of a partitioned ingest asset; an empty frame of ``columns`` when none was written."""
    try:
        return zone.read_partitions(raw_table_name(asset_key))
    except FileNotFoundError:
        return pd.DataFrame(columns=columns)


def write_deidentified(warehouse: WarehouseResource, asset_key: AssetKey, frame: pd.DataFrame) -> dict[str, Any]:
    """Write a released table to the warehouse; its row count, hash, schema and location as metadata."""
    schema, table = warehouse_location(asset_key)
    warehouse.get().write_table(schema, table, frame)
    return {**frame_metadata(frame, table=f"{schema}.{table}"), "warehouse_table": f"{schema}.{table}", "warehouse_backend": warehouse.backend}
