"""Metadata per institution partition, also when one run materialises several partitions.

With ``BackfillPolicy.single_run()`` one step materialises a range of
partitions and Dagster records one materialisation event per partition. The
metadata of a ``MaterializeResult`` goes on every one of them (each partition
would show the whole run's figures); ``context.add_asset_metadata(...,
partition_key=...)`` scopes metadata to one partition's event, so each
partition shows its own row count and reconciliation. Called directly
(``build_asset_context``, as the benchmarks do) there is one partition and no
step to hold partition-scoped metadata: it goes on the result itself.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from dagster import AssetExecutionContext, AssetKey, DagsterError, MaterializeResult


def invoked_directly(context: AssetExecutionContext) -> bool:
    """Whether the asset runs outside a Dagster run (a directly built context has no run)."""
    try:
        context.run  # noqa: B018 - the property raises for a directly built context
    except DagsterError:
        return True
    return False


def partition_results(
    context: AssetExecutionContext,
    by_partition: Mapping[AssetKey, Mapping[str, Mapping[str, Any]]],
    shared: Mapping[str, Any],
) -> Iterator[MaterializeResult]:
    """One result per asset key: ``shared`` on every partition's event, ``by_partition[key][p]`` on p's only."""
    direct = invoked_directly(context)
    for asset_key, partitions in by_partition.items():
        if direct:
            merged = {name: value for metadata in partitions.values() for name, value in metadata.items()}
            yield MaterializeResult(asset_key=asset_key, metadata={**shared, **merged})
            continue
        for partition, metadata in partitions.items():
            context.add_asset_metadata(dict(metadata), asset_key=asset_key, partition_key=partition)
        yield MaterializeResult(asset_key=asset_key, metadata=dict(shared))
