"""A small synthetic hospital parsed once (FHIR + HL7) for the quality tests that need real feeds."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest


@dataclass(frozen=True)
class ParsedHospital:
    root: Path
    manifest: object
    raw: dict[str, pd.DataFrame]  # parsed tables, declared columns
    patients: pd.DataFrame  # cleaned


@pytest.fixture(scope="session")
def parsed_hospital(tmp_path_factory: pytest.TempPathFactory) -> ParsedHospital:
    from medllm_pipelines.lib.ingest.feed import ParsedFeed as ParsedFhir
    from medllm_pipelines.lib.ingest.fhir import parse_fhir_object
    from medllm_pipelines.lib.ingest.tables import rows_to_frame
    from medllm_pipelines.lib.ingest.hl7 import parse_hl7_object
    from medllm_pipelines.lib.ingest.landing import (
        FHIR_BUNDLE,
        FHIR_NDJSON,
        HL7V2,
        classify,
    )
    from medllm_pipelines.lib.quality.cleaning import clean_patients, load_rules
    from medllm_pipelines.lib.synth import DefectRates, generate_hospital

    root = tmp_path_factory.mktemp("quality-hospital")
    manifest = generate_hospital(root, patients=40, seed=3, defect_rates=DefectRates.none())
    parsed = ParsedFhir()
    for path in sorted(p for p in root.rglob("*") if p.is_file() and "_truth" not in p.parts):
        relpath = path.relative_to(root).as_posix()
        kind, institution = classify(relpath), relpath.split("/")[0]
        source = relpath.replace("/", "_")[:64]
        if kind == HL7V2:
            parsed.extend(parse_hl7_object(path.read_bytes(), institution=institution, source_object=source,
                                           asset="ingest/hl7"))
        elif kind in (FHIR_BUNDLE, FHIR_NDJSON) and "/fhir/" in relpath:
            parsed.extend(parse_fhir_object(path.read_bytes(), kind=kind, institution=institution,
                                            source_object=source, asset="ingest/fhir"))
    raw = {table: rows_to_frame(table, parsed.rows[table])
           for table in ("patients", "encounters", "observations", "conditions")}
    patients = clean_patients(raw["patients"], "quality/clean_patients", dt.date(2026, 1, 1), load_rules()).frame
    return ParsedHospital(root, manifest, raw, patients)
