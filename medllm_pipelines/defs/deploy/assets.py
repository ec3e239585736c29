"""Deploy stage: clinicians' feedback on the service's results becomes a table and a retraining trigger (A4, P4).

The REST service stores each ``POST /v1/feedback`` as an encrypted document; this asset reads the latest versions,
writes the de-identified table ``deploy.clinical_feedback`` (no comment text, no features, no result id) and judges
per model version whether the feedback recommends retraining (``lib/scenarios/feedback_policy.yaml``). The check
warns; the sensor ``retrain_on_feedback`` launches ``retrain_job`` on that evidence.
"""

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    MaterializeResult,
    MetadataValue,
    asset,
)

from medllm_pipelines.defs import keys
from medllm_pipelines.defs.keys import warehouse_location
from medllm_pipelines.defs.metadata import frame_metadata, versions_metadata
from medllm_pipelines.lib.scenarios.feedback_table import (
    FEEDBACK_KIND,
    FeedbackSummary,
    load_feedback_policy,
    signal_label,
    summarise_feedback,
)
from medllm_pipelines.resources.serving_store import ServingStoreResource
from medllm_pipelines.resources.warehouse import WarehouseResource


def _retraining_trigger(summary: FeedbackSummary) -> AssetCheckResult:
    due = summary.recommended
    return AssetCheckResult(
        check_name=keys.CHECK_RETRAINING_TRIGGER,
        passed=not due,
        severity=AssetCheckSeverity.WARN,
        description=("no model version's feedback recommends retraining" if not due else
                     "retraining recommended for " + "; ".join(f"{signal_label(s)}: {', '.join(s['reasons'])}"
                                                               for s in due)),
        metadata={
            "retraining_recommended": MetadataValue.json({signal_label(s): s["reasons"] for s in due}),
            "feedback_policy_version": summary.policy.version,
        },
    )


@asset(
    key=keys.CLINICAL_FEEDBACK,
    group_name=keys.DEPLOY,
    kinds={"python", "table"},
    description=(
        "Clinicians' feedback on the service's results (POST /v1/feedback), one row per feedback: scenario, model "
        "version, agreement, true outcome, prediction; comments are counted, never copied (free text may hold PHI). "
        "Metadata: per model version, the counts and rates that recommend retraining under the versioned feedback "
        "policy. No service store yet means no feedback: an empty table."
    ),
    check_specs=[
        AssetCheckSpec(
            keys.CHECK_RETRAINING_TRIGGER,
            asset=keys.CLINICAL_FEEDBACK,
            blocking=True,  # as every check here; it fails with WARN severity, which blocks nothing downstream
            description="No model version's feedback recommends retraining (disagreement or outcome error above "
            "the feedback policy's thresholds); warns naming the versions that do.",
        )
    ],
)
def clinical_feedback(
    context: AssetExecutionContext, serving_store: ServingStoreResource, warehouse: WarehouseResource
) -> MaterializeResult:
    store_found = serving_store.exists()
    documents = serving_store.get().latest_documents(FEEDBACK_KIND) if store_found else []
    summary = summarise_feedback(documents, load_feedback_policy())
    schema, table = warehouse_location(keys.CLINICAL_FEEDBACK)
    warehouse.get().write_table(schema, table, summary.frame)
    context.log.info(f"{len(summary.frame)} feedback documents; retraining recommended for "
                     f"{len(summary.recommended)} model version(s)")
    figures = {name: MetadataValue.json(value) if isinstance(value, (dict, list)) else value
               for name, value in summary.as_metadata().items()}
    return MaterializeResult(
        metadata={
            **frame_metadata(summary.frame, table=f"{schema}.{table}"),
            **figures,
            "service_store_found": store_found,
            **versions_metadata(),
        },
        check_results=[_retraining_trigger(summary)],
    )


ASSETS = [clinical_feedback]
