"""OAuth 2.0 client credentials of the REST service (RFC 6749 section 4.4): integrations and the demo clinician.

A client belongs to exactly one principal of the registry (:mod:`~medllm_pipelines.lib.security.rbac`), so a
token obtained with it acts with that principal's role, and deactivating the principal stops the client too.
Secrets are 256-bit random values shown once at creation; the file keeps only a scrypt hash of each (salted),
and a seal (an envelope of nothing whose associated data binds client id, principal and hash; the data key is
wrapped by Vault) so that a client edited into the file by hand, or re-pointed at another principal, is refused.

File ``$MEDLLM_HOME/security/clients.json`` (0600, replaced atomically under a lock)::

    {"format": "medllm-clients", "format_version": 1,
     "clients": {"demo-clinician-7f3a": {"principal": "demo-clinician", "created_at": "...Z", "active": true,
                 "secret_hash": "scrypt$16384$8$1$<salt b64>$<hash b64>", "seal": "<b64 envelope>"}}}
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
import os
import re
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medllm_pipelines.lib.common.files import exclusive_lock, write_private_atomic
from medllm_pipelines.lib.security.envelope import DataKeyProvider, decrypt_bytes, encrypt_bytes
from medllm_pipelines.lib.security.errors import SecurityError

__all__ = ["ClientCredentials", "ClientError", "ClientRegistry", "IssuedClient"]

FORMAT = "medllm-clients"
FORMAT_VERSION = 1
_CLIENT_ID = re.compile(r"^[a-z][a-z0-9._-]{2,79}$")
_SCRYPT_N, _SCRYPT_R, _SCRYPT_P = 2**14, 8, 1


class ClientError(SecurityError):
    """A client that cannot authenticate; ``reason`` is the problem's reason code."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class ClientCredentials:
    client_id: str
    principal: str
    active: bool
    created_at: str


@dataclass(frozen=True)
class IssuedClient:
    """What an admin hands over once: the secret is not stored and cannot be shown again."""

    client_id: str
    client_secret: str
    principal: str

    def as_dict(self) -> dict[str, str]:
        return {"client_id": self.client_id, "client_secret": self.client_secret, "principal": self.principal}


def _hash_secret(secret: str, salt: bytes | None = None) -> str:
    salt = salt or os.urandom(16)
    digest = hashlib.scrypt(secret.encode("utf-8"), salt=salt, n=_SCRYPT_N, r=_SCRYPT_R, p=_SCRYPT_P, dklen=32)
    return "$".join(["scrypt", str(_SCRYPT_N), str(_SCRYPT_R), str(_SCRYPT_P),
                     base64.b64encode(salt).decode(), base64.b64encode(digest).decode()])


def _secret_matches(secret: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt_b64, digest_b64 = stored.split("$")
        if scheme != "scrypt":
            return False
        digest = hashlib.scrypt(secret.encode("utf-8"), salt=base64.b64decode(salt_b64), n=int(n), r=int(r),
                                p=int(p), dklen=32)
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(digest, base64.b64decode(digest_b64))


def _seal_aad(client_id: str, record: dict[str, Any]) -> bytes:
    return (f"medllm-client:v1:{client_id}:{record['principal']}:{record['secret_hash']}:"
            f"{'active' if record['active'] else 'inactive'}").encode()


class ClientRegistry:
    """The clients file; ``keys`` (the Vault transit data key) seals each record."""

    def __init__(self, path: str | os.PathLike[str], keys: DataKeyProvider) -> None:
        self.path = Path(path)
        self.lock_path = self.path.with_name(self.path.name + ".lock")
        self.keys = keys

    def add(self, principal: str, *, client_id: str | None = None) -> IssuedClient:
        """A new client for ``principal`` (which the caller has checked exists); returns the secret once."""
        client_id = client_id or f"{principal}-{secrets.token_hex(4)}"
        if not _CLIENT_ID.fullmatch(client_id):
            raise ClientError("invalid_client", f"client ids must match {_CLIENT_ID.pattern}")
        secret = secrets.token_urlsafe(32)
        record: dict[str, Any] = {"principal": principal, "active": True, "secret_hash": _hash_secret(secret),
                                  "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
                                  .replace("+00:00", "Z")}
        record["seal"] = base64.b64encode(encrypt_bytes(b"", self.keys, aad=_seal_aad(client_id, record))).decode()
        with self._transaction() as data:
            if client_id in data["clients"]:
                raise ClientError("invalid_client", f"client {client_id!r} already exists")
            data["clients"][client_id] = record
        return IssuedClient(client_id, secret, principal)

    def revoke(self, client_id: str) -> None:
        with self._transaction() as data:
            record = data["clients"].get(client_id)
            if record is None:
                raise ClientError("invalid_client", f"no client {client_id!r}")
            record["active"] = False
            record["seal"] = base64.b64encode(
                encrypt_bytes(b"", self.keys, aad=_seal_aad(client_id, record))).decode()

    def list(self) -> list[ClientCredentials]:
        return [ClientCredentials(cid, r["principal"], bool(r["active"]), r["created_at"])
                for cid, r in sorted(self._load()["clients"].items())]

    def authenticate(self, client_id: str, client_secret: str) -> ClientCredentials:
        """The client, if the secret matches, it is active and its record is sealed; else ClientError.

        One answer (``invalid_client``) for an unknown id and a wrong secret, so ids cannot be probed.
        """
        record = self._load()["clients"].get(client_id) if isinstance(client_id, str) else None
        if record is None or not isinstance(client_secret, str) or not _secret_matches(client_secret,
                                                                                       record["secret_hash"]):
            raise ClientError("invalid_client", "unknown client or wrong secret")
        try:
            decrypt_bytes(base64.b64decode(record["seal"]), self.keys, aad=_seal_aad(client_id, record))
        except (SecurityError, ValueError, KeyError):
            raise ClientError("invalid_client", "the client's record was modified outside the registry") from None
        if not record["active"]:
            raise ClientError("invalid_client", "the client was revoked")
        return ClientCredentials(client_id, record["principal"], True, record["created_at"])

    def _load(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {"format": FORMAT, "format_version": FORMAT_VERSION, "clients": {}}
        if data.get("format") != FORMAT or data.get("format_version") != FORMAT_VERSION:
            raise ClientError("invalid_client", f"{self.path.name} is not a version-{FORMAT_VERSION} clients file")
        return data

    @contextmanager
    def _transaction(self) -> Iterator[dict[str, Any]]:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        with exclusive_lock(self.lock_path):
            data = self._load()
            yield data
            write_private_atomic(self.path, json.dumps(data, sort_keys=True, indent=1) + "\n")
