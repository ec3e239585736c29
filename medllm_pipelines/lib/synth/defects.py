"""Seeded data defects, each one recorded so a test can find it again.

Two kinds, with different rate semantics:

* record defects (``duplicate_record``, ``unparseable_date``, ``impossible_date``,
  ``impossible_value``, ``wrong_unit``, ``missing_required_field``): the rate
  is the probability that a patient record carries one such defect, placed
  in one of its resources;
* file defects (``malformed_file``, ``truncated_file``, ``non_fhir_json``): the
  rate is per output file (Bundle JSON, NDJSON file, DICOM file). In NDJSON
  they hit a single line, as a broken bulk export does; in Bundles the whole
  file. ``truncated_file`` also applies to DICOM files.

Record defects are never placed inside a file that a file defect makes
unreadable, so every listed defect can be observed where the manifest says.
"""

from __future__ import annotations

import copy
import re
from dataclasses import asdict, dataclass, field, fields
from datetime import date, datetime, time, timedelta
from typing import Any

import numpy as np
import orjson

from medllm_pipelines.lib.common import codes
from medllm_pipelines.lib.synth.fhir import format_datetime, format_quantity
from medllm_pipelines.lib.synth.institutions import Institution, ObservationSpec
from medllm_pipelines.lib.synth.units import CONFUSABLE_UNIT, convert_between

DUPLICATE_RECORD = "duplicate_record"
UNPARSEABLE_DATE = "unparseable_date"
IMPOSSIBLE_DATE = "impossible_date"
IMPOSSIBLE_VALUE = "impossible_value"
WRONG_UNIT = "wrong_unit"
MISSING_REQUIRED_FIELD = "missing_required_field"
MALFORMED_FILE = "malformed_file"
TRUNCATED_FILE = "truncated_file"
NON_FHIR_JSON = "non_fhir_json"

RECORD_DEFECTS = (DUPLICATE_RECORD, UNPARSEABLE_DATE, IMPOSSIBLE_DATE, IMPOSSIBLE_VALUE, WRONG_UNIT,
                  MISSING_REQUIRED_FIELD)
FILE_DEFECTS = (MALFORMED_FILE, TRUNCATED_FILE, NON_FHIR_JSON)
DEFECT_TYPES = RECORD_DEFECTS + FILE_DEFECTS

# Defects after which the resource no longer validates as FHIR R4.
INVALIDATING_DEFECTS = frozenset({UNPARSEABLE_DATE, MISSING_REQUIRED_FIELD, MALFORMED_FILE, TRUNCATED_FILE,
                                  NON_FHIR_JSON})

Resource = dict[str, Any]


@dataclass(frozen=True)
class DefectRates:
    """How often each defect is seeded (see the module docstring for the unit)."""

    duplicate_record: float = 0.02
    unparseable_date: float = 0.01
    impossible_date: float = 0.01
    impossible_value: float = 0.02
    wrong_unit: float = 0.02
    missing_required_field: float = 0.01
    malformed_file: float = 0.01
    truncated_file: float = 0.01
    non_fhir_json: float = 0.01

    def __post_init__(self) -> None:
        for item in fields(self):
            value = getattr(self, item.name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{item.name} must be a probability, got {value}")
        if self.malformed_file + self.truncated_file > 1.0:
            raise ValueError("malformed_file + truncated_file must not exceed 1")

    @classmethod
    def none(cls) -> DefectRates:
        """A clean hospital."""
        return cls(**{item.name: 0.0 for item in fields(cls)})

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


@dataclass(frozen=True)
class Defect:
    """One seeded defect as listed in the manifest (never any identifier value)."""

    defect_type: str
    institution: str
    file: str  # path relative to the output folder
    position: int | None  # Bundle entry index or NDJSON line number (0-based); None: whole file
    resource_type: str | None
    resource_id: str | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Item:
    """One resource (or a raw line) on its way into a file, with its defects."""

    resource: Resource | None
    defects: list[str] = field(default_factory=list)
    raw: bytes | None = None  # when set, written instead of the resource

    @property
    def resource_type(self) -> str | None:
        return self.resource.get("resourceType") if self.resource else None

    @property
    def resource_id(self) -> str | None:
        return self.resource.get("id") if self.resource else None

    @property
    def clean(self) -> bool:
        return not self.defects and self.raw is None


def choose_file_defect(rates: DefectRates, rng: np.random.Generator) -> str | None:
    """At most one of malformed/truncated for a file."""
    draw = rng.random()
    if draw < rates.malformed_file:
        return MALFORMED_FILE
    if draw < rates.malformed_file + rates.truncated_file:
        return TRUNCATED_FILE
    return None


# --- record defects -----------------------------------------------------------
class RecordDefects:
    """Applies record defects to one institution's resources."""

    def __init__(self, institution: Institution, rates: DefectRates, rng: np.random.Generator) -> None:
        self.institution = institution
        self.rates = rates
        self.rng = rng
        self._specs: dict[str, ObservationSpec] = {spec.code: spec for spec in institution.observations}

    def apply(self, resources: list[Resource]) -> tuple[list[Item], list[Item]]:
        """Items for the record and the duplicate copies to send elsewhere."""
        items = [Item(resource) for resource in resources]
        duplicates: list[Item] = []
        appliers = (
            (self.rates.unparseable_date, self._unparseable_date),
            (self.rates.impossible_date, self._impossible_date),
            (self.rates.impossible_value, self._impossible_value),
            (self.rates.wrong_unit, self._wrong_unit),
            (self.rates.missing_required_field, self._missing_required_field),
        )
        for rate, applier in appliers:
            if rate > 0 and self.rng.random() < rate:
                applier(items)
        if self.rates.duplicate_record > 0 and self.rng.random() < self.rates.duplicate_record:
            candidates = [item for item in items if item.clean]
            if candidates:
                original = candidates[int(self.rng.integers(len(candidates)))]
                duplicates.append(Item(copy.deepcopy(original.resource), [DUPLICATE_RECORD]))
        return items, duplicates

    def _pick(self, items: list[Item], predicate: Any) -> Item | None:
        candidates = [item for item in items if item.clean and predicate(item.resource)]
        if not candidates:
            return None
        return candidates[int(self.rng.integers(len(candidates)))]

    def _concept(self, resource: Resource) -> str | None:
        if resource.get("resourceType") != "Observation":
            return None
        coding = resource.get("code", {}).get("coding", [{}])[0]
        spec = self._specs.get(coding.get("code", ""))
        return spec.concept if spec else None

    def _unparseable_date(self, items: list[Item]) -> bool:
        paths = {
            "Patient": ("birthDate",),
            "Encounter": ("period", "start"),
            "Condition": ("recordedDate",),
            "Observation": ("effectiveDateTime",),
            "MedicationRequest": ("authoredOn",),
        }
        item = self._pick(items, lambda r: r["resourceType"] in paths)
        if item is None:
            return False
        assert item.resource is not None
        path = paths[item.resource["resourceType"]]
        holder = item.resource
        for key in path[:-1]:
            holder = holder[key]
        original = str(holder[path[-1]])
        year, month, day = original[:4], original[5:7], original[8:10]
        holder[path[-1]] = f"{year}-13-45" if self.rng.random() < 0.5 else f"{day}/{month}/{year}"
        item.defects.append(UNPARSEABLE_DATE)
        return True

    def _impossible_date(self, items: list[Item]) -> bool:
        patient = items[0].resource
        assert patient is not None and patient["resourceType"] == "Patient"
        variant = int(self.rng.integers(3))
        if variant < 2 and items[0].clean:
            month, day = int(self.rng.integers(1, 13)), int(self.rng.integers(1, 29))
            year = 2026 + int(self.rng.integers(1, 40)) if variant == 0 else 1800 + int(self.rng.integers(0, 99))
            patient["birthDate"] = f"{year:04d}-{month:02d}-{day:02d}"
            items[0].defects.append(IMPOSSIBLE_DATE)
            return True
        item = self._pick(items, lambda r: r["resourceType"] == "Observation")
        if item is None:
            return False
        assert item.resource is not None
        try:
            birth = date.fromisoformat(patient["birthDate"])
        except ValueError:  # the birth date itself was made unparseable
            return False
        before = birth - timedelta(days=int(self.rng.integers(200, 3650)))
        moment = datetime.combine(before, time(9, 30))
        item.resource["effectiveDateTime"] = format_datetime(moment, self.institution.timestamp_style)
        item.defects.append(IMPOSSIBLE_DATE)
        return True

    def _impossible_value(self, items: list[Item]) -> bool:
        targets = (codes.BMI.name, codes.HBA1C.name, codes.FASTING_GLUCOSE.name)
        item = self._pick(items, lambda r: self._concept(r) in targets)
        if item is None:
            return False
        assert item.resource is not None
        concept = self._concept(item.resource)
        quantity = item.resource["valueQuantity"]
        if concept == codes.BMI.name:
            quantity["value"] = 250.0
        elif concept == codes.HBA1C.name:
            quantity["value"] = 45.0 if quantity["code"] == "%" else 450
        else:
            quantity["value"] = -abs(quantity["value"])
        item.defects.append(IMPOSSIBLE_VALUE)
        return True

    def _wrong_unit(self, items: list[Item]) -> bool:
        spec_units = {spec.concept: spec.unit for spec in self.institution.observations}
        item = self._pick(items, lambda r: (self._concept(r), spec_units.get(self._concept(r) or "", ""))
                          in CONFUSABLE_UNIT)
        if item is None:
            return False
        assert item.resource is not None
        concept = self._concept(item.resource)
        assert concept is not None
        quantity = item.resource["valueQuantity"]
        other = CONFUSABLE_UNIT[(concept, quantity["code"])]
        converted = convert_between(concept, float(quantity["value"]), quantity["code"], other)
        quantity["value"] = format_quantity(converted, 0 if other == "mg/dL" else 1)
        item.defects.append(WRONG_UNIT)  # the number is in `other`, the label still says the site's unit
        return True

    def _missing_required_field(self, items: list[Item]) -> bool:
        draw = self.rng.random()
        if draw < 0.15:
            item = self._pick(items, lambda r: r["resourceType"] == "Encounter")
            removed = ("class",)
        elif draw < 0.3:
            item = self._pick(items, lambda r: r["resourceType"] == "MedicationRequest")
            removed = ("intent",)
        else:
            item = None
            removed = ()
        if item is None:
            item = self._pick(items, lambda r: r["resourceType"] == "Observation")
            removed = ("status",) if self.rng.random() < 0.5 else ("code",)
        if item is None:
            return False
        assert item.resource is not None
        for key in removed:
            item.resource.pop(key, None)
        item.defects.append(MISSING_REQUIRED_FIELD)
        return True


# --- file defects -------------------------------------------------------------
_ENTRY_BOUNDARY = re.compile(r"\},(\s*)\{(\s*)\"fullUrl\"")


def malformed_json(text: str, rng: np.random.Generator) -> str:
    """A JSON syntax error as integration engines make them: a comma lost between
    Bundle entries, or a trailing comma before the closing brace."""
    boundaries = list(_ENTRY_BOUNDARY.finditer(text))
    if boundaries:
        match = boundaries[int(rng.integers(len(boundaries)))]
        comma = match.start() + 1
        return text[:comma] + text[comma + 1 :]
    body = text.rstrip()
    return body[:-1].rstrip() + ",}" + text[len(body):]


def truncate_text(text: str, rng: np.random.Generator) -> str:
    """Cut a text short (on a character boundary, so the damage is truncation only)."""
    cut = int(len(text) * float(rng.uniform(0.3, 0.9)))
    return text[: max(1, min(cut, len(text) - 2))]


def truncate_bytes(data: bytes, rng: np.random.Generator) -> bytes:
    cut = int(len(data) * float(rng.uniform(0.5, 0.9)))
    return data[: max(1, min(cut, len(data) - 2))]


def non_fhir_document(rng: np.random.Generator) -> dict[str, Any]:
    """Valid JSON that is not FHIR: what lands when a gateway misroutes a message."""
    variants: list[dict[str, Any]] = [
        {"error": {"code": "UPSTREAM_TIMEOUT", "message": "HIS gateway timed out"}, "retry": True,
         "attempt": int(rng.integers(1, 5))},
        {"msgType": "ADT^A08", "ack": "AA", "controlId": f"MSG{int(rng.integers(10**6, 10**7))}"},
        {"kind": "export-progress", "processed": int(rng.integers(100, 5000)), "status": "in-progress"},
    ]
    return variants[int(rng.integers(len(variants)))]


def non_fhir_line(rng: np.random.Generator) -> bytes:
    return orjson.dumps(non_fhir_document(rng))
