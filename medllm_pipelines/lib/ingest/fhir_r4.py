"""FHIR R4 (4.0.1) as senders send it, read with the R4B (4.3.0) models of ``fhir.resources``.

``fhir.resources`` has no R4 namespace (its default is R5; ``R4B`` is the
closest). R4B is "strictly backward compatible with R4" except in the areas it
revamped. The differences were measured, not assumed: every model of
``fhir.resources`` 6.1.0 (FHIR 4.0.1) was compared with the R4B models used
here, element by element (name, cardinality, required-ness, type). What R4B
rejects of valid R4, and what this module does about it:

* resource types R4B removed (medicinal-product and substance regulation,
  evidence synthesis): :data:`R4_ONLY_RESOURCE_TYPES`. None of them feeds a
  table, so they are out of scope (kept encrypted in the raw object), never
  quarantined as unknown types;
* resource types R4B reworked so that an R4 instance does not validate
  (``Evidence``, ``EvidenceVariable``): :data:`R4B_REWORKED_RESOURCE_TYPES`,
  out of scope as well, not validated against the wrong shape;
* ``Extension.valueMeta`` (and ``ElementDefinition`` ``*Meta`` choices, only in
  conformance resources): R4's open ``value[x]`` allowed ``Meta``, R4B's does
  not. An extension is never extracted into a table, so :func:`normalise_r4_to_r4b`
  drops such extensions from the copy that is validated (the row and its
  content hash come from the resource as sent);
* ``MarketingStatus.country``/``dateRange`` and
  ``EvidenceVariable.characteristic`` became optional: R4 data passes.

The clinical resources the tables hold (Patient, Encounter, Condition,
Observation, MedicationRequest, DocumentReference, Consent, DiagnosticReport,
Procedure, AllergyIntolerance, Immunization) did not change between R4 and
R4B. R5 is another matter (``Consent.scope``/``patient``/``dateTime``/``policyRule``,
``Encounter.class`` and many more are rejected by the default namespace): that
is why validation is pinned to ``fhir.resources.R4B``.
"""

from __future__ import annotations

import copy
from typing import Any

R4_ONLY_RESOURCE_TYPES = frozenset(
    {
        "EffectEvidenceSynthesis",
        "MedicinalProduct",
        "MedicinalProductAuthorization",
        "MedicinalProductContraindication",
        "MedicinalProductIndication",
        "MedicinalProductIngredient",
        "MedicinalProductInteraction",
        "MedicinalProductManufactured",
        "MedicinalProductPackaged",
        "MedicinalProductPharmaceutical",
        "MedicinalProductUndesirableEffect",
        "RiskEvidenceSynthesis",
        "SubstanceNucleicAcid",
        "SubstancePolymer",
        "SubstanceProtein",
        "SubstanceReferenceInformation",
        "SubstanceSourceMaterial",
        "SubstanceSpecification",
    }
)
R4B_REWORKED_RESOURCE_TYPES = frozenset({"Evidence", "EvidenceVariable"})
# Element names of R4 that R4B dropped from open choice types (value[x] of Extension and ElementDefinition).
R4_ONLY_CHOICE_ELEMENTS = frozenset({"valueMeta", "defaultValueMeta", "fixedMeta", "patternMeta"})


def not_validated_as_r4b(resource_type: str) -> bool:
    """True for R4 resource types whose R4 instances R4B cannot validate (removed or reworked)."""
    return resource_type in R4_ONLY_RESOURCE_TYPES or resource_type in R4B_REWORKED_RESOURCE_TYPES


def _holds_r4_only_element(value: Any) -> bool:
    if isinstance(value, dict):
        return any(k in R4_ONLY_CHOICE_ELEMENTS or _holds_r4_only_element(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_holds_r4_only_element(v) for v in value)
    return False


def _strip(value: Any) -> tuple[Any, int]:
    """``value`` without extensions carrying an R4-only ``valueMeta``; and how many were dropped."""
    dropped = 0
    if isinstance(value, list):
        out = []
        for item in value:
            if isinstance(item, dict) and "valueMeta" in item and "url" in item:
                dropped += 1
                continue
            item, n = _strip(item)
            dropped += n
            out.append(item)
        return out, dropped
    if isinstance(value, dict):
        out_dict = {}
        for key, item in value.items():
            if key in ("defaultValueMeta", "fixedMeta", "patternMeta"):
                dropped += 1
                continue
            item, n = _strip(item)
            dropped += n
            if key in ("extension", "modifierExtension") and item == []:
                continue  # FHIR forbids empty arrays
            out_dict[key] = item
        return out_dict, dropped
    return value, 0


def normalise_r4_to_r4b(resource: dict[str, Any]) -> tuple[dict[str, Any], int]:
    """A copy of an R4 resource that R4B can validate, and the number of R4-only elements dropped.

    Only elements no table extracts are dropped (extensions), so a row read
    from the original and one read from the copy are the same. Returns the
    resource itself (and 0) when it holds nothing R4-only.
    """
    if not _holds_r4_only_element(resource):
        return resource, 0
    stripped, dropped = _strip(copy.deepcopy(resource))
    return stripped, dropped
