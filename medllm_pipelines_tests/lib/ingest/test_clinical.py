"""One institution's clinical feeds parsed into part files: bounded parts, every table committed, reconciled."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import orjson
import pandas as pd
import pytest

from medllm_pipelines.lib.common import codes
from medllm_pipelines.lib.common.records import ReconciliationError
from medllm_pipelines.lib.ingest import clinical
from medllm_pipelines.lib.ingest.clinical import parse_clinical_partition
from medllm_pipelines.lib.ingest.feed import ParsedFeed
from medllm_pipelines.lib.ingest.landing import FHIR_BUNDLE, FHIR_NDJSON, HL7V2
from medllm_pipelines.lib.ingest.tables import FHIR_TABLES, table_columns

HL7_FIXTURE = Path(__file__).with_name("fixtures") / "hl7v25_ch2_adt_a01.hl7"


def patient(pid: str) -> dict:
    return {"resourceType": "Patient", "id": pid, "gender": "female", "birthDate": "1960-01-01",
            "identifier": [{"system": codes.mrn_system("hzsf"), "value": f"MRN-{pid}",
                            "type": {"coding": [{"system": codes.IDENTIFIER_TYPE, "code": "MR"}]}}]}


def observation(oid: str, subject: str) -> dict:
    return {"resourceType": "Observation", "id": oid, "status": "final", "subject": {"reference": subject},
            "code": {"coding": [{"system": codes.LOINC, "code": "4548-4"}]}, "effectiveDateTime": "2024-03-05",
            "valueQuantity": {"value": 6.5, "unit": "%", "system": codes.UCUM, "code": "%"}}


def bundle(*resources: dict) -> bytes:
    return orjson.dumps({"resourceType": "Bundle", "type": "collection", "entry": [{"resource": r} for r in resources]})


class FakeZone:
    """Stored objects by content hash, read whole or as a stream of small chunks (as decryption yields them)."""

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}
        self.kinds: dict[str, str] = {}

    def add(self, content: bytes, kind: str) -> None:
        digest = hashlib.sha256(content).hexdigest()
        self.objects[digest], self.kinds[digest] = content, kind

    def get_object(self, sha256: str) -> bytes:
        return self.objects[sha256]

    @contextmanager
    def stream_object(self, sha256: str) -> Iterator[Iterator[bytes]]:
        data = self.objects[sha256]
        yield iter([data[i:i + 7] for i in range(0, len(data), 7)])

    def ledger_rows(self, institution: str) -> pd.DataFrame:
        return pd.DataFrame([{"content_sha256": d, "file_kind": self.kinds[d], "institution": institution}
                             for d in sorted(self.objects)])


class Writer:
    def __init__(self) -> None:
        self.parts: list[pd.DataFrame] = []
        self.committed = False

    def write(self, frame: pd.DataFrame) -> None:
        self.parts.append(frame)

    def commit(self) -> int:
        self.committed = True
        return len(self.parts)


def run(zone: FakeZone, institution: str = "hzsf", part_rows: int = 50_000) -> tuple[clinical.ClinicalPartition, dict]:
    writers = {table: Writer() for table in FHIR_TABLES}
    result = parse_clinical_partition(zone, zone.ledger_rows(institution), writers, partition=institution,
                                      asset="ingest/fhir_resources", part_rows=part_rows)
    return result, writers


def test_rows_go_out_in_parts_once_part_rows_are_buffered_and_every_table_is_committed():
    zone = FakeZone()
    zone.add(bundle(*(patient(f"p{i}") for i in range(3))), FHIR_BUNDLE)
    zone.add(bundle(*(patient(f"q{i}") for i in range(2))), FHIR_BUNDLE)
    zone.add(b"\n".join(orjson.dumps(observation(f"o{i}", "Patient/p1")) for i in range(3)), FHIR_NDJSON)

    result, writers = run(zone, part_rows=2)

    assert sorted(len(part) for part in writers["patients"].parts) == [2, 3]  # a part per file's batch here
    assert sum(len(part) for part in writers["observations"].parts) == 3
    assert all(writer.committed for writer in writers.values())
    assert result.rows_by_table["patients"] == 5 and result.records_out == 8
    assert result.outcomes.unbalanced() == [] and len(result.outcomes) == 3
    empty = writers["immunizations"].parts
    assert len(empty) == 1 and empty[0].empty and list(empty[0].columns) == table_columns("immunizations")


def test_the_partition_metadata_describes_its_own_feed():
    zone = FakeZone()
    zone.add(bundle(patient("p1"), {"resourceType": "Organization", "id": "org1", "name": "Lab"}), FHIR_BUNDLE)
    zone.add(b'{"resourceType": "Bundle", "entry": [', FHIR_BUNDLE)
    zone.add(HL7_FIXTURE.read_bytes(), HL7V2)

    result, _ = run(zone)

    meta = result.table_metadata("patients")
    assert meta["dagster/row_count"] == result.rows_by_table["patients"] >= 2
    assert meta["rows_by_institution"] == {"hzsf": meta["dagster/row_count"]}
    assert (meta["feed_files"], meta["feed_files_with_quarantine"], meta["feed_quarantined"]) == (3, 1, 1)
    assert meta["feed_quarantined_by_reason"] == {"malformed_json": 1}
    assert meta["feed_out_of_scope_by_type"] == {"Organization": 1}
    assert meta["feed_reconciled"] is True and meta["feed_bulk_counts_match"] is True
    assert meta["feed_bulk_manifest_checks"] == {}
    assert result.table_metadata("observations")["quarantined_of_this_type"] == 0


def test_a_bulk_manifest_is_checked_against_the_ndjson_entries_that_arrived():
    zone = FakeZone()
    zone.add(orjson.dumps({"transactionTime": "2025-05-01T00:00:00Z", "request": "https://x/$export",
                           "output": [{"type": "Observation", "url": "https://x/o.ndjson", "count": 3}]}), FHIR_BUNDLE)
    zone.add(b"\n".join(orjson.dumps(observation(f"o{i}", "Patient/p1")) for i in range(2)), FHIR_NDJSON)

    meta = run(zone, "rvic")[0].as_metadata()

    assert meta["feed_bulk_counts_match"] is False
    assert meta["feed_bulk_manifest_checks"]["bulk_count_mismatches"] == {"Observation": {"declared": 3, "arrived": 2}}


def test_a_partition_with_no_feed_commits_empty_tables():
    result, writers = run(FakeZone(), "unrouted")

    assert result.as_metadata()["feed_entries_read"] == 0 and result.records_out == 0
    assert all(len(w.parts) == 1 and w.parts[0].empty and w.committed for w in writers.values())


def test_a_parser_that_loses_entries_fails_the_partition(monkeypatch):
    def lossy(*args, **kwargs) -> Iterator[ParsedFeed]:
        yield ParsedFeed(resources_seen=2)

    monkeypatch.setattr(clinical, "parse_clinical_object", lossy)
    zone = FakeZone()
    zone.add(bundle(patient("p1")), FHIR_BUNDLE)

    with pytest.raises(ReconciliationError):
        run(zone)
