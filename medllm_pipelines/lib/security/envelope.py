"""Envelope encryption of files and byte strings with per-object data keys.

Why envelope encryption: Vault/OpenBao transit never hands out its key
encryption key, and sending gigabytes of DICOM through it would be slow. Each
object gets a fresh 256-bit data key from the key service; the data is sealed
locally with AES-256-GCM and only the *wrapped* data key ("vault:v1:...") is
stored next to it. Reading needs a live key service and a policy that allows
``decrypt`` on the key, so access can be revoked and audited centrally, and a
transit key rotation only needs the small header rewrapped (:func:`rewrap_file`).

File format, version 1 (all integers big-endian)::

    magic        6 bytes   b"\\x89MLENV"
    version      1 byte    0x01
    header_len   4 bytes   length of the JSON header that follows (<= 64 KiB)
    header       JSON, UTF-8, keys sorted:
                   {"alg": "AES-256-GCM", "chunk_size": 1048576,
                    "key_ref": "transit/medllm-raw-zone",
                    "nonce": <base64 of 12 random bytes>,
                    "wrapped_key": "vault:v1:..."}
    chunks       ceil(n / chunk_size) segments (at least one), each
                 AES-256-GCM(chunk plaintext) || 16-byte tag; every segment but
                 the last holds exactly chunk_size plaintext bytes.

Chunk ``i`` uses nonce ``base_nonce XOR i`` (i in the low 8 bytes) and the
associated data ``SHA-256(bound header) || i (8 bytes) || final (1 byte) ||
caller aad``. The bound header is magic, version and every header field except
``wrapped_key`` (whose integrity the key service's own AEAD guarantees, and
which must stay replaceable for key rotation). Hence, as in Tink's streaming
AEAD: editing the header, dropping trailing chunks (the new last chunk was not
sealed as final), appending, reordering or swapping chunks between files, or
using the wrong caller ``aad`` all fail authentication.

Streaming decryption releases each chunk's plaintext once that chunk is
authenticated; a later failure raises :class:`EnvelopeIntegrityError`, so a
consumer must discard everything it received from a stream that raised. Use
:func:`decrypt_file` (temp file + rename) when partial output must never be
visible.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import io
import json
import os
import secrets
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol, runtime_checkable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from medllm_pipelines.lib.common.files import write_private_atomic_with
from medllm_pipelines.lib.security.errors import (
    DataKeyUnwrapError,
    EnvelopeIntegrityError,
    EnvelopeKeyMismatchError,
)

__all__ = [
    "ALGORITHM",
    "DEFAULT_CHUNK_SIZE",
    "FORMAT_VERSION",
    "MAGIC",
    "DataKeyProvider",
    "EnvelopeHeader",
    "EnvelopeInfo",
    "decrypt_bytes",
    "decrypt_file",
    "decrypt_file_bytes",
    "decrypt_stream",
    "encrypt_bytes",
    "encrypt_file",
    "encrypt_stream",
    "is_envelope",
    "read_header",
    "rewrap_envelope_bytes",
    "rewrap_file",
    "wrapped_key_version",
]

MAGIC = b"\x89MLENV"
FORMAT_VERSION = 1
ALGORITHM = "AES-256-GCM"
DEFAULT_CHUNK_SIZE = 1024 * 1024
MIN_CHUNK_SIZE = 1
MAX_CHUNK_SIZE = 64 * 1024 * 1024
MAX_HEADER_SIZE = 64 * 1024
KEY_SIZE = 32
NONCE_SIZE = 12
TAG_SIZE = 16
MAX_CHUNKS = 2**32

_PREAMBLE = struct.Struct(">6sBI")
_CHUNK_POSITION = struct.Struct(">QB")
_HEADER_FIELDS = frozenset({"alg", "chunk_size", "key_ref", "nonce", "wrapped_key"})


@runtime_checkable
class DataKeyProvider(Protocol):
    """Source of per-object data keys, normally a Vault/OpenBao transit key.

    ``unwrap_data_key`` raises :class:`DataKeyUnwrapError` when the wrapped key
    is not valid for this provider, and a ``VaultError`` subclass when the
    service cannot answer (so outages are never mistaken for tampering).
    """

    @property
    def key_ref(self) -> str:
        """Stable name of the wrapping key, e.g. ``"transit/medllm-raw-zone"``."""
        ...

    def generate_data_key(self) -> tuple[bytes, str]:
        """Return a fresh 32-byte plaintext key and its wrapped form."""
        ...

    def unwrap_data_key(self, wrapped: str) -> bytes:
        """Return the 32-byte plaintext key of a wrapped key."""
        ...


@dataclass(frozen=True)
class EnvelopeHeader:
    """Parsed header of an envelope; holds no secret (the key is wrapped)."""

    format_version: int
    alg: str
    key_ref: str
    wrapped_key: str
    chunk_size: int
    nonce: bytes
    header_length: int
    """Bytes from the start of the envelope to the first chunk."""

    def to_json_bytes(self) -> bytes:
        return _canonical_json(
            {
                "alg": self.alg,
                "chunk_size": self.chunk_size,
                "key_ref": self.key_ref,
                "nonce": base64.b64encode(self.nonce).decode("ascii"),
                "wrapped_key": self.wrapped_key,
            }
        )

    def bound_digest(self) -> bytes:
        """SHA-256 over everything in the header that chunks authenticate."""
        bound = _canonical_json(
            {
                "alg": self.alg,
                "chunk_size": self.chunk_size,
                "key_ref": self.key_ref,
                "nonce": base64.b64encode(self.nonce).decode("ascii"),
            }
        )
        return hashlib.sha256(MAGIC + bytes([self.format_version]) + bound).digest()


@dataclass(frozen=True)
class EnvelopeInfo:
    """What :func:`encrypt_stream` wrote; safe to put into asset metadata."""

    key_ref: str
    wrapped_key_version: int | None
    chunk_size: int
    chunk_count: int
    plaintext_bytes: int
    envelope_bytes: int
    envelope_sha256: str
    format_version: int = FORMAT_VERSION


def is_envelope(first_bytes: bytes) -> bool:
    """Whether data starting with ``first_bytes`` claims to be an envelope.

    Only the magic is checked (pass at least ``len(MAGIC)`` bytes); version
    and integrity are checked by the decrypting functions.
    """
    return bytes(first_bytes[: len(MAGIC)]) == MAGIC


def encrypt_stream(
    src: BinaryIO,
    dst: BinaryIO,
    provider: DataKeyProvider,
    *,
    aad: bytes = b"",
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> EnvelopeInfo:
    """Encrypt ``src`` into ``dst`` holding at most two chunks in memory.

    ``aad`` (e.g. the object's storage key) must be given again to decrypt,
    which stops an envelope from being silently moved to another record.
    """
    _check_chunk_size(chunk_size)
    data_key, wrapped_key = provider.generate_data_key()
    if len(data_key) != KEY_SIZE:
        raise ValueError(f"data key provider returned a {len(data_key) * 8}-bit key, expected 256")
    header = EnvelopeHeader(
        format_version=FORMAT_VERSION,
        alg=ALGORITHM,
        key_ref=provider.key_ref,
        wrapped_key=wrapped_key,
        chunk_size=chunk_size,
        nonce=secrets.token_bytes(NONCE_SIZE),
        header_length=0,
    )
    aead = AESGCM(data_key)
    del data_key

    header_json = header.to_json_bytes()
    preamble = _PREAMBLE.pack(MAGIC, FORMAT_VERSION, len(header_json))
    digest = hashlib.sha256()
    envelope_bytes = 0
    for part in (preamble, header_json):
        dst.write(part)
        digest.update(part)
        envelope_bytes += len(part)

    bound = header.bound_digest()
    plaintext_bytes = 0
    index = 0
    current = _read_full(src, chunk_size)
    while True:
        following = _read_full(src, chunk_size) if len(current) == chunk_size else b""
        final = not following
        if index >= MAX_CHUNKS:
            raise ValueError("input too large for the envelope format at this chunk size")
        sealed = aead.encrypt(
            _chunk_nonce(header.nonce, index), current, _chunk_aad(bound, index, final, aad)
        )
        dst.write(sealed)
        digest.update(sealed)
        envelope_bytes += len(sealed)
        plaintext_bytes += len(current)
        index += 1
        if final:
            break
        current = following
    return EnvelopeInfo(
        key_ref=header.key_ref,
        wrapped_key_version=wrapped_key_version(wrapped_key),
        chunk_size=chunk_size,
        chunk_count=index,
        plaintext_bytes=plaintext_bytes,
        envelope_bytes=envelope_bytes,
        envelope_sha256=digest.hexdigest(),
    )


def read_header(src: BinaryIO) -> EnvelopeHeader:
    """Read and validate the header, leaving ``src`` at the first chunk."""
    preamble = _read_full(src, _PREAMBLE.size)
    if len(preamble) < _PREAMBLE.size or not is_envelope(preamble):
        raise EnvelopeIntegrityError("not an encrypted envelope (magic bytes missing)")
    _, version, header_len = _PREAMBLE.unpack(preamble)
    if version != FORMAT_VERSION:
        raise EnvelopeIntegrityError(
            f"unsupported envelope format version {version} (this code reads {FORMAT_VERSION})"
        )
    if header_len > MAX_HEADER_SIZE:
        raise EnvelopeIntegrityError(f"envelope header of {header_len} bytes exceeds the limit")
    raw = _read_full(src, header_len)
    if len(raw) != header_len:
        raise EnvelopeIntegrityError("envelope truncated inside its header")
    try:
        fields = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise EnvelopeIntegrityError("envelope header is not valid JSON") from None
    if not isinstance(fields, dict) or set(fields) != _HEADER_FIELDS:
        raise EnvelopeIntegrityError("envelope header fields are missing or unexpected")
    alg, key_ref = fields["alg"], fields["key_ref"]
    wrapped_key, chunk_size = fields["wrapped_key"], fields["chunk_size"]
    if alg != ALGORITHM:
        raise EnvelopeIntegrityError(f"unsupported envelope algorithm {alg!r}")
    if not isinstance(key_ref, str) or not isinstance(wrapped_key, str) or not wrapped_key:
        raise EnvelopeIntegrityError("envelope header has an invalid key reference")
    if (
        not isinstance(chunk_size, int)
        or isinstance(chunk_size, bool)
        or not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE
    ):
        raise EnvelopeIntegrityError("envelope header has an invalid chunk size")
    try:
        nonce = base64.b64decode(fields["nonce"], validate=True)
    except (TypeError, ValueError):
        raise EnvelopeIntegrityError("envelope header has an invalid nonce") from None
    if len(nonce) != NONCE_SIZE:
        raise EnvelopeIntegrityError("envelope header has an invalid nonce")
    return EnvelopeHeader(
        format_version=version,
        alg=alg,
        key_ref=key_ref,
        wrapped_key=wrapped_key,
        chunk_size=chunk_size,
        nonce=nonce,
        header_length=_PREAMBLE.size + header_len,
    )


def decrypt_stream(src: BinaryIO, provider: DataKeyProvider, *, aad: bytes = b"") -> Iterator[bytes]:
    """Yield the plaintext chunk by chunk, each only after it authenticated.

    The header is parsed and the data key unwrapped before this returns, so a
    foreign file, a key mismatch or an unreachable Vault fail at the call, not
    at the first ``next()``.
    """
    header = read_header(src)
    aead = _unwrap(header, provider)
    return _decrypt_chunks(src, header, aead, aad)


def encrypt_bytes(data: bytes, provider: DataKeyProvider, aad: bytes = b"", *, chunk_size: int = DEFAULT_CHUNK_SIZE) -> bytes:
    """Encrypt an in-memory value (small objects; use streams for files)."""
    out = io.BytesIO()
    encrypt_stream(io.BytesIO(data), out, provider, aad=aad, chunk_size=chunk_size)
    return out.getvalue()


def decrypt_bytes(blob: bytes, provider: DataKeyProvider, aad: bytes = b"") -> bytes:
    """Decrypt an envelope held in memory."""
    return b"".join(decrypt_stream(io.BytesIO(blob), provider, aad=aad))


def encrypt_file(
    src_path: str | os.PathLike[str],
    dst_path: str | os.PathLike[str],
    provider: DataKeyProvider,
    aad: bytes = b"",
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> EnvelopeInfo:
    """Encrypt a file to ``dst_path`` (mode 0600), atomically.

    Readers see either the previous file or the complete new envelope, never a
    half-written one, even if the process dies mid-way.
    """
    with open(src_path, "rb") as src:
        return write_private_atomic_with(
            Path(dst_path),
            lambda dst: encrypt_stream(src, dst, provider, aad=aad, chunk_size=chunk_size),
        )


def decrypt_file_bytes(path: str | os.PathLike[str], provider: DataKeyProvider, aad: bytes = b"") -> bytes:
    """Decrypt a whole envelope file into memory."""
    with open(path, "rb") as src:
        return b"".join(decrypt_stream(src, provider, aad=aad))


def decrypt_file(
    src_path: str | os.PathLike[str],
    dst_path: str | os.PathLike[str],
    provider: DataKeyProvider,
    aad: bytes = b"",
) -> int:
    """Decrypt to ``dst_path`` (mode 0600) only if the whole envelope verifies.

    Returns the plaintext size. On any failure nothing appears at ``dst_path``.
    """

    def write(dst: BinaryIO) -> int:
        written = 0
        with open(src_path, "rb") as src:
            for chunk in decrypt_stream(src, provider, aad=aad):
                dst.write(chunk)
                written += len(chunk)
        return written

    return write_private_atomic_with(Path(dst_path), write)


def rewrap_file(path: str | os.PathLike[str], rewrap: Callable[[str], str]) -> bool:
    """Replace the wrapped data key after a transit key rotation.

    ``rewrap`` is e.g. ``TransitKeyService.rewrap``; the data itself is copied,
    not decrypted, and the key service never sees it. Returns False (file
    untouched) when the wrapped key was already at the latest key version. After
    every envelope is rewrapped the old key versions can be retired
    (``min_decryption_version``).
    """
    path = Path(path)
    with open(path, "rb") as src:
        rewrapped = _rewrapped_prefix(read_header(src), rewrap)
        if rewrapped is None:
            return False
        prefix: bytes = rewrapped

        def write(dst: BinaryIO) -> None:
            dst.write(prefix)
            while block := src.read(DEFAULT_CHUNK_SIZE):
                dst.write(block)

        write_private_atomic_with(path, write)
    return True


def rewrap_envelope_bytes(blob: bytes, rewrap: Callable[[str], str]) -> bytes | None:
    """:func:`rewrap_file` for an envelope held in memory (e.g. a sealed registry field).

    Returns None when the wrapped key is already at the latest version.
    """
    header = read_header(io.BytesIO(blob))
    prefix = _rewrapped_prefix(header, rewrap)
    return None if prefix is None else prefix + blob[header.header_length:]


def _rewrapped_prefix(header: EnvelopeHeader, rewrap: Callable[[str], str]) -> bytes | None:
    """Preamble and header with the data key rewrapped; None when it is already at the latest version.

    The only place that rewraps: the sealed chunks after the header are kept byte for byte.
    """
    new_wrapped = rewrap(header.wrapped_key)
    old_version = wrapped_key_version(header.wrapped_key)
    if new_wrapped == header.wrapped_key or (
        old_version is not None and wrapped_key_version(new_wrapped) == old_version
    ):
        return None
    header_json = dataclasses.replace(header, wrapped_key=new_wrapped, header_length=0).to_json_bytes()
    return _PREAMBLE.pack(MAGIC, header.format_version, len(header_json)) + header_json


def _decrypt_chunks(src: BinaryIO, header: EnvelopeHeader, aead: AESGCM, aad: bytes) -> Iterator[bytes]:
    segment_size = header.chunk_size + TAG_SIZE
    bound = header.bound_digest()
    index = 0
    current = _read_full(src, segment_size)
    if len(current) < TAG_SIZE:
        raise EnvelopeIntegrityError("envelope truncated: no complete chunk after the header")
    while True:
        following = _read_full(src, segment_size) if len(current) == segment_size else b""
        final = not following
        if not final and len(following) < TAG_SIZE:
            # A fragment shorter than a tag cannot be a chunk: the file was cut.
            raise EnvelopeIntegrityError(f"envelope truncated after chunk {index}")
        if index >= MAX_CHUNKS:
            raise EnvelopeIntegrityError("envelope has more chunks than the format allows")
        try:
            plaintext = aead.decrypt(
                _chunk_nonce(header.nonce, index), current, _chunk_aad(bound, index, final, aad)
            )
        except InvalidTag:
            raise EnvelopeIntegrityError(
                f"chunk {index} failed authentication: the envelope was modified, truncated, "
                "reordered, or the associated data (aad) differs from encryption"
            ) from None
        yield plaintext
        if final:
            return
        index += 1
        current = following


def _unwrap(header: EnvelopeHeader, provider: DataKeyProvider) -> AESGCM:
    if header.key_ref != provider.key_ref:
        raise EnvelopeKeyMismatchError(
            f"envelope was sealed under key {header.key_ref!r}, but the provider holds {provider.key_ref!r}"
        )
    try:
        data_key = provider.unwrap_data_key(header.wrapped_key)
    except DataKeyUnwrapError as exc:
        raise EnvelopeIntegrityError(
            f"the key service rejected the envelope's wrapped data key ({exc}); the header was "
            "modified, or the key version was retired without rewrapping"
        ) from None
    if len(data_key) != KEY_SIZE:
        raise EnvelopeIntegrityError("the unwrapped data key has the wrong length")
    aead = AESGCM(data_key)
    del data_key
    return aead


def _chunk_nonce(base_nonce: bytes, index: int) -> bytes:
    prefix, counter = base_nonce[:4], int.from_bytes(base_nonce[4:], "big")
    return prefix + (counter ^ index).to_bytes(8, "big")


def _chunk_aad(bound_digest: bytes, index: int, final: bool, aad: bytes) -> bytes:
    return bound_digest + _CHUNK_POSITION.pack(index, 1 if final else 0) + aad


def _read_full(src: BinaryIO, size: int) -> bytes:
    """Read ``size`` bytes unless EOF comes first (raw streams may return less)."""
    data = src.read(size)
    if data is None:
        raise ValueError("non-blocking streams are not supported")
    if len(data) == size or not data:
        return data
    parts = [data]
    missing = size - len(data)
    while missing:
        more = src.read(missing)
        if not more:
            break
        parts.append(more)
        missing -= len(more)
    return b"".join(parts)


def _check_chunk_size(chunk_size: int) -> None:
    if not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE:
        raise ValueError(f"chunk_size must be between {MIN_CHUNK_SIZE} and {MAX_CHUNK_SIZE}")


def wrapped_key_version(wrapped_key: str) -> int | None:
    """The key version of a ``vault:vN:...`` value; None for anything else."""
    parts = wrapped_key.split(":", 2)
    if len(parts) == 3 and parts[0] == "vault" and parts[1].startswith("v") and parts[1][1:].isdigit():
        return int(parts[1][1:])
    return None


def _canonical_json(fields: dict[str, object]) -> bytes:
    return json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")
