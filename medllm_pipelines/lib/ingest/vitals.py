"""Bedside vital signs (FHIR R4 Bulk NDJSON under ``<institution>/vitals/``) -> one raw row per stay-hour.

Monitors send hourly vital-sign Observations (category ``vital-signs``) that
name their inpatient Encounter, and the ward records an ICU admission as a
Procedure of the same Encounter. Each line is validated as the main FHIR feed
validates it (:func:`~medllm_pipelines.lib.ingest.fhir.default_validator`,
``fhir.resources.R4B``); an invalid line or one that names no patient or no
encounter is quarantined with its position, never with its values.

The readings of one stay are laid out by ``hours_since_admission``: the
rounded hours between the reading and the Encounter's start (its
``period.start``; when a site sends the start as a date only, the stay's
first reading). The rows stay identifiable (patient and encounter keys,
instants): they go to the encrypted raw zone, and only the de-identification
stage's policy (table ``vital_signs``) lets columns out.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
import pandas as pd

from medllm_pipelines.lib.common import codes
from medllm_pipelines.lib.common.records import FileOutcomes, QuarantineRecord, Reconciliation
from medllm_pipelines.lib.ingest.fhir import default_validator, describe_validation_error
from medllm_pipelines.lib.ingest.fhir_framing import iter_lines

STAGE = "ingest"
VITAL_LOINC: dict[str, str] = {
    "8867-4": "heart_rate",
    "9279-1": "respiratory_rate",
    "59408-5": "spo2",
    "2708-6": "spo2",
    "8310-5": "temperature",
    "8480-6": "systolic_bp",
    "67775-7": "acvpu",
}
NUMERIC_VITALS = ("heart_rate", "respiratory_rate", "spo2", "temperature", "systolic_bp")
ACVPU = ("A", "C", "V", "P", "U")
ICU_ADMISSION_CODES = {(codes.SNOMED_CT, "305351004")}
OUT_OF_SCOPE = "out_of_scope_vital_code"
STAY_COLUMNS = ["institution", "patient_key", "encounter_key", "stay_number", "admission", "hours_since_admission",
                *NUMERIC_VITALS, "acvpu", "icu_admission_hour"]


@dataclass
class VitalsFeed:
    """Reading and event rows parsed from the vitals objects, with what was set aside (counts only)."""

    asset: str = "ingest/vital_signs"
    readings: list[dict[str, Any]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    quarantine: list[QuarantineRecord] = field(default_factory=list)
    removed: dict[str, int] = field(default_factory=dict)
    records_in: int = 0
    outcomes: FileOutcomes = field(init=False)

    def __post_init__(self) -> None:
        self.outcomes = FileOutcomes(self.asset)

    def reconciliation(self) -> Reconciliation:
        return Reconciliation(self.records_in, len(self.readings) + len(self.events), len(self.quarantine),
                              dict(self.removed)).check()

    def as_metadata(self, hours: pd.DataFrame) -> dict[str, Any]:
        """Lines in, out, quarantined and set aside (reconciled), and the stays they became."""
        stays = hours.drop_duplicates(["institution", "encounter_key"])
        return {
            **self.reconciliation().as_metadata(),
            "dagster/row_count": len(hours),
            "stay_hours": len(hours),
            "stays": len(stays),
            "stays_with_icu_admission": int(stays["icu_admission_hour"].notna().sum()),
        }


def _key(reference: dict[str, Any] | None) -> str | None:
    ref = (reference or {}).get("reference")
    return str(ref).rstrip("/").rsplit("/", 1)[-1].removeprefix("urn:uuid:") if ref else None


def _row(resource: dict[str, Any]) -> tuple[str, dict[str, Any]] | str:
    """("reading" | "event", row), or the reason code the line is set aside for."""
    patient, encounter = _key(resource.get("subject")), _key(resource.get("encounter"))
    if not patient or not encounter:
        return "missing_required_field"
    if resource.get("resourceType") == "Procedure":
        coding = ((resource.get("code") or {}).get("coding") or [{}])[0]
        if (coding.get("system"), coding.get("code")) not in ICU_ADMISSION_CODES:
            return OUT_OF_SCOPE
        return "event", {"patient_key": patient, "encounter_key": encounter,
                         "performed": resource.get("performedDateTime")}
    vital = _vital_of(resource.get("code"))
    if vital is None:  # a blood-pressure panel (85354-9) carries its systolic reading as a component
        vital, resource = _panel_reading(resource)
    if vital is None:
        return OUT_OF_SCOPE
    if vital == "acvpu":
        level = (((resource.get("valueCodeableConcept") or {}).get("coding") or [{}])[0]).get("code")
        value: Any = level if level in ACVPU else None
    else:
        value = (resource.get("valueQuantity") or {}).get("value")
    if value is None or not resource.get("effectiveDateTime"):
        return "missing_required_field"
    return "reading", {"patient_key": patient, "encounter_key": encounter, "vital": vital, "value": value,
                       "effective": resource["effectiveDateTime"]}


def _vital_of(concept: dict[str, Any] | None) -> str | None:
    """The vital a CodeableConcept's first coding names (LOINC only), or None."""
    coding = ((concept or {}).get("coding") or [{}])[0]
    return VITAL_LOINC.get(coding.get("code")) if coding.get("system") == codes.LOINC else None


def _panel_reading(resource: dict[str, Any]) -> tuple[str | None, dict[str, Any]]:
    """The first component that is a numeric vital of the score (a panel's systolic pressure), as if it were the
    observation: its code and value, the panel's subject, encounter and time."""
    for component in resource.get("component") or []:
        vital = _vital_of(component.get("code"))
        if vital in NUMERIC_VITALS and (component.get("valueQuantity") or {}).get("value") is not None:
            return vital, {**resource, "valueQuantity": component["valueQuantity"]}
    return None, resource


def parse_vitals_object(feed: VitalsFeed, chunks: Iterable[bytes], *, institution: str | None,
                        source_object: str) -> None:
    """Add one stored vitals NDJSON object's lines to ``feed`` (validated, each line accounted for)."""
    validator = default_validator()
    before = (len(feed.readings) + len(feed.events), len(feed.quarantine), sum(feed.removed.values()))
    lines = 0
    for position, line in enumerate(_lines(chunks)):
        lines += 1
        reason, detail = None, ""
        try:
            resource = orjson.loads(line)
            error = validator.validate(resource)
            if error is not None:
                raise error
            outcome = _row(resource)
        except Exception as exc:  # noqa: BLE001 - one bad line never stops the file
            reason = "invalid_resource" if not isinstance(exc, orjson.JSONDecodeError) else "malformed_json"
            detail = describe_validation_error(exc, resource) if reason == "invalid_resource" else "not JSON"
            outcome = reason
        if isinstance(outcome, str):
            if outcome == OUT_OF_SCOPE:
                feed.removed[OUT_OF_SCOPE] = feed.removed.get(OUT_OF_SCOPE, 0) + 1
            else:
                feed.quarantine.append(QuarantineRecord(STAGE, feed.asset, institution, source_object, position,
                                                        None, outcome, detail or outcome))
            continue
        kind, row = outcome
        row["institution"] = institution
        (feed.events if kind == "event" else feed.readings).append(row)
    feed.records_in += lines
    after = (len(feed.readings) + len(feed.events), len(feed.quarantine), sum(feed.removed.values()))
    feed.outcomes.add(source_object, institution, records_in=lines, records_out=after[0] - before[0],
                      quarantine=feed.quarantine[before[1]:],
                      removed_by_rule={OUT_OF_SCOPE: after[2] - before[2]})


def _lines(chunks: Iterable[bytes]) -> Iterator[bytes]:
    for _, _, line in iter_lines(iter(chunks)):
        if line.strip():
            yield line


def _instants(values: pd.Series) -> pd.Series:
    """ISO 8601 instants (with offset or Z) as UTC; a date-only value becomes NaT."""
    text = values.astype("string")
    timed = text.str.contains("T", na=False)
    out = pd.Series(pd.NaT, index=values.index, dtype="datetime64[ns, UTC]")
    if timed.any():
        out[timed] = pd.to_datetime(text[timed], utc=True, format="ISO8601")
    return out


def stay_hours(feed: VitalsFeed, encounters: pd.DataFrame | None) -> pd.DataFrame:
    """One row per (stay, hour since admission): the vitals of that hour (the latest reading of each), and
    the stay's ICU admission hour when one was recorded. ``encounters`` is the raw encounters table."""
    if not feed.readings or encounters is None:
        return pd.DataFrame(columns=STAY_COLUMNS)
    readings = pd.DataFrame(feed.readings)
    readings["at"] = _instants(readings["effective"])
    readings = readings.dropna(subset=["at"])
    starts = encounters[["institution", "resource_key", "start"]].rename(columns={"resource_key": "encounter_key"})
    starts = starts.drop_duplicates(["institution", "encounter_key"], keep="last")
    starts["admission"] = _instants(starts["start"])
    readings = readings.merge(starts[["institution", "encounter_key", "admission"]], how="left",
                              on=["institution", "encounter_key"])
    first = readings.groupby(["institution", "encounter_key"])["at"].transform("min")
    readings["admission"] = readings["admission"].fillna(first)  # unknown or date-only admission time
    readings["hours_since_admission"] = np.round(
        (readings["at"] - readings["admission"]).dt.total_seconds() / 3600.0).astype(int)
    readings = readings[readings["hours_since_admission"] >= 0].sort_values("at")
    keys = ["institution", "patient_key", "encounter_key", "admission", "hours_since_admission"]
    wide = readings.pivot_table(index=keys, columns="vital", values="value", aggfunc="last").reset_index()
    for vital in (*NUMERIC_VITALS, "acvpu"):
        if vital not in wide.columns:
            wide[vital] = np.nan
    wide[list(NUMERIC_VITALS)] = wide[list(NUMERIC_VITALS)].astype(float)
    wide["icu_admission_hour"] = np.nan
    if feed.events:
        events = pd.DataFrame(feed.events)
        events["at"] = _instants(events["performed"])
        events = events.dropna(subset=["at"]).merge(
            wide.drop_duplicates(["institution", "encounter_key"])[["institution", "encounter_key", "admission"]],
            on=["institution", "encounter_key"])
        events["hour"] = np.round((events["at"] - events["admission"]).dt.total_seconds() / 3600.0)
        first_event = events.groupby(["institution", "encounter_key"])["hour"].min()
        index = pd.MultiIndex.from_frame(wide[["institution", "encounter_key"]])
        wide["icu_admission_hour"] = first_event.reindex(index).to_numpy()
    # the stay's ordinal among the patient's monitored stays, by admission: a key that carries no date
    firsts = wide.drop_duplicates(["institution", "encounter_key"]).sort_values("admission")
    firsts["stay_number"] = firsts.groupby(["institution", "patient_key"]).cumcount() + 1
    wide = wide.merge(firsts[["institution", "encounter_key", "stay_number"]], on=["institution", "encounter_key"])
    wide["admission"] = wide["admission"].astype(str)
    return wide[STAY_COLUMNS].sort_values(["institution", "encounter_key", "hours_since_admission"]).reset_index(
        drop=True)
