"""HL7 v2 as interface engines accept it: published samples other projects ship
(../shared/conformance/hl7v2/, from Microsoft's FHIR-Converter and python-hl7), and mutated or
truncated messages - from those files and from our own generator - that must give rows or
quarantine records, never an exception, and always reconcile."""

from __future__ import annotations

import random
from functools import cache
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from medllm_pipelines.lib.ingest.feed import ParsedFeed
from medllm_pipelines.lib.ingest.hl7 import parse_hl7_object
from medllm_pipelines.lib.ingest.hl7_framing import split_hl7_messages
from medllm_pipelines.lib.ingest.hl7_mapping import HL7_TABLES
from medllm_pipelines.lib.ingest.tables import table_columns

CONFORMANCE = Path(__file__).resolve().parents[3].parent / "shared" / "conformance" / "hl7v2"
needs_corpus = pytest.mark.skipif(not CONFORMANCE.is_dir(), reason="../shared/conformance is not present")

# file -> (messages, rows per table in HL7_TABLES order (patients, encounters, observations, conditions,
# notes), quarantined as [(position, reason code)], warnings by code): what each file exercises.
EXPECTED = {
    # v2.8 ADT^A01 with every optional segment; v2.8 XPN has more components than hl7apy's tables
    "fhir-converter_ADT-A01-01.hl7": (1, (1, 1, 1, 1, 0), [], {"nonconforming_structure": 1}),
    "fhir-converter_ADT-A01-02.hl7": (1, (1, 1, 0, 0, 0), [], {"nonconforming_structure": 1}),
    # UTF-8 BOM, LF segment ends, v2.3 (no MSH-9 structure), blanks after the last field, DG1 coded I9
    "fhir-converter_ADT01-23.hl7": (1, (1, 1, 0, 1, 0), [], {"byte_order_mark": 1}),
    # BOM; ADT^A04 v2.3 without EVN (required): accepted with hl7apy's finding
    "fhir-converter_ADT04-251.hl7": (1, (1, 1, 0, 0, 0), [], {"byte_order_mark": 1, "nonconforming_structure": 1}),
    # BOM; a LAB ORU^R01 with two OBR groups, SPM, results without values
    "fhir-converter_LAB-ORU-1.hl7": (1, (1, 0, 10, 0, 0), [], {"byte_order_mark": 1}),
    # MDM^T02 v2.8: TXA + OBX HD/ED (a PDF reference without data) -> one note; untyped PID-3
    "fhir-converter_MDM-T02-01.hl7": (1, (1, 1, 0, 0, 1), [],
                                      {"nonconforming_structure": 1, "patient_identifier_not_mr": 1}),
    # v2.5.1 ORU^R01 with PRT (a v2.7 segment), CTD, TXA, OBX before its OBR, an OBX without OBX-3; PID-3 typed PI
    "fhir-converter_ORU-R01-01.hl7": (1, (1, 1, 4, 0, 0), [], {
        "nonconforming_structure": 1, "patient_identifier_not_mr": 1, "uncoded_observation": 1,
        "undefined_segment": 8}),
    "fhir-converter_ORU-R01-RMGEAD.hl7": (1, (1, 0, 1, 0, 0), [], {"patient_identifier_not_mr": 1}),
    # BHS ... BTS around segments without an MSH: the corpus's one malformed file
    "python-hl7_sample_bad_batch_MALFORMED.hl7": (1, (0, 0, 0, 0, 0), [(0, "missing_msh")], {}),
    # BHS/BTS batch (CR), PID-3 typed "A"
    "python-hl7_sample_batch1_ADT_A04_batch.hl7": (2, (2, 2, 0, 0, 0), [], {"patient_identifier_not_mr": 2}),
    # FHS/BHS/BTS/FTS file of two batches
    "python-hl7_sample_file1_FHS_batch.hl7": (3, (3, 3, 0, 0, 0), [], {"patient_identifier_not_mr": 3}),
    # the spec's ORU example as widely copied: a nine-digit birth date, OBX-2 "FN"
    "python-hl7_sample_hl7_ORU_R01.hl7": (1, (1, 0, 2, 0, 0), [],
                                          {"patient_identifier_not_mr": 1, "unparseable_date": 1}),
}
MALFORMED = "python-hl7_sample_bad_batch_MALFORMED.hl7"


def _parse(content: bytes) -> ParsedFeed:
    return parse_hl7_object(content, institution="conformance", source_object="f" * 64, asset="ingest/fhir_resources")


@needs_corpus
def test_every_corpus_file_has_its_expected_outcome() -> None:
    assert sorted(p.name for p in CONFORMANCE.glob("*.hl7")) == sorted(EXPECTED)
    for name, (messages, rows, quarantined, warnings) in EXPECTED.items():
        result = _parse((CONFORMANCE / name).read_bytes())
        result.reconciliation()
        outcome = (result.messages_read, tuple(len(result.rows[t]) for t in HL7_TABLES),
                   [(q.position, q.reason_code) for q in result.quarantine], result.warnings_by_code)
        assert outcome == (messages, rows, quarantined, warnings), name


@needs_corpus
def test_only_the_malformed_file_is_quarantined_and_every_other_gives_patients() -> None:
    for path in sorted(CONFORMANCE.glob("*.hl7")):
        result = _parse(path.read_bytes())
        if path.name == MALFORMED:
            assert result.records_out == 0 and [q.reason_code for q in result.quarantine] == ["missing_msh"]
            continue
        assert result.quarantine == [], (path.name, result.quarantine)
        assert result.rows["patients"], path.name
        for table in HL7_TABLES:
            for row in result.rows[table]:
                assert set(row) == set(table_columns(table)), (path.name, table)
        patient_keys = {p["resource_key"] for p in result.rows["patients"]}
        assert {r["patient_key"] for t in HL7_TABLES[1:] for r in result.rows[t]} <= patient_keys, path.name


@needs_corpus
def test_what_the_real_files_carry_is_mapped() -> None:
    mdm = _parse((CONFORMANCE / "fhir-converter_MDM-T02-01.hl7").read_bytes())
    (note,) = mdm.rows["notes"]
    assert (note["status"], note["date"], note["content_type"], note["text"]) == (
        "current", "2008-01-31T16:00:00+02:15", "application/pdf", None)

    lab = _parse((CONFORMANCE / "fhir-converter_LAB-ORU-1.hl7").read_bytes())
    values = {o["code"]: o["value"] for o in lab.rows["observations"]}
    assert (values["11273-0"], values["26478-8"], values["11156-7"]) == (4.06, 20.0, None)  # both OBR groups

    v28 = _parse((CONFORMANCE / "fhir-converter_ADT-A01-01.hl7").read_bytes())
    (patient,) = v28.rows["patients"]
    assert (patient["mrn"], patient["name_en"], patient["birth_date"]) == ("PATID1234", "ADAM EVERYMAN", "1988-08-18")

    batch = _parse((CONFORMANCE / "python-hl7_sample_file1_FHS_batch.hl7").read_bytes())
    assert {p["mrn"] for p in batch.rows["patients"]} == {"0000112234"}  # PID-3 typed "A", the only identifier

    oru = _parse((CONFORMANCE / "python-hl7_sample_hl7_ORU_R01.hl7").read_bytes())
    assert [(p["name_en"], p["birth_date"]) for p in oru.rows["patients"]] == [("EVE EVERYWOMAN", None)]


@needs_corpus
def test_warning_reasons_name_segments_and_fields_never_values() -> None:
    for path in sorted(CONFORMANCE.glob("*.hl7")):
        result = _parse(path.read_bytes())
        for warning in result.warnings:
            assert not any(value in warning.reason for value in ("PATID1234", "EVERYMAN", "196203520", "0000112234",
                                                                   "987654321", "DUCK")), (path.name, warning)


# --- property: mutated and truncated messages ------------------------------------------
@cache
def _seed_messages() -> tuple[bytes, ...]:
    """Single messages to mutate: each corpus file's messages and those of a small generated whsy feed."""
    import tempfile

    from medllm_pipelines.lib.synth import DefectRates, generate_hospital
    from medllm_pipelines.lib.synth.hl7 import ADT_FILE, ORU_FILE

    seeds: list[bytes] = []
    if CONFORMANCE.is_dir():
        seeds += [path.read_bytes() for path in sorted(CONFORMANCE.glob("*.hl7"))]
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        generate_hospital(root, patients=30, seed=3, defect_rates=DefectRates.none())
        for relpath in (ADT_FILE, ORU_FILE):
            messages = [m.data for m in split_hl7_messages((root / relpath).read_bytes())]
            seeds += messages[:12]
    return tuple(seeds)


_NOISE = b"|^~\\&\r\n\x0b\x1c\xef\xbb\xbf MSHPIDOBXZZ1:/.0123456789"


def _mutate(content: bytes, rng: random.Random, kind: str) -> bytes:
    if not content:
        return content
    at = rng.randrange(len(content))
    if kind == "truncate":
        return content[:at]
    if kind == "delete":
        return content[:at] + content[at + rng.randint(1, 40):]
    if kind == "insert":
        return content[:at] + bytes(rng.choice(_NOISE) for _ in range(rng.randint(1, 8))) + content[at:]
    if kind == "replace":
        return content[:at] + bytes([rng.randrange(256)]) + content[at + 1:]
    segments = content.replace(b"\r\n", b"\r").replace(b"\n", b"\r").split(b"\r")
    index = rng.randrange(len(segments))
    if kind == "drop_segment":
        del segments[index]
    elif kind == "duplicate_segment":
        segments.insert(index, segments[index])
    elif kind == "swap_segments":
        other = rng.randrange(len(segments))
        segments[index], segments[other] = segments[other], segments[index]
    elif kind == "terminators":
        return rng.choice([b"\n", b"\r\n", b"\n\r"]).join(segments)
    elif kind == "frame":
        return b"\x0b" + b"\r".join(segments) + rng.choice([b"\x1c\r", b"", b"\x1c"])
    return b"\r".join(segments)


_KINDS = ("truncate", "delete", "insert", "replace", "drop_segment", "duplicate_segment", "swap_segments",
          "terminators", "frame")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data())
def test_mutated_messages_give_rows_or_quarantine_and_always_reconcile(data) -> None:
    seeds = _seed_messages()
    picked = data.draw(st.lists(st.integers(0, len(seeds) - 1), min_size=1, max_size=2), label="seeds")
    content = b"\r".join(seeds[i] for i in picked)
    rng = random.Random(data.draw(st.integers(0, 2**32 - 1), label="rng"))
    for kind in data.draw(st.lists(st.sampled_from(_KINDS), min_size=1, max_size=3), label="mutations"):
        content = _mutate(content, rng, kind)

    result = _parse(content)  # never raises

    assert result.resources_seen == result.records_out + len(result.quarantine) + result.out_of_scope
    result.reconciliation()
    for record in result.quarantine:
        assert record.reason_code and record.reason
        assert record.reason_code != "parser_error", record.reason  # the safety net caught a defect: fix it
        assert record.position is not None or record.reason_code in ("empty_file", "parser_error")
    for table in HL7_TABLES:
        for row in result.rows[table]:
            assert set(row) == set(table_columns(table))
    assert sum(result.warnings_by_code.values()) == len(result.warnings)
