"""Disclosure risk: k-anonymity gates on released tables and differentially private released statistics.

Clause 5.4.1.3 (row S3). Person-level tables are recoded to k-anonymity on the
quasi-identifiers the de-identification policy declares, and a blocking check
re-reads each one from the warehouse. Aggregates meant for publication go out
only with differential-privacy noise, charged to the dataset's privacy ledger
before any noise is drawn; a release that would overspend fails and publishes
nothing.
"""


import datetime as dt
import json
import re
from typing import Any

import numpy as np
import pandas as pd
from dagster import (
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetCheckSeverity,
    AssetExecutionContext,
    AssetKey,
    Failure,
    MaterializeResult,
    MetadataValue,
    asset,
    asset_check,
)

from medllm_pipelines.defs import keys
from medllm_pipelines.defs.keys import warehouse_location
from medllm_pipelines.defs.metadata import frame_metadata, run_id_of, versions_metadata
from medllm_pipelines.lib.deidentify.dp import (
    PrivacyBudgetExceeded,
    PrivacyLedger,
    PrivateStatistics,
)
from medllm_pipelines.lib.deidentify.policy import load_policy
from medllm_pipelines.lib.deidentify.risk import k_anonymity, l_diversity, recode_to_k
from medllm_pipelines.resources.artifacts import ArtifactStoreResource
from medllm_pipelines.resources.warehouse import WarehouseResource
from medllm_pipelines.settings import Settings, load_settings

# Released tables and the policy table each one is produced from.
POLICY_TABLE_OF = {
    keys.DEID_PATIENTS: "patients",
    keys.DEID_OBSERVATIONS: "observations",
    keys.DEID_CONDITIONS: "conditions",
    keys.DEID_IMAGES: "dicom_instances",
}

# --- released statistics: what is published, with bounds declared from domain knowledge ------
SEXES = ("female", "male", "other", "unknown")
AGE_GROUP_YEARS = 20  # every band of the policy (5, 10 or 20 years) nests in one of these
AGE_GROUPS = ("0-19", "20-39", "40-59", "60-79", "80+", "not released")
# Clinically plausible ranges (canonical units of the harmonised observations); values outside are clipped.
CLIPPED_MEANS = {"hba1c": (4.0, 15.0, "%"), "fasting_glucose": (3.0, 25.0, "mmol/L")}
DIABETES_CATEGORIES = ("E10", "E11", "E13", "E14")  # ICD-10 diabetes mellitus
MAX_INSTITUTIONS_PER_PERSON = 2  # a person's registrations beyond this are not counted
EXCLUDED_CONSENT = ("refused", "withdrawn")
# Bump when the published queries, bounds or categories change: a new spec is a new release.
RELEASE_SPEC_VERSION = "2"  # 2: per-institution means as one grouped query per concept, centred sums
LATEST_RELEASE_FILE = "latest.json"


def disclosure_settings() -> Settings:
    """Read when an asset runs (never at import): k, l and the privacy budget come from the environment."""
    return load_settings()


# --- k-anonymity ---------------------------------------------------------------------
def protect_released_table(policy_table: str, frame: pd.DataFrame, k: int | None = None,
                           l: int | None = None) -> tuple[pd.DataFrame, dict[str, Any], int]:
    """Recode ``frame`` to k-anonymity on its declared quasi-identifiers (k and l: the settings' unless given).

    Returns the frame to write, metadata (counts only, never a class's
    values) and the number of rows dropped as the last resort.
    """
    rule = load_policy().disclosure.get(policy_table)
    if rule is None:
        return frame, {"k_anonymity": "no quasi-identifiers declared"}, 0
    settings = disclosure_settings()
    k = settings.k_anonymity_k if k is None else k
    l = settings.l_diversity_l if l is None else l
    result = recode_to_k(frame, rule.quasi_identifiers, k, rule.steps)
    meta: dict[str, Any] = {f"k_anonymity/{name}": value for name, value in result.as_metadata().items()}
    meta["k_anonymity/class_sizes"] = MetadataValue.json(_class_size_distribution(result.frame, rule.quasi_identifiers))
    if rule.sensitive:
        diversity = l_diversity(result.frame, rule.quasi_identifiers, rule.sensitive, l=l)
        meta.update({f"l_diversity/{name}": value for name, value in diversity.as_metadata().items()})
    return result.frame, meta, result.rows_suppressed


def _class_size_distribution(frame: pd.DataFrame, quasi_identifiers: tuple[str, ...]) -> dict[str, int]:
    """{class size: number of classes}: how the rows are spread, without naming any class."""
    if frame.empty:
        return {}
    sizes = frame.groupby(list(quasi_identifiers), dropna=False, observed=True).size().value_counts().sort_index()
    return {str(size): int(n) for size, n in sizes.items()}


def k_anonymity_gate(asset_key: AssetKey, policy_table: str):
    """Blocking check: the table as stored in the warehouse is k-anonymous on its declared quasi-identifiers."""
    rule = load_policy().disclosure[policy_table]

    @asset_check(
        asset=asset_key,
        name=keys.CHECK_K_ANONYMITY,
        blocking=True,
        description=(
            f"Every combination of ({', '.join(rule.quasi_identifiers)}) holds at least k rows "
            "(k = MEDLLM_K_ANONYMITY_K, default 5)."
        ),
    )
    def _k_gate(context: AssetCheckExecutionContext, warehouse: WarehouseResource) -> AssetCheckResult:
        settings = disclosure_settings()
        schema, table = warehouse_location(asset_key)
        frame = warehouse.get().read_table(schema, table)
        report = k_anonymity(frame, rule.quasi_identifiers, k=settings.k_anonymity_k)
        meta: dict[str, Any] = {
            **report.as_metadata(),
            "class_sizes": MetadataValue.json(_class_size_distribution(frame, rule.quasi_identifiers)),
            "deidentification_policy_version": load_policy().version,
        }
        if rule.sensitive:
            meta.update(l_diversity(frame, rule.quasi_identifiers, rule.sensitive, l=settings.l_diversity_l).as_metadata())
        return AssetCheckResult(
            passed=report.satisfied,
            severity=AssetCheckSeverity.ERROR,
            description=(
                f"k={report.smallest_class} >= {report.k_required} over {report.classes} classes"
                if report.satisfied
                else f"{len(report.classes_below_k)} classes ({report.rows_below_k} rows) below k={report.k_required}"
            ),
            metadata=meta,
        )

    return _k_gate


# --- differentially private released statistics --------------------------------------
def _age_group(band: Any) -> str:
    match = re.match(r"^(\d+)", band) if isinstance(band, str) else None
    if not match:
        return "not released"
    low = (int(match.group(1)) // AGE_GROUP_YEARS) * AGE_GROUP_YEARS
    return AGE_GROUPS[-2] if low >= 80 else f"{low}-{low + AGE_GROUP_YEARS - 1}"


def _ledger(settings: Settings, artifacts: ArtifactStoreResource) -> PrivacyLedger:
    folder = artifacts.folder("governance", "privacy_ledger")
    return PrivacyLedger(
        folder / f"{settings.dp_dataset.replace('/', '__')}.json",
        dataset=settings.dp_dataset,
        epsilon_budget=settings.dp_epsilon_budget,
    )


def _rows(release, statistic: str, groups: dict[str, Any], unit: str = "") -> list[dict[str, Any]]:
    return [
        {
            "query": release.query,
            "statistic": statistic,
            "group_value": str(group),
            "value": float(value),
            "unit": unit,
            "mechanism": release.mechanism,
            "epsilon": release.epsilon,
            "delta": release.delta,
            "sensitivity": release.sensitivity,
            "noise_scale": release.noise_scale,
            "ledger_seq": release.ledger_seq,
        }
        for group, value in groups.items()
    ]


def _release_fingerprint(settings: Settings, institutions: list[str], *frames: pd.DataFrame) -> str:
    """SHA-256 of what a release depends on: the input rows (order-free), the query spec and the epsilon."""
    import hashlib

    digest = hashlib.sha256(f"{RELEASE_SPEC_VERSION}|{settings.dp_dataset}|{settings.dp_epsilon_per_release!r}|"
                            f"{','.join(institutions)}".encode())
    for frame in frames:
        ordered = frame.reindex(sorted(frame.columns), axis=1)
        row_hashes = np.sort(pd.util.hash_pandas_object(ordered, index=False).to_numpy())
        digest.update(f"|{len(frame)}|{','.join(ordered.columns)}|".encode())
        digest.update(row_hashes.tobytes())
    return digest.hexdigest()


def _publish(wh, frame: pd.DataFrame, settings: Settings, ledger: PrivacyLedger, **release: Any) -> dict[str, Any]:
    """Write the published table; the metadata of a new and of a re-published release alike."""
    schema, table = warehouse_location(keys.RELEASED_STATISTICS)
    wh.write_table(schema, table, frame)
    entries = ledger.entries()
    return {
        **frame_metadata(frame),
        "warehouse_table": f"{schema}.{table}",
        "dp_dataset": settings.dp_dataset,
        **release,
        "epsilon_remaining": ledger.remaining()[0],
        "epsilon_budget": settings.dp_epsilon_budget,
        "ledger_entries": len(entries),
        "ledger_hash": entries[-1].hash if entries else "",
        **versions_metadata(),
    }


def _previous_release(reports_dir, fingerprint: str) -> dict[str, Any] | None:
    latest = reports_dir / LATEST_RELEASE_FILE
    if not latest.exists():
        return None
    previous = json.loads(latest.read_text())
    return previous if previous.get("input_fingerprint") == fingerprint else None


@asset(
    key=keys.RELEASED_STATISTICS,
    deps=[keys.DEID_PATIENTS, keys.DEID_OBSERVATIONS, keys.DEID_CONDITIONS, keys.CONSENT_REGISTRY],
    group_name=keys.DEIDENTIFY,
    kinds={"python", "duckdb"},
)
def released_statistics(
    context: AssetExecutionContext, warehouse: WarehouseResource, artifacts: ArtifactStoreResource
) -> MaterializeResult:
    """Aggregates for publication with Laplace noise (epsilon-DP), charged to the cohort's privacy ledger.

    Persons per institution, per age group x sex, mean HbA1c and fasting
    glucose per institution (clipped to plausible ranges) and the prevalence of
    each diabetes category; persons who refused or withdrew consent are left out.
    A release that the remaining budget cannot pay for fails before anything
    is charged or written.
    """
    from medllm_pipelines.defs.ingest.sources import load_sources

    settings = disclosure_settings()
    ledger = _ledger(settings, artifacts)
    institutions = list(load_sources(settings.sources_file).codes)
    # per-institution means: one grouped query per concept (parallel composition), not one per institution
    queries = 2 + len(CLIPPED_MEANS) + len(DIABETES_CATEGORIES)
    release_epsilon = settings.dp_epsilon_per_release
    remaining_before, _ = ledger.remaining()

    wh = warehouse.get()
    patients = wh.read_table(*warehouse_location(keys.DEID_PATIENTS))
    consent = wh.read_table(*warehouse_location(keys.CONSENT_REGISTRY))
    excluded = set(consent.loc[consent["consent_status"].isin(EXCLUDED_CONSENT), "patient_pseudonym"])
    patients = patients[~patients["patient_pseudonym"].isin(excluded)]
    observations = wh.read_table(*warehouse_location(keys.DEID_OBSERVATIONS))
    conditions = wh.read_table(*warehouse_location(keys.DEID_CONDITIONS))
    fingerprint = _release_fingerprint(settings, institutions, patients, observations, conditions)
    reports_dir = artifacts.folder("reports", "released_statistics")
    previous = _previous_release(reports_dir, fingerprint)
    if previous is not None:
        # The same inputs were released before: publish that release again. Re-publishing a DP output is
        # post-processing and costs no budget; drawing fresh noise would spend it and let averaging undo it.
        frame = pd.DataFrame(previous["statistics"]).assign(
            dataset=settings.dp_dataset, release_id=previous["release_id"], released_at=previous["released_at"])
        return MaterializeResult(metadata=_publish(
            wh, frame, settings, ledger, release_reused=True, reused_release_id=previous["release_id"],
            input_fingerprint=fingerprint, epsilon_spent_this_run=0.0))
    if release_epsilon > remaining_before + 1e-9:
        raise Failure(
            description=(
                f"privacy budget of dataset {settings.dp_dataset!r} would be overspent: this release needs "
                f"epsilon={release_epsilon:g}, only {remaining_before:.6g} of {settings.dp_epsilon_budget:g} is left. "
                "Nothing was released."
            ),
            metadata={"epsilon_remaining": remaining_before, "epsilon_budget": settings.dp_epsilon_budget,
                      "epsilon_needed": release_epsilon, "ledger_entries": len(ledger.entries())},
        )
    epsilon = release_epsilon / queries

    stats = PrivateStatistics(ledger, actor=f"dagster:{run_id_of(context)}")
    rows: list[dict[str, Any]] = []
    try:
        registrations = (patients.sort_values(["patient_pseudonym", "institution"])
                         .drop_duplicates(["patient_pseudonym", "institution"])
                         .groupby("patient_pseudonym").head(MAX_INSTITUTIONS_PER_PERSON))
        release = stats.histogram(registrations["institution"], categories=institutions, epsilon=epsilon,
                                  query="persons_by_institution", contributions=MAX_INSTITUTIONS_PER_PERSON)
        rows += _rows(release, "count", release.value)

        persons = patients.sort_values(["patient_pseudonym", "institution"]).drop_duplicates("patient_pseudonym")
        cells = [f"{_age_group(band)}|{sex if sex in SEXES else 'unknown'}"
                 for band, sex in zip(persons["age_band"], persons["sex"], strict=True)]
        categories = [f"{group}|{sex}" for group in AGE_GROUPS for sex in SEXES]
        release = stats.histogram(cells, categories=categories, epsilon=epsilon, query="persons_by_age_group_sex")
        rows += _rows(release, "count", release.value)

        kept = observations[observations["patient_pseudonym"].isin(set(patients["patient_pseudonym"]))]
        registered = set(zip(registrations["institution"], registrations["patient_pseudonym"], strict=True))
        for concept, (lower, upper, unit) in CLIPPED_MEANS.items():
            per_person = (kept[kept["concept"] == concept].groupby(["institution", "patient_pseudonym"])["value"]
                          .median().dropna())
            # one value per person and institution, at most MAX_INSTITUTIONS_PER_PERSON institutions per person
            per_person = per_person[[key in registered for key in per_person.index]]
            by_institution = {
                institution: per_person.xs(institution, level="institution").to_numpy(dtype=float)
                if institution in per_person.index.get_level_values(0) else np.array([])
                for institution in institutions
            }
            release = stats.grouped_mean(by_institution, lower=lower, upper=upper, epsilon=epsilon,
                                         query=f"mean_{concept}_by_institution",
                                         contributions=MAX_INSTITUTIONS_PER_PERSON)
            rows += _rows(release, f"mean_{concept}", release.value, unit)

        everyone = set(persons["patient_pseudonym"])
        for category in DIABETES_CATEGORIES:
            with_code = set(conditions.loc[conditions["icd10_category"] == category, "patient_pseudonym"]) & everyone
            indicator = [1.0 if p in with_code else 0.0 for p in sorted(everyone)]
            release = stats.mean(indicator, lower=0.0, upper=1.0, epsilon=epsilon, query=f"prevalence[{category}]")
            rows += _rows(release, "prevalence", {category: release.value})
    except PrivacyBudgetExceeded as exc:  # another release spent the budget meanwhile
        raise Failure(description=f"privacy budget exhausted during the release, nothing published: {exc}") from exc

    released_at = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    frame = pd.DataFrame(rows).assign(dataset=settings.dp_dataset, release_id=run_id_of(context), released_at=released_at)
    report = reports_dir / f"{run_id_of(context)}.json"
    published = {"dataset": settings.dp_dataset, "release_id": run_id_of(context), "released_at": released_at,
                 "input_fingerprint": fingerprint, "statistics": rows}
    report.write_text(json.dumps(published, indent=1, ensure_ascii=False))
    (reports_dir / LATEST_RELEASE_FILE).write_text(json.dumps(published, indent=1, ensure_ascii=False))
    return MaterializeResult(metadata=_publish(
        wh, frame, settings, ledger, report_json=MetadataValue.path(str(report)), dp_mechanism="laplace",
        release_reused=False, input_fingerprint=fingerprint, queries=queries, epsilon_per_query=epsilon,
        epsilon_spent_this_run=remaining_before - ledger.remaining()[0],
        persons_left_out="consent refused or withdrawn"))


ASSETS: list = [released_statistics]
CHECKS: list = [
    k_anonymity_gate(asset_key, table)
    for asset_key, table in POLICY_TABLE_OF.items()
    if table in load_policy().disclosure
]
