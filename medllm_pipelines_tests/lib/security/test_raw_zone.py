"""The encrypted raw zone with an in-memory key provider (no Vault needed)."""

from __future__ import annotations

import hashlib
import stat

import pandas as pd
import pytest

from medllm_pipelines.lib.security.errors import EnvelopeIntegrityError
from medllm_pipelines.lib.security.raw_zone import RawZone
from medllm_pipelines_tests.lib.security.fakes import LocalTestKeyProvider

TEST_WRAPPING_KEY = bytes(range(32))


SECRET_NOTE = "患者张三，身份证 11010519491231002X，电话 13812345678".encode()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def zone(tmp_path) -> RawZone:
    return RawZone(tmp_path / "raw_zone", LocalTestKeyProvider())


def test_object_round_trip_and_idempotent_put(zone):
    digest = sha(SECRET_NOTE)
    path = zone.put_object(digest, SECRET_NOTE)
    first_blob = path.read_bytes()

    again = zone.put_object(digest, SECRET_NOTE)

    assert zone.get_object(digest) == SECRET_NOTE
    assert zone.has_object(digest)
    assert again == path and path.read_bytes() == first_blob  # stored once, not re-encrypted
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_table_round_trip(zone):
    frame = pd.DataFrame({"name_zh": ["张三", "李四", None], "phone": ["13812345678", None, "13900000000"], "n": [1, 2, 3]})

    zone.write_table("raw_patients", frame)

    pd.testing.assert_frame_equal(zone.read_table("raw_patients"), frame)
    assert zone.has_table("raw_patients")


def test_reading_a_table_never_written_says_so(zone):
    with pytest.raises(FileNotFoundError, match="not been materialised"):
        zone.read_table("raw_absent")


def test_no_file_in_the_zone_holds_plaintext(zone):
    zone.put_object(sha(SECRET_NOTE), SECRET_NOTE)
    zone.write_table("raw_patients", pd.DataFrame({"name_zh": ["张三"], "resident_id": ["11010519491231002X"]}))

    needles = ["张三".encode(), b"11010519491231002X", b"13812345678", "身份证".encode(), b"PAR1"]
    files = [p for p in zone.root.rglob("*") if p.is_file()]
    assert len(files) == 2
    for path in files:
        data = path.read_bytes()
        assert not [n for n in needles if n in data], path.name


def test_swapping_two_object_files_fails_decryption(zone):
    other = b"another landed file"
    a, b = sha(SECRET_NOTE), sha(other)
    path_a, path_b = zone.put_object(a, SECRET_NOTE), zone.put_object(b, other)
    blob_a, blob_b = path_a.read_bytes(), path_b.read_bytes()

    path_a.write_bytes(blob_b)
    path_b.write_bytes(blob_a)

    for digest in (a, b):
        with pytest.raises(EnvelopeIntegrityError):
            zone.get_object(digest)


def test_a_table_file_renamed_to_another_table_fails_decryption(zone):
    zone.write_table("raw_patients", pd.DataFrame({"x": [1]}))
    zone.table_path("raw_patients").rename(zone.table_path("clean_patients"))

    with pytest.raises(EnvelopeIntegrityError):
        zone.read_table("clean_patients")


@pytest.mark.parametrize("name", ["../etc/passwd", "ABC", "a" * 63, "g" * 64, "a" * 64 + "\n", ""])
def test_object_names_must_be_sha256_digests(zone, name):
    with pytest.raises(ValueError, match="sha256"):
        zone.put_object(name, b"x")


@pytest.mark.parametrize("name", ["../escape", "Raw", "a-b", "a.b", "raw_patients\n", ""])
def test_table_names_cannot_escape_the_zone(zone, name):
    with pytest.raises(ValueError, match="invalid raw-zone table name"):
        zone.write_table(name, pd.DataFrame({"x": [1]}))


def test_a_partition_written_in_parts_reads_back_whole_and_replaces_the_old_one(zone):
    zone.write_partition("ingest_observations", "hzsf", pd.DataFrame({"v": [0]}))
    parts = [pd.DataFrame({"v": range(i * 10, i * 10 + 10)}) for i in range(3)]

    assert zone.write_partition_parts("ingest_observations", "hzsf", parts) == 3

    assert zone.read_partition("ingest_observations", "hzsf")["v"].tolist() == list(range(30))
    assert zone.partitions("ingest_observations") == ["hzsf"]


def test_a_parts_writer_that_never_commits_leaves_the_previous_partition(zone):
    zone.write_partition("ingest_observations", "hzsf", pd.DataFrame({"v": [1, 2]}))
    writer = zone.partition_writer("ingest_observations", "hzsf")
    writer.write(pd.DataFrame({"v": [9]}))  # the run is killed here, before commit()

    assert zone.read_partition("ingest_observations", "hzsf")["v"].tolist() == [1, 2]
    # the next run clears the stale staged part and commits its own
    rerun = zone.partition_writer("ingest_observations", "hzsf")
    rerun.write(pd.DataFrame({"v": [3]}))
    rerun.commit()
    assert zone.read_partition("ingest_observations", "hzsf")["v"].tolist() == [3]


def test_streaming_an_object_yields_its_plaintext(zone):
    content = b'{"resourceType": "Patient"}\n' * 5000
    digest = hashlib.sha256(content).hexdigest()
    zone.put_object(digest, content)
    with zone.stream_object(digest) as chunks:
        assert b"".join(chunks) == content
