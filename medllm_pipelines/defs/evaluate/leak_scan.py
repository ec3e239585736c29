"""The run-wide leak scan: MLflow params/artifacts, asset metadata and logs against the raw zone's identifiers.

The asset runs after every other asset of the lifecycle (its upstreams are
the graph's sinks, computed in definitions.py) so that it sees what the run
wrote. The identifiers are decrypted from the raw zone in memory only; the
result names locations, kinds and counts, never a value. The check is
blocking: a hit fails the run.
"""

from collections.abc import Iterator, Sequence
from pathlib import Path

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetKey,
    MaterializeResult,
    asset,
)

from medllm_pipelines.defs import keys
from medllm_pipelines.defs.keys import raw_table_name
from medllm_pipelines.defs.metadata import run_id_of, versions_metadata
from medllm_pipelines.resources.artifacts import ArtifactStoreResource
from medllm_pipelines.resources.mlflow import MLflowResource
from medllm_pipelines.resources.raw_zone import RawZoneResource
from medllm_pipelines.resources.warehouse import WarehouseResource

MAX_RUNS_SCANNED = 200  # the event log of the most recent runs; older runs were scanned by earlier runs


def _dagster_event_items(context: AssetExecutionContext) -> Iterator[tuple[str, str, str]]:
    """Every event of the recent runs (this one so far included): messages, asset and check metadata."""
    from dagster import serialize_value

    instance = context.instance
    for run in instance.get_runs(limit=MAX_RUNS_SCANNED):
        yield "dagster_run_tags", f"dagster:{run.run_id}/tags", serialize_value(dict(run.tags))
        for entry in instance.all_logs(run.run_id):
            kind = "dagster_event" if entry.is_dagster_event else "dagster_log_message"
            step = entry.step_key or "run"
            yield kind, f"dagster:{run.run_id}/{step}", serialize_value(entry)


def _scanned_folders(context: AssetExecutionContext, artifacts: ArtifactStoreResource, mlflow: MLflowResource) -> dict[Path, str]:
    """Folder -> label: the artifact store, MLflow's local artifact root and Dagster's home."""
    from medllm_pipelines.lib.security.output_scan import local_folder

    folders = {Path(getattr(artifacts, f"{kind}_dir")).resolve(): f"artifacts/{kind}" for kind in ("deidentified", "models", "reports")}
    if artifacts.governance_dir:
        folders[Path(artifacts.governance_dir).resolve()] = "governance"
    if (mlflow_root := local_folder(mlflow.artifact_root)) is not None:
        folders[mlflow_root.resolve()] = "mlflow_artifact_root"
    if context.instance.root_directory:
        folders[Path(context.instance.root_directory).resolve()] = "dagster_home"
    return folders


def build_privacy_leak_scan(upstream: Sequence[AssetKey]):
    """The scan asset, downstream of ``upstream`` (the other assets' sinks)."""

    @asset(
        key=keys.PRIVACY_LEAK_SCAN,
        deps=sorted(upstream, key=lambda k: k.to_user_string()),
        group_name=keys.EVALUATE,
        kinds={"python", "mlflow"},
        check_specs=[
            AssetCheckSpec(
                keys.CHECK_NO_IDENTIFIER_IN_OUTPUTS,
                asset=keys.PRIVACY_LEAK_SCAN,
                blocking=True,
                description="No raw-zone identifier in MLflow, Dagster metadata/logs, the warehouse or artifact files.",
            )
        ],
        description=(
            "Scans MLflow (run names, params, tags, artifacts, logged models), Dagster asset metadata, check "
            "results and log messages of recent runs, every warehouse table and the artifact store's files for "
            "the raw zone's direct identifiers (decrypted in memory only)."
        ),
    )
    def privacy_leak_scan(
        context: AssetExecutionContext,
        raw_zone: RawZoneResource,
        warehouse: WarehouseResource,
        mlflow: MLflowResource,
        artifacts: ArtifactStoreResource,
    ) -> MaterializeResult:
        from medllm_pipelines.lib.security.leak_scan import identifier_needles
        from medllm_pipelines.lib.security.output_scan import (
            IdentifierMatcher,
            files_under,
            mlflow_items,
            scan_run_outputs,
            warehouse_items,
        )

        matcher = IdentifierMatcher(identifier_needles(raw_zone.get().read_partitions(raw_table_name(keys.RAW_PATIENTS))))
        folders = _scanned_folders(context, artifacts, mlflow)
        scan = scan_run_outputs(matcher, [
            mlflow_items(mlflow.tracking_uri, experiment_prefix=mlflow.experiment_prefix),
            _dagster_event_items(context),
            warehouse_items(warehouse.get()),
            files_under(folders, folders),
        ])
        if scan.hits:
            context.log.error(f"leak scan: {len(scan.hits)} location(s) hold a raw-zone identifier (values masked)")
        summary = scan.as_metadata()
        return MaterializeResult(
            metadata={**summary, "dagster_run_id": run_id_of(context), **versions_metadata()},
            check_results=[
                AssetCheckResult(
                    check_name=keys.CHECK_NO_IDENTIFIER_IN_OUTPUTS,
                    passed=scan.passed,
                    severity=AssetCheckSeverity.ERROR,
                    description=scan.verdict,
                    metadata=summary,
                )
            ],
        )

    return privacy_leak_scan


ASSETS: list = []  # built in definitions.py, where the graph's sinks are known
CHECKS: list = []
