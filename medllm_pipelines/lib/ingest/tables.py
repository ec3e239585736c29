"""The tables FHIR and HL7 v2 feeds are parsed into: names, column schemas, lineage columns.

Both parsers (``fhir.py``, ``hl7.py``) emit rows of these tables, and the raw
zone stores them with these columns and types, so the quality stage reads one
shape whatever the sender spoke. Every column is nullable; types are
``"string"``, ``"float64"`` or ``"int64"``.
"""

from __future__ import annotations

from typing import Any

# table name -> FHIR resource type it holds
FHIR_TABLES: dict[str, str] = {
    "patients": "Patient",
    "encounters": "Encounter",
    "conditions": "Condition",
    "observations": "Observation",
    "medication_requests": "MedicationRequest",
    "notes": "DocumentReference",
    "consents": "Consent",
    "diagnostic_reports": "DiagnosticReport",
    "procedures": "Procedure",
    "allergy_intolerances": "AllergyIntolerance",
    "immunizations": "Immunization",
}
TABLE_OF_TYPE = {rtype: table for table, rtype in FHIR_TABLES.items()}


LINEAGE_COLUMNS = [
    "institution",
    "resource_type",
    "resource_key",
    "version_id",
    "content_hash",
    "source_object",
    "source_position",
]


# Column schema of each table (extracted columns, then lineage). Types:
# "string", "float64", "int64"; every column is nullable.
_EXTRACTED_COLUMNS: dict[str, list[tuple[str, str]]] = {
    "patients": [
        ("mrn", "string"), ("resident_id", "string"), ("name_zh", "string"), ("name_en", "string"),
        ("gender", "string"), ("birth_date", "string"), ("phone", "string"), ("email", "string"),
        ("address", "string"),
    ],
    "encounters": [
        ("patient_key", "string"), ("status", "string"), ("encounter_class", "string"), ("start", "string"),
        ("end", "string"),
    ],
    "conditions": [
        ("patient_key", "string"), ("code_system", "string"), ("code", "string"), ("display", "string"),
        ("clinical_status", "string"), ("onset", "string"), ("recorded_date", "string"),
    ],
    "observations": [
        ("patient_key", "string"), ("status", "string"), ("category", "string"), ("code_system", "string"),
        ("code", "string"), ("display", "string"), ("value", "float64"), ("unit", "string"),
        ("unit_system", "string"), ("effective", "string"),
    ],
    "medication_requests": [
        ("patient_key", "string"), ("status", "string"), ("code_system", "string"), ("code", "string"),
        ("display", "string"), ("authored_on", "string"),
    ],
    "notes": [
        ("patient_key", "string"), ("status", "string"), ("date", "string"), ("content_type", "string"),
        ("language", "string"), ("text", "string"),
    ],
    "consents": [
        ("patient_key", "string"), ("status", "string"), ("scope", "string"), ("provision_type", "string"),
        ("date_time", "string"), ("period_start", "string"), ("period_end", "string"),
        # only on erasure requests by conditional DELETE (Patient?identifier=system|value): resolved in cleaning
        ("erasure_identifier_system", "string"), ("erasure_identifier_value", "string"),
    ],
    "diagnostic_reports": [
        ("patient_key", "string"), ("encounter_key", "string"), ("status", "string"), ("category", "string"),
        ("code_system", "string"), ("code", "string"), ("display", "string"), ("effective", "string"),
        ("issued", "string"), ("result_count", "int64"),
    ],
    "procedures": [
        ("patient_key", "string"), ("encounter_key", "string"), ("status", "string"), ("code_system", "string"),
        ("code", "string"), ("display", "string"), ("performed_start", "string"), ("performed_end", "string"),
    ],
    "allergy_intolerances": [
        ("patient_key", "string"), ("clinical_status", "string"), ("verification_status", "string"),
        ("allergy_type", "string"), ("category", "string"), ("criticality", "string"), ("code_system", "string"),
        ("code", "string"), ("display", "string"), ("onset", "string"), ("recorded_date", "string"),
    ],
    "immunizations": [
        ("patient_key", "string"), ("encounter_key", "string"), ("status", "string"), ("code_system", "string"),
        ("code", "string"), ("display", "string"), ("occurrence", "string"),
    ],
}
_LINEAGE_TYPES = [
    ("institution", "string"), ("resource_type", "string"), ("resource_key", "string"), ("version_id", "string"),
    ("content_hash", "string"), ("source_object", "string"), ("source_position", "int64"),
]
TABLE_SCHEMAS: dict[str, list[tuple[str, str]]] = {
    table: [*columns, *_LINEAGE_TYPES] for table, columns in _EXTRACTED_COLUMNS.items()
}


# The pandas dtype of each declared column type (nullable integers: Int64).
PANDAS_DTYPES = {"string": "object", "float64": "float64", "int64": "Int64"}


def table_columns(table: str) -> list[str]:
    """Column names of a parsed table, in order (extracted, then lineage)."""
    return [name for name, _ in TABLE_SCHEMAS[table]]


def rows_to_frame(table: str, rows: list[dict[str, Any]]) -> Any:
    """A pandas frame of parsed rows with the table's declared columns and dtypes (also when empty)."""
    import pandas as pd

    frame = pd.DataFrame(rows, columns=table_columns(table))
    return frame.astype({name: PANDAS_DTYPES[kind] for name, kind in TABLE_SCHEMAS[table]})


def arrow_schema(table: str) -> Any:
    """The pyarrow schema of a parsed table (for Parquet writers that append batch by batch)."""
    import pyarrow as pa

    types = {"string": pa.string(), "float64": pa.float64(), "int64": pa.int64()}
    return pa.schema([(name, types[kind]) for name, kind in TABLE_SCHEMAS[table]])
