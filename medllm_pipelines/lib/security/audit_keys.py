"""MAC keys of the audit log's checkpoints and head: keys the log writer can use but not read.

A hash chain alone cannot stop someone with write access from rewriting every
entry after the one they changed; a MAC by a key held in Vault (transit
``hmac``) can, because the writer never sees the key.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any, Protocol

__all__ = ["ChainKey", "LocalChainKey", "TransitChainKey"]


class ChainKey(Protocol):
    """A MAC key the log writer can use but not read (normally Vault transit)."""

    key_ref: str

    def mac(self, data: bytes, *, key_version: int | None = None) -> tuple[str, int | None]:
        """Hex MAC of ``data`` and the key version used (``None`` if unversioned)."""
        ...


class TransitChainKey:
    """HMAC-SHA-256 by a Vault transit ``hmac`` key (normally ``medllm-audit``).

    ``TransitChainKey(service, key_name="medllm-audit")`` on any
    ``TransitKeyService``; without ``key_name`` the service's *pseudonym* key
    slot names the audit key. Use a key of its own: the pseudonym key must stay
    dedicated to pseudonyms. The key version is stored with each MAC, so
    rotating the key keeps old checkpoints verifiable.
    """

    def __init__(self, service: Any, *, key_name: str | None = None) -> None:
        self._service = service
        self._key_name = key_name
        self.key_ref = f"{service.transit_mount}/{key_name or service.pseudonym_key_name}"

    def mac(self, data: bytes, *, key_version: int | None = None) -> tuple[str, int | None]:
        message = [hashlib.sha256(data).hexdigest()]
        if self._key_name is None:
            digests = self._service.hmac_many(message, key_version=key_version)
        else:
            digests = self._service.hmac_many(message, key_version=key_version, key_name=self._key_name)
        return digests[0], digests.key_version


class LocalChainKey:
    """HMAC-SHA-256 with a key held in memory: tests and offline tools only."""

    def __init__(self, secret: bytes, key_ref: str = "local/audit") -> None:
        if len(secret) < 16:
            raise ValueError("a chain key needs at least 128 bits")
        self._secret = secret
        self.key_ref = key_ref

    def mac(self, data: bytes, *, key_version: int | None = None) -> tuple[str, int | None]:
        return hmac.new(self._secret, data, hashlib.sha256).hexdigest(), None

    def __repr__(self) -> str:
        return f"LocalChainKey(key_ref={self.key_ref!r})"
