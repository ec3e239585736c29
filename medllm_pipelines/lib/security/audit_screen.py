"""What may enter the audit log: a screen for patient identifiers in entry fields.

An entry that fails is refused, not redacted: the caller passed something it
must not, and silently dropping it would hide that. A screen, not a guarantee:
callers must still only pass counts, codes, pseudonyms, hashes and names of
things, never patient data.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from medllm_pipelines.lib.security.errors import SecurityError

__all__ = ["AuditIdentifierError", "check_no_identifiers"]

# Keys that name a direct identifier (lib/security/leak_scan.IDENTIFIER_COLUMNS and
# their usual spellings), and value shapes that are identifiers whatever the key.
_IDENTIFIER_KEYS = frozenset(
    {
        "mrn", "resident_id", "id_number", "name", "name_zh", "name_en", "patient_name", "family", "given",
        "phone", "telephone", "mobile", "email", "address", "birth_date", "dob", "patient_id", "patient_key",
    }
)
_IDENTIFIER_VALUES = (
    ("e-mail address", re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}")),
    ("resident ID number", re.compile(r"(?<!\d)\d{17}[\dXx](?![\dA-Za-z])")),
    ("mobile phone number", re.compile(r"(?<!\d)(?:\+?86[- ]?)?1[3-9]\d{9}(?!\d)")),
    ("phone number", re.compile(r"(?<!\d)\(?\d{3}\)?[- .]\d{3}[- .]\d{4}(?!\d)")),
    ("all-digit identifier", re.compile(r"^\d{6,}$")),
)
_HEX_TOKEN = re.compile(r"[0-9a-f]{16,}")
_HEX_LETTER = re.compile(r"[a-f]")


class AuditIdentifierError(SecurityError, ValueError):
    """An entry would have put something identifier-like into the log."""


def check_no_identifiers(where: str, value: Any) -> None:
    """Refuse identifier-like keys or values anywhere inside ``value``.

    A screen, not a guarantee: callers must still only pass counts, codes,
    pseudonyms, hashes and names of things, never patient data.
    """
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise AuditIdentifierError(f"{where}: keys must be strings")
            if key.lower() in _IDENTIFIER_KEYS:
                raise AuditIdentifierError(f"{where}: key {key!r} names a direct identifier; audit entries must not hold one")
            check_no_identifiers(f"{where}.{key}", item)
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            check_no_identifiers(f"{where}[{index}]", item)
    elif isinstance(value, str):
        # Hex digests and pseudonyms (hex with at least one letter) are not
        # identifiers but can contain digit runs that look like one.
        screened = _HEX_TOKEN.sub(lambda m: "#" if _HEX_LETTER.search(m.group()) else m.group(), value)
        for kind, pattern in _IDENTIFIER_VALUES:
            if pattern.search(screened):
                raise AuditIdentifierError(f"{where}: value looks like a {kind}; audit entries must not hold one")
    elif value is None or isinstance(value, (bool, int, float)):
        return
    else:
        raise AuditIdentifierError(f"{where}: unsupported value type {type(value).__name__}")
