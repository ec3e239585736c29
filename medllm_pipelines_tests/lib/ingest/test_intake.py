"""Taking landed files into the encrypted raw zone exactly once, and consuming them."""

from __future__ import annotations

import datetime as dt
import hashlib
import os

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from medllm_pipelines.lib.ingest.intake import (
    QUARANTINED,
    STORED,
    consume,
    ledger_of_partition,
    ledger_quarantine,
    take_in,
    take_in_partitions,
)
from medllm_pipelines.lib.ingest.landing import scan_landing
from medllm_pipelines.lib.security.raw_zone import RawZone
from medllm_pipelines_tests.lib.security.fakes import LocalTestKeyProvider

TEST_WRAPPING_KEY = bytes(range(32))
NOW = dt.datetime(2024, 3, 5, 10, 0, tzinfo=dt.UTC)


class FakeTransit:
    """Stands in for Vault transit ``encrypt``: records what it was given."""

    def __init__(self) -> None:
        self.received: list[str] = []

    def __call__(self, plaintext: str) -> str:
        self.received.append(plaintext)
        nonce = os.urandom(12)
        return "vault:v1:" + (nonce + AESGCM(TEST_WRAPPING_KEY).encrypt(nonce, plaintext.encode(), None)).hex()


BUNDLE = b'{"resourceType": "Bundle", "type": "collection", "entry": []}'
DICOM_BYTES = b"\x00" * 128 + b"DICM" + b"not really pixels"
ALREADY_KNOWN = b'{"resourceType": "Bundle", "type": "collection", "id": "old"}'

LANDING = {
    "h1/fhir/bundle_001.json": BUNDLE,
    "h2/fhir/resent/bundle_001_copy.json": BUNDLE,  # the same file delivered again by another route
    "h1/dicom/张三_CT_13812345678.dcm": DICOM_BYTES,
    "h1/fhir/old.json": ALREADY_KNOWN,
    "stray.json": b'{"resourceType": "Patient"}',
    "h1/notes/readme.txt": b"free text",
    "h1/_truth/manifest.json": b"{}",  # ignored: never taken in, never consumed
    "h1/.incoming.json.part": b"{",  # ignored
}


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def landing(tmp_path):
    root = tmp_path / "landing"
    for relpath, content in LANDING.items():
        path = root / relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    return root


@pytest.fixture
def zone(tmp_path) -> RawZone:
    return RawZone(tmp_path / "raw_zone", LocalTestKeyProvider())


def test_same_content_is_stored_once_and_every_file_is_accounted_for(landing, zone):
    transit = FakeTransit()

    outcome = take_in(scan_landing(landing), zone, {sha(ALREADY_KNOWN)}, transit, run_id="run-1", now=NOW)

    by_hash = {r["content_sha256"]: r for r in outcome.ledger_rows}
    assert (outcome.files_in, outcome.stored, outcome.quarantined, outcome.duplicates) == (6, 2, 2, 2)
    assert outcome.reconciliation().balanced
    assert {h: r["status"] for h, r in by_hash.items()} == {
        sha(BUNDLE): STORED,
        sha(DICOM_BYTES): STORED,
        sha(LANDING["stray.json"]): QUARANTINED,
        sha(LANDING["h1/notes/readme.txt"]): QUARANTINED,
    }
    assert by_hash[sha(LANDING["stray.json"])]["reason_code"] == "unknown_source"
    assert by_hash[sha(LANDING["h1/notes/readme.txt"])]["reason_code"] == "unsupported_file_type"
    assert zone.get_object(sha(BUNDLE)) == BUNDLE
    assert zone.get_object(sha(DICOM_BYTES)) == DICOM_BYTES
    assert not zone.has_object(sha(ALREADY_KNOWN))
    assert len(outcome.to_consume) == 6
    assert {r["dagster_run_id"] for r in outcome.ledger_rows} == {"run-1"}
    assert outcome.bytes_stored == len(BUNDLE) + len(DICOM_BYTES) + len(LANDING["stray.json"]) + len(
        LANDING["h1/notes/readme.txt"]
    )


def test_ledger_holds_no_path_plaintext(landing, zone):
    transit = FakeTransit()

    outcome = take_in(scan_landing(landing), zone, set(), transit, run_id="run-1", now=NOW)

    ledger_text = outcome.ledger_frame().to_csv()
    for relpath in LANDING:
        for fragment in (relpath, relpath.rsplit("/", 1)[-1], "张三", "13812345678"):
            assert fragment not in ledger_text
    stored_paths = set(transit.received)
    assert "h1/dicom/张三_CT_13812345678.dcm" in stored_paths  # the path is kept, encrypted
    assert all(r["source_path_ciphertext"].startswith("vault:v1:") for r in outcome.ledger_rows)


def test_a_second_delivery_of_everything_stores_nothing(landing, zone):
    first = take_in(scan_landing(landing), zone, set(), FakeTransit(), run_id="run-1", now=NOW)
    known = set(first.ledger_frame()["content_sha256"])

    second = take_in(scan_landing(landing), zone, known, FakeTransit(), run_id="run-2", now=NOW)

    assert (second.stored, second.quarantined, second.duplicates, second.files_in) == (0, 0, 6, 6)
    assert second.reconciliation().balanced


def test_files_refused_at_intake_become_quarantine_records(landing, zone):
    outcome = take_in(scan_landing(landing), zone, set(), FakeTransit(), run_id="run-1", now=NOW)

    records = ledger_quarantine(outcome.ledger_frame(), "ingest/landed_files")

    assert sorted((r.source_object, r.reason_code) for r in records) == sorted(
        [(sha(LANDING["stray.json"]), "unknown_source"), (sha(LANDING["h1/notes/readme.txt"]), "unsupported_file_type")]
    )
    assert all(r.position is None and r.stage == "ingest" for r in records)


def test_consume_removes_taken_in_files_and_empty_folders_but_not_ignored_ones(landing, zone):
    outcome = take_in(scan_landing(landing), zone, set(), FakeTransit(), run_id="run-1", now=NOW)

    removed = consume(outcome.to_consume, landing)

    left = sorted(p.relative_to(landing).as_posix() for p in landing.rglob("*"))
    assert removed == 6
    assert left == ["h1", "h1/.incoming.json.part", "h1/_truth", "h1/_truth/manifest.json"]
    assert consume(outcome.to_consume, landing) == 0  # already gone: nothing to do


def test_consume_never_removes_the_landing_root(tmp_path):
    root = tmp_path / "landing"
    (root / "h1" / "fhir").mkdir(parents=True)
    (root / "h1" / "fhir" / "a.json").write_bytes(BUNDLE)
    (root / "top.json").write_bytes(BUNDLE)

    removed = consume([root / "h1" / "fhir" / "a.json", root / "top.json"], root)

    assert removed == 2
    assert root.is_dir() and list(root.iterdir()) == []


def test_partitions_are_taken_in_in_order_and_a_copy_in_a_later_partition_is_a_duplicate(landing, zone):
    registered = ("h1", "h2")
    files = {
        "h1": scan_landing(landing, under="h1"),
        "h2": scan_landing(landing, under="h2"),
        "unrouted": [f for f in scan_landing(landing) if f.institution not in registered],
    }

    intake = take_in_partitions(files, zone, set(), FakeTransit(), run_id="run-1", now=NOW, registered=registered)

    h1, h2, unrouted = (intake.by_partition[p].as_metadata() for p in ("h1", "h2", "unrouted"))
    assert (h1["files_in"], h1["files_stored"], h1["files_quarantined"], h1["duplicate_deliveries"]) == (4, 3, 1, 0)
    assert (h2["files_in"], h2["files_stored"], h2["duplicate_deliveries"]) == (1, 0, 1)  # h1's bundle, sent again
    assert unrouted["files_quarantined"] == 1 and unrouted["new_files_by_institution"] == {"<none>": 1}
    assert all(meta["reconciled"] for meta in (h1, h2, unrouted))
    assert intake.files_in == 6 and len(intake.ledger_frame()) == 5
    assert intake.ledger_frame()["content_sha256"].is_unique


def test_a_partition_answers_for_its_folder_and_unrouted_for_every_folder_not_registered(landing, zone):
    ledger = take_in(scan_landing(landing), zone, set(), FakeTransit(), run_id="run-1", now=NOW,
                     registered=("h1",)).ledger_frame()

    assert set(ledger_of_partition(ledger, "h1", ("h1",))["institution"]) == {"h1"}
    unrouted = ledger_of_partition(ledger, "unrouted", ("h1",))
    assert sorted(unrouted["institution"].fillna("<none>")) == ["<none>"]  # h2's copy was a duplicate of h1's
    assert ledger_of_partition(ledger, "h9", ("h1",)).empty
