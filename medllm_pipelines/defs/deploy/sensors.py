"""Retraining on clinicians' feedback (rows A4, P4): the sensor that turns the feedback asset's signals into runs."""

from dagster import (
    DagsterRunStatus,
    DefaultSensorStatus,
    RunRequest,
    RunsFilter,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    sensor,
)

from medllm_pipelines.defs import keys
from medllm_pipelines.defs.jobs import retrain_job
from medllm_pipelines.lib.scenarios.feedback_table import SIGNALS_METADATA_KEY, evidence_key, signal_label

# a retrain run in one of these states is still to finish: the next one waits for its models
UNFINISHED = [DagsterRunStatus.QUEUED, DagsterRunStatus.NOT_STARTED, DagsterRunStatus.STARTING,
              DagsterRunStatus.STARTED, DagsterRunStatus.CANCELING]


def _due_signals(record) -> list[dict]:
    entry = record.asset_materialization.metadata.get(SIGNALS_METADATA_KEY)
    signals = entry.value if entry is not None else []
    return [s for s in signals if isinstance(s, dict) and s.get("retraining_recommended")]


@sensor(
    name=keys.RETRAIN_ON_FEEDBACK_SENSOR,
    job=retrain_job,
    minimum_interval_seconds=300,
    default_status=DefaultSensorStatus.STOPPED,
    description=(
        "Launches retrain_job when the latest deploy/clinical_feedback materialisation recommends retraining a "
        "model version. The run key names each model version and the feedback count it rests on, so the same "
        "evidence never launches twice; no run starts while another retrain_job run is unfinished."
    ),
)
def retrain_on_feedback(context: SensorEvaluationContext):
    latest = context.instance.fetch_materializations(keys.CLINICAL_FEEDBACK, limit=1).records
    if not latest:
        return SkipReason(f"{keys.asset_name(keys.CLINICAL_FEEDBACK)} has not been materialised yet")
    record = latest[0]  # its storage id orders materialisations; the cursor remembers the last one judged
    if context.cursor and int(context.cursor) >= record.storage_id:
        return SkipReason("no new feedback materialisation since the last tick")
    due = _due_signals(record)
    if not due:
        return SensorResult(skip_reason=SkipReason("the feedback recommends no retraining"),
                            cursor=str(record.storage_id))
    if context.instance.get_runs(filters=RunsFilter(job_name=keys.RETRAIN_JOB, statuses=UNFINISHED), limit=1):
        return SkipReason("a retrain_job run is unfinished; the evidence is judged again after it")  # cursor kept
    # one run retrains every model: one request for all the model versions due, keyed by all their evidence
    evidence = sorted(evidence_key(s) for s in due)
    request = RunRequest(
        run_key="retrain:" + "|".join(evidence),
        tags={
            "medllm/trigger": keys.RETRAIN_ON_FEEDBACK_SENSOR,
            "medllm/retrain_for": "; ".join(signal_label(s) for s in due),
            "medllm/retrain_reasons": ",".join(sorted({r for s in due for r in s["reasons"]})),
            "medllm/feedback_materialization": str(record.storage_id),
        },
    )
    return SensorResult(run_requests=[request], cursor=str(record.storage_id))


SENSORS = [retrain_on_feedback]
