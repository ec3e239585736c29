"""Envelope format: round trips, tamper detection, flat memory, key rotation."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import struct
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import pytest

from medllm_pipelines.lib.security.envelope import (
    DEFAULT_CHUNK_SIZE,
    MAGIC,
    TAG_SIZE,
    EnvelopeHeader,
    EnvelopeInfo,
    decrypt_bytes,
    decrypt_file,
    decrypt_file_bytes,
    decrypt_stream,
    encrypt_bytes,
    encrypt_file,
    encrypt_stream,
    is_envelope,
    read_header,
    rewrap_file,
)
from medllm_pipelines.lib.security.errors import EnvelopeIntegrityError, EnvelopeKeyMismatchError
from medllm_pipelines.lib.security.vault_client import DATA_KEY_TYPE, TransitKeyService
from medllm_pipelines_tests.lib.security.fakes import LocalTestKeyProvider

CHUNK = 1024
PHI = b"Patient: Zhang San; MRN 00412345; DOB 1961-03-07; dx C34.1 adenocarcinoma. "


def phi_bytes(size: int) -> bytes:
    """Recognisable, PHI-like plaintext of exactly ``size`` bytes."""
    return (PHI * (size // len(PHI) + 1))[:size]


@pytest.fixture
def provider() -> LocalTestKeyProvider:
    return LocalTestKeyProvider()


def seal(provider: LocalTestKeyProvider, data: bytes, aad: bytes = b"record-1", chunk_size: int = CHUNK) -> bytes:
    return encrypt_bytes(data, provider, aad, chunk_size=chunk_size)


def chunk_span(blob: bytes, index: int, chunk_size: int = CHUNK) -> tuple[int, int]:
    """Byte range of sealed chunk ``index`` inside ``blob``."""
    start = read_header(io.BytesIO(blob)).header_length + index * (chunk_size + TAG_SIZE)
    return start, min(start + chunk_size + TAG_SIZE, len(blob))


def header_of(path: Path) -> EnvelopeHeader:
    with path.open("rb") as handle:
        return read_header(handle)


# -- round trips ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "chunk_size"),
    [
        pytest.param(0, CHUNK, id="empty"),
        pytest.param(1, CHUNK, id="one-byte"),
        pytest.param(CHUNK - 1, CHUNK, id="one-short-chunk"),
        pytest.param(CHUNK, CHUNK, id="exactly-one-chunk"),
        pytest.param(CHUNK + 1, CHUNK, id="chunk-plus-one"),
        pytest.param(3 * CHUNK, CHUNK, id="exactly-three-chunks"),
        pytest.param(7 * CHUNK + 13, CHUNK, id="multi-chunk"),
        pytest.param(5_000_000, 64 * 1024, id="5MB-64KiB-chunks"),
        pytest.param(DEFAULT_CHUNK_SIZE * 2 + 5, DEFAULT_CHUNK_SIZE, id="default-chunk-size"),
    ],
)
def test_round_trip_restores_bytes_and_reports_sizes(provider: LocalTestKeyProvider, size: int, chunk_size: int) -> None:
    data = os.urandom(size)
    out = io.BytesIO()
    info = encrypt_stream(io.BytesIO(data), out, provider, aad=b"record-1", chunk_size=chunk_size)
    blob = out.getvalue()

    assert decrypt_bytes(blob, provider, b"record-1") == data
    assert info.plaintext_bytes == size
    assert info.chunk_count == max(1, -(-size // chunk_size))
    assert info.envelope_bytes == len(blob)
    assert info.envelope_sha256 == hashlib.sha256(blob).hexdigest()
    assert len(blob) == read_header(io.BytesIO(blob)).header_length + size + info.chunk_count * TAG_SIZE


def test_round_trip_through_short_reads(provider: LocalTestKeyProvider) -> None:
    """Pipes and sockets return less than asked; chunks must still be full."""

    class Trickle(io.RawIOBase):
        def __init__(self, data: bytes) -> None:
            self._data = io.BytesIO(data)

        def readable(self) -> bool:
            return True

        def read(self, size: int = -1) -> bytes:
            return self._data.read(min(size, 100) if size >= 0 else -1)

    data = os.urandom(5 * CHUNK + 17)
    out = io.BytesIO()
    encrypt_stream(Trickle(data), out, provider, chunk_size=CHUNK)
    assert b"".join(decrypt_stream(Trickle(out.getvalue()), provider)) == data


def test_envelope_hides_plaintext_and_is_randomised(provider: LocalTestKeyProvider) -> None:
    data = phi_bytes(20 * CHUNK)
    first, second = seal(provider, data), seal(provider, data)

    for blob in (first, second):
        assert b"Zhang San" not in blob and b"00412345" not in blob
        assert data[:32] not in blob
    assert first != second  # fresh data key and nonce per envelope


def test_header_holds_only_the_wrapped_key(provider: LocalTestKeyProvider) -> None:
    captured: list[bytes] = []
    original = provider.generate_data_key

    def spy() -> tuple[bytes, str]:
        key, wrapped = original()
        captured.append(key)
        return key, wrapped

    provider.generate_data_key = spy  # type: ignore[method-assign]
    blob = seal(provider, b"x" * 3000)
    header = read_header(io.BytesIO(blob))

    assert is_envelope(blob[:8]) and blob.startswith(MAGIC)
    assert not is_envelope(b"PK\x03\x04 a zip") and not is_envelope(b"")
    assert header.key_ref == provider.key_ref and header.wrapped_key.startswith("local:v1:")
    assert captured[0] not in blob
    raw_header = blob[: header.header_length]
    assert set(json.loads(raw_header[11:])) == {"alg", "chunk_size", "key_ref", "nonce", "wrapped_key"}


# -- tampering -----------------------------------------------------------------


def flip(blob: bytes, position: int) -> bytes:
    return blob[:position] + bytes([blob[position] ^ 0x01]) + blob[position + 1 :]


def edit_header(blob: bytes, **changes: object) -> bytes:
    header = read_header(io.BytesIO(blob))
    fields = json.loads(blob[11 : header.header_length])
    fields.update(changes)
    raw = json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()
    return MAGIC + bytes([1]) + struct.pack(">I", len(raw)) + raw + blob[header.header_length :]


def swap_chunks(blob: bytes, first: int, second: int) -> bytes:
    (a0, a1), (b0, b1) = chunk_span(blob, first), chunk_span(blob, second)
    assert a1 - a0 == b1 - b0
    return blob[:a0] + blob[b0:b1] + blob[a1:b0] + blob[a0:a1] + blob[b1:]


def drop_last_chunk(blob: bytes) -> bytes:
    last = (len(blob) - read_header(io.BytesIO(blob)).header_length - 1) // (CHUNK + TAG_SIZE)
    return blob[: chunk_span(blob, last)[0]]


TAMPERINGS: dict[str, Callable[[bytes], bytes]] = {
    "flipped-byte-first-chunk": lambda b: flip(b, chunk_span(b, 0)[0] + 5),
    "flipped-byte-last-tag": lambda b: flip(b, len(b) - 1),
    "truncated-mid-chunk": lambda b: b[: chunk_span(b, 2)[0] + 100],
    "truncated-at-chunk-boundary": drop_last_chunk,
    "truncated-last-byte": lambda b: b[:-1],
    "header-only": lambda b: b[: chunk_span(b, 0)[0]],
    "appended-bytes": lambda b: b + os.urandom(64),
    "swapped-chunks": lambda b: swap_chunks(b, 1, 2),
    "duplicated-chunk": lambda b: b[: chunk_span(b, 1)[0]] + b[slice(*chunk_span(b, 0))] + b[chunk_span(b, 1)[0] :],
    "header-chunk-size-edited": lambda b: edit_header(b, chunk_size=CHUNK + TAG_SIZE),
    "header-nonce-edited": lambda b: edit_header(b, nonce="AAAAAAAAAAAAAAAA"),
    "header-wrapped-key-edited": lambda b: edit_header(b, wrapped_key="local:v1:" + "A" * 80),
    "header-extra-field": lambda b: edit_header(b, note="unauthenticated"),
    "magic-edited": lambda b: b"\x89MLENX" + b[6:],
    "version-edited": lambda b: b[:6] + b"\x02" + b[7:],
}


@pytest.mark.parametrize("tamper", list(TAMPERINGS.values()), ids=list(TAMPERINGS))
def test_tampered_envelope_is_rejected_without_leaking_plaintext(
    provider: LocalTestKeyProvider, tamper: Callable[[bytes], bytes]
) -> None:
    data = phi_bytes(4 * CHUNK + 300)
    blob = tamper(seal(provider, data))

    with pytest.raises(EnvelopeIntegrityError) as caught:
        decrypt_bytes(blob, provider, b"record-1")
    message = str(caught.value)
    assert "Zhang" not in message and "00412345" not in message


def test_header_fields_are_authenticated_even_when_parsing_would_succeed(provider: LocalTestKeyProvider) -> None:
    """A one-chunk envelope parses the same under a larger chunk_size; the edit must still fail."""
    blob = edit_header(seal(provider, b"short note"), chunk_size=2 * CHUNK)
    with pytest.raises(EnvelopeIntegrityError, match="chunk 0 failed authentication"):
        decrypt_bytes(blob, provider, b"record-1")


def test_chunk_from_another_envelope_is_rejected(provider: LocalTestKeyProvider) -> None:
    data = phi_bytes(3 * CHUNK)
    one, other = seal(provider, data), seal(provider, data)
    start, end = chunk_span(one, 1)
    spliced = one[:start] + other[start:end] + one[end:]
    with pytest.raises(EnvelopeIntegrityError):
        decrypt_bytes(spliced, provider, b"record-1")


@pytest.mark.parametrize("aad", [b"record-2", b"", b"record-1\x00"], ids=["other-record", "missing", "extended"])
def test_wrong_associated_data_is_rejected(provider: LocalTestKeyProvider, aad: bytes) -> None:
    blob = seal(provider, phi_bytes(2 * CHUNK), aad=b"record-1")
    with pytest.raises(EnvelopeIntegrityError, match="associated data"):
        decrypt_bytes(blob, provider, aad)


def test_envelope_for_another_key_names_both_keys(provider: LocalTestKeyProvider) -> None:
    blob = seal(provider, b"data")
    with pytest.raises(EnvelopeKeyMismatchError, match="test/local-kek.*transit/other"):
        decrypt_bytes(blob, LocalTestKeyProvider(key_ref="transit/other"), b"record-1")


def test_tampered_chunk_plaintext_is_never_yielded(provider: LocalTestKeyProvider) -> None:
    data = phi_bytes(4 * CHUNK)
    blob = seal(provider, data)
    blob = flip(blob, chunk_span(blob, 2)[0] + 3)
    received: list[bytes] = []
    with pytest.raises(EnvelopeIntegrityError, match="chunk 2"):
        for piece in decrypt_stream(io.BytesIO(blob), provider, aad=b"record-1"):
            received.append(piece)
    assert b"".join(received) == data[: 2 * CHUNK]


def test_failed_decrypt_file_leaves_no_output(provider: LocalTestKeyProvider, tmp_path: Path) -> None:
    sealed = tmp_path / "scan.dcm.env"
    (tmp_path / "scan.dcm").write_bytes(phi_bytes(5 * CHUNK))
    encrypt_file(tmp_path / "scan.dcm", sealed, provider, b"scan", chunk_size=CHUNK)
    sealed.write_bytes(sealed.read_bytes()[:-20])

    with pytest.raises(EnvelopeIntegrityError):
        decrypt_file(sealed, tmp_path / "restored.dcm", provider, b"scan")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scan.dcm", "scan.dcm.env"]


# -- files -----------------------------------------------------------------------


def test_encrypt_file_is_private_and_atomic(provider: LocalTestKeyProvider, tmp_path: Path) -> None:
    source, target = tmp_path / "notes.txt", tmp_path / "notes.txt.env"
    source.write_bytes(phi_bytes(3 * CHUNK + 5))
    target.write_bytes(b"previous version")

    info = encrypt_file(source, target, provider, b"notes", chunk_size=CHUNK)

    assert (target.stat().st_mode & 0o777) == 0o600
    assert info.envelope_bytes == target.stat().st_size
    assert decrypt_file_bytes(target, provider, b"notes") == source.read_bytes()
    assert decrypt_file(target, tmp_path / "restored.txt", provider, b"notes") == source.stat().st_size
    assert (tmp_path / "restored.txt").read_bytes() == source.read_bytes()
    assert ((tmp_path / "restored.txt").stat().st_mode & 0o777) == 0o600
    assert not list(tmp_path.glob(".*.tmp"))


def test_failed_encrypt_file_keeps_previous_file(tmp_path: Path) -> None:
    class FailingProvider(LocalTestKeyProvider):
        def generate_data_key(self) -> tuple[bytes, str]:
            raise RuntimeError("key service down")

    source, target = tmp_path / "a.bin", tmp_path / "a.bin.env"
    source.write_bytes(b"new data")
    target.write_bytes(b"previous version")
    with pytest.raises(RuntimeError):
        encrypt_file(source, target, FailingProvider())
    assert target.read_bytes() == b"previous version"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin", "a.bin.env"]


# -- memory ----------------------------------------------------------------------


class CountingReader(io.RawIOBase):
    """A source that records how much each caller asked for and got."""

    def __init__(self, data: bytes) -> None:
        self._data = io.BytesIO(data)
        self.largest_request = 0
        self.consumed = 0

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        if size < 0:
            raise AssertionError("streaming code must never read to EOF in one call")
        self.largest_request = max(self.largest_request, size)
        piece = self._data.read(size)
        self.consumed += len(piece)
        return piece


def test_streams_read_at_most_two_chunks_ahead(provider: LocalTestKeyProvider) -> None:
    chunk = 4096
    source = CountingReader(os.urandom(50 * chunk))
    sealed = io.BytesIO()
    encrypt_stream(source, sealed, provider, chunk_size=chunk)
    assert source.largest_request == chunk

    reader = CountingReader(sealed.getvalue())
    stream = decrypt_stream(reader, provider)
    first = next(stream)
    header_length = read_header(io.BytesIO(sealed.getvalue())).header_length
    assert len(first) == chunk
    assert reader.consumed <= header_length + 2 * (chunk + TAG_SIZE)
    assert reader.largest_request <= chunk + TAG_SIZE
    assert sum(len(piece) for piece in stream) == 49 * chunk


def test_memory_stays_flat_in_file_size(provider: LocalTestKeyProvider, tmp_path: Path) -> None:
    chunk, size = 256 * 1024, 48 * 1024 * 1024
    source, sealed = tmp_path / "big.bin", tmp_path / "big.bin.env"
    with open(source, "wb") as handle:
        for _ in range(size // chunk):
            handle.write(os.urandom(chunk))

    tracemalloc.start()
    try:
        encrypt_file(source, sealed, provider, chunk_size=chunk)
        _, encrypt_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        with open(sealed, "rb") as handle:
            total = sum(len(piece) for piece in decrypt_stream(handle, provider))
        _, decrypt_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert total == size
    assert encrypt_peak < 6 * chunk, f"encrypt peak {encrypt_peak} bytes for a {size} byte file"
    assert decrypt_peak < 6 * chunk, f"decrypt peak {decrypt_peak} bytes for a {size} byte file"


# -- against OpenBao transit -----------------------------------------------------


def test_round_trip_with_transit_data_keys(transit_service: TransitKeyService, tmp_path: Path) -> None:
    source, sealed = tmp_path / "report.pdf", tmp_path / "report.pdf.env"
    source.write_bytes(phi_bytes(3 * CHUNK + 1))

    info: EnvelopeInfo = encrypt_file(source, sealed, transit_service, b"report", chunk_size=CHUNK)

    header = header_of(sealed)
    assert header.key_ref == "transit/medllm-raw-zone" and header.wrapped_key.startswith("vault:v")
    assert info.wrapped_key_version == transit_service.key_info().latest_version
    assert decrypt_file_bytes(sealed, transit_service, b"report") == source.read_bytes()


def test_rotation_with_rewrap_loses_no_data(openbao_server, tmp_path: Path) -> None:
    """Rotate, rewrap every header, retire the old version: data still opens."""
    service = TransitKeyService(openbao_server.addr, openbao_server.token, data_key_name="test-rotation-envelope")
    service.ensure_transit({"test-rotation-envelope": DATA_KEY_TYPE})
    data = phi_bytes(4 * CHUNK)
    source, sealed, stale = tmp_path / "a.bin", tmp_path / "a.bin.env", tmp_path / "stale.env"
    source.write_bytes(data)
    encrypt_file(source, sealed, service, b"a", chunk_size=CHUNK)
    shutil.copy(sealed, stale)

    assert service.rotate_key() == 2
    assert decrypt_file_bytes(sealed, service, b"a") == data  # old version still decrypts
    assert rewrap_file(sealed, service.rewrap) is True
    assert header_of(sealed).wrapped_key.startswith("vault:v2:")
    assert rewrap_file(sealed, service.rewrap) is False
    service.set_min_decryption_version(2)

    assert decrypt_file_bytes(sealed, service, b"a") == data
    with pytest.raises(EnvelopeIntegrityError, match="retired"):
        decrypt_file_bytes(stale, service, b"a")
