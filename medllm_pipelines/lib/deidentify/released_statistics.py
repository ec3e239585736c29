"""Differentially private released statistics: the queries of ``released_statistics.yaml``, charged to a ledger.

Clause 5.4.1.3 (row S3). Aggregates meant for publication go out only with
Laplace noise, charged to the dataset's privacy ledger before any noise is
drawn; a release the remaining budget cannot pay for raises
:class:`ReleaseRefused` and publishes nothing. The same inputs released again
are published again from the earlier report (post-processing, no cost):
drawing fresh noise would spend budget and let averaging undo the noise.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from medllm_pipelines.lib.common.files import write_private_atomic
from medllm_pipelines.lib.deidentify.dp import DPRelease, PrivacyBudgetExceeded, PrivacyLedger, PrivateStatistics

SPEC_PATH = Path(__file__).with_name("released_statistics.yaml")
LATEST_RELEASE_FILE = "latest.json"
NOT_RELEASED = "not released"
MECHANISM = "laplace"
LEFT_OUT = "consent refused or withdrawn"


@dataclass(frozen=True)
class ClippedMean:
    """A per-institution mean of one concept, values clipped to a clinically plausible range."""

    concept: str
    lower: float
    upper: float
    unit: str


@dataclass(frozen=True)
class ReleaseSpec:
    """What is published, with which bounds and categories (``released_statistics.yaml``)."""

    version: str
    excluded_consent: tuple[str, ...]
    max_institutions_per_person: int
    age_group_years: int
    age_groups: tuple[str, ...]
    sexes: tuple[str, ...]
    clipped_means: tuple[ClippedMean, ...]
    prevalence_categories: tuple[str, ...]

    @property
    def queries(self) -> int:
        """Ledger charges per release: two histograms, one grouped mean per concept, one mean per category."""
        return 2 + len(self.clipped_means) + len(self.prevalence_categories)

    def age_group(self, band: Any) -> str:
        """The released group of a policy age band ("45-49" -> "40-59", "90+" -> "80+"), else "not released"."""
        match = re.match(r"^(\d+)", band) if isinstance(band, str) else None
        if not match:
            return NOT_RELEASED
        low = (int(match.group(1)) // self.age_group_years) * self.age_group_years
        top = self.age_groups[-2]
        return top if low >= int(top.rstrip("+")) else f"{low}-{low + self.age_group_years - 1}"


def _spec(raw: dict[str, Any]) -> ReleaseSpec:
    queries = raw["queries"]
    ages = queries["persons_by_age_group_sex"]
    spec = ReleaseSpec(
        version=str(raw["version"]),
        excluded_consent=tuple(str(s) for s in raw["excluded_consent"]),
        max_institutions_per_person=int(raw["max_institutions_per_person"]),
        age_group_years=int(ages["age_group_years"]),
        age_groups=tuple(str(g) for g in ages["age_groups"]),
        sexes=tuple(str(s) for s in ages["sexes"]),
        clipped_means=tuple(ClippedMean(str(concept), float(b["lower"]), float(b["upper"]), str(b["unit"]))
                            for concept, b in queries["mean_by_institution"].items()),
        prevalence_categories=tuple(str(c) for c in queries["prevalence"]),
    )
    top = spec.age_groups[-2] if len(spec.age_groups) >= 2 else ""
    if spec.age_groups[-1:] != (NOT_RELEASED,) or not re.fullmatch(r"\d+\+", top):
        raise ValueError(f'released statistics: age_groups end with an open group ("80+") and "{NOT_RELEASED}"')
    produced = {spec.age_group(f"{age}-{age}") for age in range(int(top.rstrip("+")) + 1)}
    if produced - set(spec.age_groups):
        raise ValueError(f"released statistics: bands fall in undeclared age groups {sorted(produced - set(spec.age_groups))}")
    if "unknown" not in spec.sexes or spec.max_institutions_per_person < 1:
        raise ValueError("released statistics: sexes must include 'unknown'; max_institutions_per_person >= 1")
    for mean in spec.clipped_means:
        if not mean.lower < mean.upper:
            raise ValueError(f"released statistics: {mean.concept}: lower must be below upper")
    return spec


@lru_cache(maxsize=4)
def load_release_spec(path: Path = SPEC_PATH) -> ReleaseSpec:
    """The released-statistics spec, checked (bounds ordered, every age band in a declared group)."""
    return _spec(yaml.safe_load(Path(path).read_text(encoding="utf-8")))


@dataclass(frozen=True)
class ReleaseInputs:
    """The de-identified tables a release reads (consent applied by :func:`release_statistics`)."""

    patients: pd.DataFrame
    consent_registry: pd.DataFrame
    observations: pd.DataFrame
    conditions: pd.DataFrame


@dataclass(frozen=True)
class LedgerState:
    """The ledger after a release: what is left of the budget and the hash chain's head."""

    epsilon_remaining: float
    epsilon_budget: float
    ledger_entries: int
    ledger_hash: str

    @classmethod
    def of(cls, ledger: PrivacyLedger) -> LedgerState:
        entries = ledger.entries()
        return cls(ledger.remaining()[0], ledger.epsilon_budget, len(entries), entries[-1].hash if entries else "")


@dataclass(frozen=True)
class StatisticsRelease:
    """One publication: the rows to write, and whether they are a new release or an earlier one again."""

    frame: pd.DataFrame
    dataset: str
    release_id: str
    released_at: str
    input_fingerprint: str
    spec_version: str
    reused: bool
    ledger: LedgerState
    epsilon_spent: float = 0.0
    queries: int = 0
    epsilon_per_query: float = 0.0
    report_path: Path | None = None

    def as_metadata(self) -> dict[str, Any]:
        meta: dict[str, Any] = {"dp_dataset": self.dataset, "release_reused": self.reused,
                                "input_fingerprint": self.input_fingerprint}
        if self.reused:
            meta["reused_release_id"] = self.release_id
        else:
            meta.update(dp_mechanism=MECHANISM, queries=self.queries, epsilon_per_query=self.epsilon_per_query,
                        persons_left_out=LEFT_OUT)
        return {**meta, "epsilon_spent_this_run": self.epsilon_spent,
                "epsilon_remaining": self.ledger.epsilon_remaining, "epsilon_budget": self.ledger.epsilon_budget,
                "ledger_entries": self.ledger.ledger_entries, "ledger_hash": self.ledger.ledger_hash}


class ReleaseRefused(Exception):
    """The budget cannot pay for the release: nothing was charged for it, nothing published."""

    def __init__(self, description: str, metadata: dict[str, Any] | None = None) -> None:
        super().__init__(description)
        self.description = description
        self.metadata = metadata or {}


def release_fingerprint(spec_version: str, dataset: str, epsilon: float, institutions: list[str],
                        *frames: pd.DataFrame) -> str:
    """SHA-256 of what a release depends on: the input rows (order-free), the spec version and the epsilon."""
    digest = hashlib.sha256(f"{spec_version}|{dataset}|{epsilon!r}|{','.join(institutions)}".encode())
    for frame in frames:
        ordered = frame.reindex(sorted(frame.columns), axis=1)
        row_hashes = np.sort(pd.util.hash_pandas_object(ordered, index=False).to_numpy())
        digest.update(f"|{len(frame)}|{','.join(ordered.columns)}|".encode())
        digest.update(row_hashes.tobytes())
    return digest.hexdigest()


def _rows(release: DPRelease, statistic: str, groups: dict[Any, Any], unit: str = "") -> list[dict[str, Any]]:
    return [
        {"query": release.query, "statistic": statistic, "group_value": str(group), "value": float(value),
         "unit": unit, "mechanism": release.mechanism, "epsilon": release.epsilon, "delta": release.delta,
         "sensitivity": release.sensitivity, "noise_scale": release.noise_scale, "ledger_seq": release.ledger_seq}
        for group, value in groups.items()
    ]


def private_statistics(stats: PrivateStatistics, spec: ReleaseSpec, patients: pd.DataFrame,
                       observations: pd.DataFrame, conditions: pd.DataFrame, institutions: list[str],
                       epsilon: float) -> list[dict[str, Any]]:
    """Every query of ``spec`` at ``epsilon`` each, one row per released value (consent already applied)."""
    cap = spec.max_institutions_per_person
    registrations = (patients.sort_values(["patient_pseudonym", "institution"])
                     .drop_duplicates(["patient_pseudonym", "institution"])
                     .groupby("patient_pseudonym").head(cap))
    release = stats.histogram(registrations["institution"], categories=institutions, epsilon=epsilon,
                              query="persons_by_institution", contributions=cap)
    rows = _rows(release, "count", release.value)

    persons = patients.sort_values(["patient_pseudonym", "institution"]).drop_duplicates("patient_pseudonym")
    cells = [f"{spec.age_group(band)}|{sex if sex in spec.sexes else 'unknown'}"
             for band, sex in zip(persons["age_band"], persons["sex"], strict=True)]
    categories = [f"{group}|{sex}" for group in spec.age_groups for sex in spec.sexes]
    release = stats.histogram(cells, categories=categories, epsilon=epsilon, query="persons_by_age_group_sex")
    rows += _rows(release, "count", release.value)

    kept = observations[observations["patient_pseudonym"].isin(set(patients["patient_pseudonym"]))]
    registered = set(zip(registrations["institution"], registrations["patient_pseudonym"], strict=True))
    for mean in spec.clipped_means:
        per_person = (kept[kept["concept"] == mean.concept].groupby(["institution", "patient_pseudonym"])["value"]
                      .median().dropna())
        # one value per person and institution, at most `cap` institutions per person
        per_person = per_person[[key in registered for key in per_person.index]]
        by_institution = {
            institution: per_person.xs(institution, level="institution").to_numpy(dtype=float)
            if institution in per_person.index.get_level_values(0) else np.array([])
            for institution in institutions
        }
        release = stats.grouped_mean(by_institution, lower=mean.lower, upper=mean.upper, epsilon=epsilon,
                                     query=f"mean_{mean.concept}_by_institution", contributions=cap)
        rows += _rows(release, f"mean_{mean.concept}", release.value, mean.unit)

    everyone = set(persons["patient_pseudonym"])
    for category in spec.prevalence_categories:
        with_code = set(conditions.loc[conditions["icd10_category"] == category, "patient_pseudonym"]) & everyone
        indicator = [1.0 if p in with_code else 0.0 for p in sorted(everyone)]
        release = stats.mean(indicator, lower=0.0, upper=1.0, epsilon=epsilon, query=f"prevalence[{category}]")
        rows += _rows(release, "prevalence", {category: release.value})
    return rows


def previous_release(reports_dir: Path, fingerprint: str) -> dict[str, Any] | None:
    """The latest published release when it was made from the same inputs, else None."""
    latest = reports_dir / LATEST_RELEASE_FILE
    if not latest.exists():
        return None
    previous = json.loads(latest.read_text())
    return previous if previous.get("input_fingerprint") == fingerprint else None


def _save_report(reports_dir: Path, published: dict[str, Any]) -> Path:
    """The release's report, and the same as ``latest.json`` (what a rerun on the same inputs publishes again)."""
    text = json.dumps(published, indent=1, ensure_ascii=False)
    report = reports_dir / f"{published['release_id']}.json"
    write_private_atomic(report, text.encode("utf-8"))
    write_private_atomic(reports_dir / LATEST_RELEASE_FILE, text.encode("utf-8"))
    return report


def release_statistics(spec: ReleaseSpec, ledger: PrivacyLedger, inputs: ReleaseInputs, *, institutions: list[str],
                       epsilon: float, release_id: str, reports_dir: Path, actor: str = "pipeline",
                       rng: np.random.Generator | None = None) -> StatisticsRelease:
    """Publish ``spec``'s statistics for ``inputs`` at ``epsilon`` in all, or the earlier release of the same inputs.

    Raises :class:`ReleaseRefused` when the budget cannot pay (before any
    charge), or when another release spent it meanwhile.
    """
    dataset = ledger.dataset
    consent = inputs.consent_registry
    excluded = set(consent.loc[consent["consent_status"].isin(spec.excluded_consent), "patient_pseudonym"])
    patients = inputs.patients[~inputs.patients["patient_pseudonym"].isin(excluded)]
    fingerprint = release_fingerprint(spec.version, dataset, epsilon, institutions, patients, inputs.observations,
                                      inputs.conditions)
    previous = previous_release(reports_dir, fingerprint)
    if previous is not None:
        frame = pd.DataFrame(previous["statistics"]).assign(
            dataset=dataset, release_id=previous["release_id"], released_at=previous["released_at"])
        return StatisticsRelease(frame, dataset, previous["release_id"], previous["released_at"], fingerprint,
                                 spec.version, reused=True, ledger=LedgerState.of(ledger))
    remaining_before = ledger.remaining()[0]
    if epsilon > remaining_before + 1e-9:
        raise ReleaseRefused(
            f"privacy budget of dataset {dataset!r} would be overspent: this release needs epsilon={epsilon:g}, "
            f"only {remaining_before:.6g} of {ledger.epsilon_budget:g} is left. Nothing was released.",
            {"epsilon_remaining": remaining_before, "epsilon_budget": ledger.epsilon_budget,
             "epsilon_needed": epsilon, "ledger_entries": len(ledger.entries())},
        )
    per_query = epsilon / spec.queries
    try:
        rows = private_statistics(PrivateStatistics(ledger, rng=rng, actor=actor), spec, patients,
                                  inputs.observations, inputs.conditions, institutions, per_query)
    except PrivacyBudgetExceeded as exc:  # another release spent the budget meanwhile
        raise ReleaseRefused(f"privacy budget exhausted during the release, nothing published: {exc}") from exc
    released_at = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    report = _save_report(reports_dir, {"dataset": dataset, "release_id": release_id, "released_at": released_at,
                                        "input_fingerprint": fingerprint, "statistics": rows})
    ledger_after = LedgerState.of(ledger)
    frame = pd.DataFrame(rows).assign(dataset=dataset, release_id=release_id, released_at=released_at)
    return StatisticsRelease(frame, dataset, release_id, released_at, fingerprint, spec.version, reused=False,
                             ledger=ledger_after, epsilon_spent=remaining_before - ledger_after.epsilon_remaining,
                             queries=spec.queries, epsilon_per_query=per_query, report_path=report)
