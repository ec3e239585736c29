"""A FHIR R4 Bundle of one patient -> the harmonised per-person features the T2D risk model was trained on.

Nothing here is a second mapping: codes go through ``lib/common/codes.py`` (LOINC
variants and the sites' local lab dictionaries), units through the converters the
quality stage builds from ``cleaning_rules.yaml`` (ucumvert/pint and declared
equations), diagnoses through the quality stage's ICD-10 crosswalk, resources are
read by the ingest extractors (``fhir_mapping.EXTRACTORS``) after validation by the
ingest validator (``fhir_validation.ResourceValidator``: exactly what
``fhir.resources.R4B`` accepts, shape-cached so a repeated shape costs microseconds).
The per-person construction is ``lib/curate/features.build_features``' (median of the
harmonised values, BMI derived from weight and height only when no BMI was measured,
age as the midpoint of the de-identification age band taken at the latest
observation); a test checks both give the same row.

Only the resources read are validated (Patient, Observation, Condition); other
entries are counted in a warning and otherwise ignored. Values outside the quality
stage's plausibility ranges are refused (the evaluation's input filter,
``lib/evaluate/robustness.PlausibilityFilter``), as ``unit_confused`` when reading the
value in another unit of the same concept would make it plausible.
"""

from __future__ import annotations

import datetime as dt
import re
import statistics
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from medllm_pipelines.lib.common import codes
from medllm_pipelines.lib.curate.features import age_band_midpoint
from medllm_pipelines.lib.curate.spec import ModelSpec
from medllm_pipelines.lib.deidentify.policy import Policy, age_band, age_in_years
from medllm_pipelines.lib.evaluate.robustness import PlausibilityFilter
from medllm_pipelines.lib.ingest.fhir import describe_validation_error
from medllm_pipelines.lib.ingest.fhir_framing import Entry, MalformedEntry, bundle_entries, key_from_url
from medllm_pipelines.lib.ingest.fhir_mapping import EXTRACTORS
from medllm_pipelines.lib.ingest.fhir_r4 import normalise_r4_to_r4b
from medllm_pipelines.lib.ingest.fhir_validation import ResourceValidator
from medllm_pipelines.lib.quality.cleaning import CleaningRules, UnparseableDate, parse_fhir_datetime
from medllm_pipelines.lib.quality.code_validation import loinc_is_valid
from medllm_pipelines.lib.quality.crosswalk import MAPPED, Crosswalk, map_condition_code
from medllm_pipelines.lib.quality.units import UnitConversion
from medllm_pipelines.lib.scenarios.errors import ScenarioInputError

__all__ = [
    "ACCEPTED_BUNDLE_TYPES",
    "BundleReader",
    "FeatureExtraction",
    "concept_of_coding",
]

ACCEPTED_BUNDLE_TYPES = ("collection", "transaction", "batch", "searchset")
READ_TYPES = ("Patient", "Observation", "Condition")
# results a laboratory withdrew: never evidence
VOID_OBSERVATION_STATUSES = frozenset({"cancelled", "entered-in-error"})
VOID_CONDITION_VERIFICATION = frozenset({"refuted", "entered-in-error"})
AGGREGATIONS: dict[str, Callable[[Sequence[float]], float]] = {
    "median": statistics.median, "mean": statistics.fmean, "min": min, "max": max,
}
_RESOURCE_TYPE = re.compile(r"[A-Z][A-Za-z]{1,40}")  # echoed in a warning only when it looks like a type name
AGE_FEATURE = "age_years"
SEX_FEATURE = "sex"
# the canonical value precision of the cleaned observations table (cleaning.clean_observations)
VALUE_DECIMALS = 4


def concept_of_coding(system: Any, code: Any) -> str | None:
    """The feature concept a coding measures: LOINC directly, a site's local lab code through its LOINC.

    The same tables the quality stage reads (``codes.LOINC_VARIANTS``, ``codes.LOCAL_LAB_TO_LOINC``);
    a LOINC code failing its check digit is unknown, as cleaning quarantines it.
    """
    if not isinstance(code, str) or not isinstance(system, str):
        return None
    if system == codes.LOINC:
        loinc = code.strip() if loinc_is_valid(code) else None
    elif system.endswith(":lab-codes"):
        loinc = codes.LOCAL_LAB_TO_LOINC.get(code.strip())
    else:
        loinc = None
    return codes.LOINC_VARIANTS.get(loinc) if loinc else None


@dataclass(frozen=True)
class Measurement:
    """One harmonised value: canonical unit, with the entry it came from (for ``RiskAssessment.basis``)."""

    concept: str
    value: float
    entry: int
    reference: str | None
    conversion: str  # the converter's method: identity, pint, pint:chemistry, declared_equation, alias:...
    effective: dt.date | None


@dataclass
class FeatureExtraction:
    """What a bundle gave the model: one harmonised row, where it came from and what was set aside."""

    features: dict[str, Any]  # model input column -> harmonised value (None: not measured, the model imputes it)
    measurements: list[Measurement]
    conditions: list[str]  # WHO ICD-10 codes of the patient's (not refuted) Conditions
    warnings: list[dict[str, str]] = field(default_factory=list)
    patient_reference: str | None = None
    age_reference_date: str | None = None
    derived: list[str] = field(default_factory=list)  # features computed from others (BMI from weight/height)

    @property
    def basis(self) -> list[str]:
        """References of the Observations whose values entered the features, in entry order, once each."""
        return list(dict.fromkeys(m.reference for m in self.measurements if m.reference))

    @property
    def missing(self) -> list[str]:
        return [name for name, value in self.features.items() if value is None]

    def counts(self) -> dict[str, int]:
        return dict(Counter(m.concept for m in self.measurements))


def _warn(warnings: list[dict[str, str]], code: str, detail: str) -> None:
    warnings.append({"code": code, "detail": detail})


def _codings(concept: Any) -> list[dict[str, Any]]:
    if not isinstance(concept, Mapping):
        return []
    return [c for c in concept.get("coding") or [] if isinstance(c, Mapping)]


def _entry_reference(entry: Entry, resource: Mapping[str, Any]) -> str | None:
    """How another resource (or a RiskAssessment.basis) points at this entry: fullUrl, else Type/id."""
    if entry.full_url:
        return entry.full_url
    resource_id = resource.get("id")
    return f"{resource['resourceType']}/{resource_id}" if isinstance(resource_id, str) and resource_id else None


class BundleReader:
    """Built once per model (rules, converters, ranges, crosswalk, policy); ``read`` runs per request."""

    def __init__(self, spec: ModelSpec, feature_columns: Sequence[str], *, rules: CleaningRules,
                 plausibility: PlausibilityFilter, crosswalk: Crosswalk, policy: Policy,
                 validator: ResourceValidator | None = None) -> None:
        self.spec = spec
        self.columns = list(feature_columns)
        self.rules = rules
        self.ranges = dict(plausibility.ranges)
        self.crosswalk = crosswalk
        self.policy = policy
        self.validator = validator or ResourceValidator()
        if spec.aggregation not in AGGREGATIONS:
            raise ValueError(f"spec {spec.id}: aggregation {spec.aggregation!r} is not one of {sorted(AGGREGATIONS)}")
        self.aggregate = AGGREGATIONS[spec.aggregation]
        buildable = {AGE_FEATURE, SEX_FEATURE, *(c.name for c in codes.CONCEPTS)}
        unknown = [c for c in self.columns if c not in buildable]
        if unknown:
            raise ValueError(f"the model needs inputs no FHIR mapping builds: {unknown}")
        # concept -> {unit as written -> converter}, plus a case-folded index for spellings such as mg/dl
        self.units: dict[str, dict[str, UnitConversion]] = {}
        for (concept, unit), conversion in rules.conversions.items():
            self.units.setdefault(concept, {})[unit] = conversion
        self.folded: dict[str, dict[str, list[UnitConversion]]] = {}
        for concept, by_unit in self.units.items():
            for unit, conversion in by_unit.items():
                self.folded.setdefault(concept, {}).setdefault(unit.casefold(), []).append(conversion)
        self.timezone = rules.timezone_for(None)

    # ------------------------------------------------------------------ framing and validation
    def _entries(self, bundle: Any) -> tuple[list[Entry], dict[str, str]]:
        if not isinstance(bundle, Mapping) or bundle.get("resourceType") != "Bundle":
            raise ScenarioInputError("malformed_fhir", "the request body is not a FHIR Bundle (resourceType)")
        if bundle.get("type") not in ACCEPTED_BUNDLE_TYPES:
            raise ScenarioInputError("malformed_fhir", f"Bundle.type must be one of {', '.join(ACCEPTED_BUNDLE_TYPES)}")
        try:
            entries, context = bundle_entries(orjson.dumps(dict(bundle)))
        except (TypeError, orjson.JSONEncodeError):
            raise ScenarioInputError("malformed_fhir", "the Bundle holds values that are not JSON") from None
        return entries, context.refs

    def _validated(self, entry: Entry) -> dict[str, Any] | None:
        """The entry's resource if it is one we read (validated), None if it is another kind of entry."""
        path = f"Bundle.entry[{entry.position}]"
        if isinstance(entry.resource, MalformedEntry):
            raise ScenarioInputError("malformed_fhir", f"{path}: {entry.resource.reason}")
        resource = entry.resource
        if resource is None:
            return None
        if not isinstance(resource, dict) or not isinstance(resource.get("resourceType"), str):
            raise ScenarioInputError("malformed_fhir", f"{path}.resource is not a FHIR resource (resourceType)")
        if resource["resourceType"] not in READ_TYPES:
            return None
        checked, _ = normalise_r4_to_r4b(resource)
        error = self.validator.validate(checked)
        if error is not None:
            detail = describe_validation_error(error, resource)
            raise ScenarioInputError("malformed_fhir", f"{path}.resource ({resource['resourceType']}): {detail}")
        return resource

    # ------------------------------------------------------------------ one Observation
    def _conversion(self, concept: str, unit: Any, path: str) -> UnitConversion:
        canonical = self.rules.concepts[concept]["canonical_unit"]
        if isinstance(unit, str) and unit:
            exact = self.units.get(concept, {}).get(unit)
            if exact is not None:
                return exact
            folded = self.folded.get(concept, {}).get(unit.casefold(), [])
            if len({(c.scale, c.offset) for c in folded}) == 1:
                return folded[0]
        accepted = ", ".join(sorted(self.units.get(concept, {})))
        raise ScenarioInputError("unsupported_unit",
                                 f"{path}: {concept} must be given in one of [{accepted}] (canonical {canonical})")

    def _plausible(self, concept: str, raw_value: float, conversion: UnitConversion, path: str) -> float:
        value = round(conversion(raw_value), VALUE_DECIMALS)
        low, high = self.ranges.get(concept, (float("-inf"), float("inf")))
        if low <= value <= high:
            return value
        canonical = conversion.canonical_unit
        for unit, other in sorted(self.units.get(concept, {}).items()):
            if (other.scale, other.offset) != (conversion.scale, conversion.offset) and low <= other(raw_value) <= high:
                raise ScenarioInputError(
                    "unit_confused",
                    f"{path}: the {concept} value is implausible in its stated unit but plausible in {unit}; "
                    "check the unit",
                )
        raise ScenarioInputError("implausible_value",
                                 f"{path}: {concept} outside the plausible range [{low}, {high}] {canonical}")

    def _measure(self, code: Any, quantity: Any, where: str, entry: Entry, reference: str | None,
                 effective: dt.date | None) -> Measurement | None | bool:
        """A Measurement, None for an unknown code, False for a known code without a numeric value."""
        concept = next((c for c in (concept_of_coding(x.get("system"), x.get("code")) for x in _codings(code)) if c),
                       None)
        if concept is None:
            return None
        if not isinstance(quantity, Mapping) or quantity.get("value") is None:
            return False
        unit = quantity.get("code") or quantity.get("unit")  # as ingest reads it (fhir_mapping._observation)
        conversion = self._conversion(concept, unit, where)
        value = self._plausible(concept, float(quantity["value"]), conversion, where)
        return Measurement(concept, value, entry.position, reference, conversion.method, effective)

    def _observation(self, entry: Entry, resource: dict[str, Any], refs: dict[str, str], patient_key: str | None,
                     warnings: list[dict[str, str]]) -> list[Measurement]:
        path = f"Bundle.entry[{entry.position}]"
        row = EXTRACTORS["Observation"](resource, refs)
        if row["status"] in VOID_OBSERVATION_STATUSES:
            _warn(warnings, "void_observation", f"{path}: status {row['status']}, ignored")
            return []
        if row["patient_key"] is not None and patient_key is not None and row["patient_key"] != patient_key:
            _warn(warnings, "other_subject", f"{path}: Observation about another subject, ignored")
            return []
        try:
            effective = parse_fhir_datetime(row["effective"], self.timezone)
        except UnparseableDate:
            effective = None
        date = effective[0] if effective else None
        reference = _entry_reference(entry, resource)
        found = self._measure(resource.get("code"), resource.get("valueQuantity"), path, entry, reference, date)
        measured = [found] if isinstance(found, Measurement) else []
        known = found is not None
        # panels (blood pressure 85354-9) carry their values in components, coded like any observation
        for index, component in enumerate(resource.get("component") or []):
            part = self._measure(component.get("code"), component.get("valueQuantity"),
                                 f"{path}.resource.component[{index}]", entry, reference, date)
            known = known or part is not None
            if isinstance(part, Measurement):
                measured.append(part)
        if not known:
            _warn(warnings, "unknown_code", f"{path}: Observation code not known to any mapping, ignored")
        elif not measured:
            _warn(warnings, "no_value", f"{path}: Observation without a numeric valueQuantity, ignored")
        return measured

    def _conditions(self, entry: Entry, resource: dict[str, Any], warnings: list[dict[str, str]]) -> list[str]:
        verification = next((c.get("code") for c in _codings(resource.get("verificationStatus"))), None)
        if verification in VOID_CONDITION_VERIFICATION:
            return []
        for coding in _codings(resource.get("code")):
            mapped = map_condition_code(coding.get("system"), coding.get("code"), self.crosswalk)
            if mapped.verdict == MAPPED and mapped.icd10:
                return [mapped.icd10]
        _warn(warnings, "unknown_condition_code",
              f"Bundle.entry[{entry.position}]: Condition code not mapped to ICD-10, ignored")
        return []

    # ------------------------------------------------------------------ the person
    def _age(self, patient: dict[str, Any], reference: dt.date, warnings: list[dict[str, str]]) -> float | None:
        row = EXTRACTORS["Patient"](patient, {})
        try:
            parsed = parse_fhir_datetime(row["birth_date"], self.timezone)
        except UnparseableDate:
            parsed = None
        if parsed is None:
            _warn(warnings, "missing_birth_date", "Patient.birthDate is missing: age is imputed by the model")
            return None
        birth = parsed[0]
        if birth > reference or birth < self.rules.earliest_birth_date:
            raise ScenarioInputError("implausible_value",
                                     "Patient.birthDate is after the latest observation or before "
                                     f"{self.rules.earliest_birth_date}")
        band = age_band(age_in_years(birth, reference), self.policy.age_band_width, self.policy.age_top_code)
        return age_band_midpoint(band)

    def _sex(self, patient: dict[str, Any]) -> str:
        gender = EXTRACTORS["Patient"](patient, {})["gender"]
        return gender if gender in self.rules.genders else "unknown"

    def read(self, bundle: Mapping[str, Any], *, today: dt.date | None = None) -> FeatureExtraction:
        """The harmonised feature row of the bundle's one patient (raises ScenarioInputError with a reason)."""
        entries, refs = self._entries(bundle)
        warnings: list[dict[str, str]] = []
        patients: list[tuple[Entry, dict[str, Any]]] = []
        observations: list[tuple[Entry, dict[str, Any]]] = []
        conditions: list[tuple[Entry, dict[str, Any]]] = []
        ignored: Counter[str] = Counter()
        for entry in entries:
            resource = self._validated(entry)
            if resource is None:
                kind = entry.resource.get("resourceType") if isinstance(entry.resource, dict) else None
                ignored[kind if isinstance(kind, str) and _RESOURCE_TYPE.fullmatch(kind) else "other"] += 1
                continue
            {"Patient": patients, "Observation": observations, "Condition": conditions}[resource["resourceType"]].append(
                (entry, resource))
        if ignored:
            _warn(warnings, "ignored_entries",
                  "entries not read: " + ", ".join(f"{kind} x{n}" for kind, n in sorted(ignored.items())))
        if not patients:
            raise ScenarioInputError("no_patient", "the Bundle holds no Patient resource")
        if len(patients) > 1:
            raise ScenarioInputError("multiple_patients", f"the Bundle holds {len(patients)} Patient resources, not one")
        patient_entry, patient = patients[0]
        patient_id = patient.get("id")
        patient_key = patient_id if isinstance(patient_id, str) and patient_id else (
            key_from_url(patient_entry.full_url) if patient_entry.full_url else None)

        measurements = [m for entry, r in observations for m in self._observation(entry, r, refs, patient_key, warnings)]
        if not measurements:
            raise ScenarioInputError("no_usable_observations",
                                     f"none of the {len(observations)} Observations holds a value the model uses")
        diagnoses = list(dict.fromkeys(code for entry, r in conditions for code in self._conditions(entry, r, warnings)))

        today = today or dt.date.today()
        dates = [m.effective for m in measurements if m.effective is not None and m.effective <= today]
        reference = max(dates) if dates else today  # as deidentify_patients: age at the latest observation
        values: dict[str, list[float]] = {}
        for m in measurements:
            values.setdefault(m.concept, []).append(m.value)
        features: dict[str, Any] = {}
        derived: list[str] = []
        for column in self.columns:
            if column == AGE_FEATURE:
                features[column] = self._age(patient, reference, warnings)
            elif column == SEX_FEATURE:
                features[column] = self._sex(patient)
            else:
                found = values.get(column)
                features[column] = float(self.aggregate(found)) if found else None
        if "bmi" in features and features["bmi"] is None and values.get("body_weight") and values.get("body_height"):
            weight, height = statistics.median(values["body_weight"]), statistics.median(values["body_height"])
            features["bmi"] = round(weight / (height / 100.0) ** 2, 2)
            derived.append("bmi")
        for column, value in features.items():
            low, high = self.ranges.get(column, (float("-inf"), float("inf")))
            if isinstance(value, float) and not low <= value <= high:
                raise ScenarioInputError("implausible_value", f"feature {column} outside the plausible range [{low}, {high}]")
        used = {m.concept for m in measurements}
        if not used & {c for c in self.columns if c not in (AGE_FEATURE, SEX_FEATURE)} and not derived:
            raise ScenarioInputError("no_usable_observations", "no Observation measures an input of the model")
        return FeatureExtraction(
            features=features,
            measurements=measurements,
            conditions=diagnoses,
            warnings=warnings,
            patient_reference=_entry_reference(patient_entry, patient),
            age_reference_date=reference.isoformat(),
            derived=derived,
        )
