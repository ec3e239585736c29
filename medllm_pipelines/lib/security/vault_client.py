"""Vault/OpenBao transit operations the pipelines need, and nothing else.

The pipelines never hold a long-lived key: data keys come wrapped from transit
(:class:`TransitKeyService` is an envelope ``DataKeyProvider``), pseudonyms are
keyed HMACs computed inside Vault, and small secrets are encrypted by Vault.
Every failure is turned into a :mod:`~medllm_pipelines.lib.security.errors`
exception whose message names the address, mount, key and Vault's reason but
never the token or the data, so callers can log it and must fail closed.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

import hvac
import hvac.exceptions as hvac_errors
import requests

from medllm_pipelines.lib.security.errors import (
    DataKeyUnwrapError,
    VaultError,
    VaultPermissionError,
    VaultRequestError,
    VaultUnavailableError,
)

__all__ = [
    "DATA_KEY_TYPE",
    "DEFAULT_AUDIT_KEY_NAME",
    "DEFAULT_DATA_KEY_NAME",
    "DEFAULT_EXPORT_KEY_NAME",
    "DEFAULT_HMAC_BATCH_SIZE",
    "DEFAULT_PSEUDONYM_KEY_NAME",
    "DEFAULT_TOKEN_KEY_NAME",
    "SIGNING_KEY_TYPE",
    "DEFAULT_TRANSIT_MOUNT",
    "HMAC_ALGORITHM",
    "PSEUDONYM_KEY_TYPE",
    "HmacDigests",
    "KeyInfo",
    "TransitKeyService",
]

DEFAULT_TRANSIT_MOUNT = "transit"
DEFAULT_DATA_KEY_NAME = "medllm-raw-zone"
DEFAULT_PSEUDONYM_KEY_NAME = "medllm-pseudonym"
# HMAC-only key that MACs the audit log's checkpoints and head (audit.TransitChainKey).
DEFAULT_AUDIT_KEY_NAME = "medllm-audit"
# Wraps the data keys of governed exports; kept apart from the raw-zone key so a
# recipient's decrypt grant never reaches identifiable data.
DEFAULT_EXPORT_KEY_NAME = "medllm-export"
# The REST service's bearer tokens (JWT, EdDSA): signed in Vault, verified with the exported public keys.
DEFAULT_TOKEN_KEY_NAME = "medllm-service-tokens"
SIGNING_KEY_TYPE = "ed25519"
DATA_KEY_TYPE = "aes256-gcm96"
# An HMAC-only key: it cannot encrypt, decrypt or be exported, so a token that
# may pseudonymise cannot be turned into one that reverses anything else.
PSEUDONYM_KEY_TYPE = "hmac"
PSEUDONYM_KEY_SIZE = 32
HMAC_ALGORITHM = "sha2-256"
# OpenBao's listener defaults to max_request_json_strings=1000 and every batch
# item costs two strings ("input" + value), so 499 items is the hard ceiling.
DEFAULT_HMAC_BATCH_SIZE = 400
DEFAULT_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class KeyInfo:
    """Public facts about a transit key (never key material)."""

    name: str
    key_type: str
    latest_version: int
    min_decryption_version: int
    min_encryption_version: int
    exportable: bool
    allow_plaintext_backup: bool
    deletion_allowed: bool


class HmacDigests(list[str]):
    """Hex SHA-256 HMAC digests, in input order, plus the key version used.

    A plain ``list[str]`` for callers that only want digests; ``key_version``
    must be recorded with pseudonymised data, because rotating the pseudonym
    key changes every pseudonym computed afterwards.
    """

    def __init__(self, digests: Sequence[str] = (), key_version: int | None = None) -> None:
        super().__init__(digests)
        self.key_version = key_version


class TransitKeyService:
    """Typed client for the transit engine that fails closed."""

    def __init__(
        self,
        addr: str,
        token: str,
        *,
        transit_mount: str = DEFAULT_TRANSIT_MOUNT,
        data_key_name: str = DEFAULT_DATA_KEY_NAME,
        pseudonym_key_name: str = DEFAULT_PSEUDONYM_KEY_NAME,
        verify: bool | str = True,
        client_cert: str | tuple[str, str] | None = None,
        namespace: str | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
        hmac_batch_size: int = DEFAULT_HMAC_BATCH_SIZE,
        allow_insecure_http: bool = False,
    ) -> None:
        """Create the client; no request is made until the first call.

        Args:
            addr: ``https://vault.example:8200``. Plain ``http://`` is accepted
                for loopback addresses only (the local dev server) unless
                ``allow_insecure_http`` is set, since the token travels in a header.
            token: Vault token; kept only inside the HTTP session.
            verify: ``True``, ``False`` (never in production) or a CA bundle path.
            client_cert: PEM path, or (cert, key) paths, for TLS client auth.
        """
        if not token:
            raise VaultPermissionError("no Vault token configured (set VAULT_TOKEN or a token file)")
        _check_addr(addr, allow_insecure_http)
        if not 1 <= hmac_batch_size <= 499:
            raise ValueError("hmac_batch_size must be between 1 and 499 (OpenBao JSON limits)")
        self._addr = addr.rstrip("/")
        self._mount = transit_mount.strip("/")
        self._data_key_name = data_key_name
        self._pseudonym_key_name = pseudonym_key_name
        self._hmac_batch_size = hmac_batch_size
        session = requests.Session()
        # Do not let HTTP(S)_PROXY or .netrc from the environment redirect a
        # request that carries the token.
        session.trust_env = False
        # hvac takes verify/cert from a passed session whenever session.verify is
        # truthy (its issue 991 fix), and a new Session's verify is True: without
        # these two lines a configured CA bundle (ca_cert) would be silently ignored.
        session.verify = verify
        session.cert = client_cert
        self._client = hvac.Client(
            url=self._addr,
            token=token,
            verify=verify,
            cert=client_cert,
            namespace=namespace,
            timeout=timeout,
            session=session,
        )
        self._token_for_redaction = token

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(addr={self._addr!r}, transit_mount={self._mount!r}, "
            f"data_key_name={self._data_key_name!r}, pseudonym_key_name={self._pseudonym_key_name!r})"
        )

    __str__ = __repr__

    def __reduce__(self) -> Any:
        raise TypeError(f"{type(self).__name__} holds a Vault token and must not be pickled")

    def close(self) -> None:
        """Close the pooled HTTP connections."""
        self._client.adapter.close()

    def __enter__(self) -> TransitKeyService:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def addr(self) -> str:
        return self._addr

    @property
    def transit_mount(self) -> str:
        return self._mount

    @property
    def data_key_name(self) -> str:
        return self._data_key_name

    @property
    def pseudonym_key_name(self) -> str:
        return self._pseudonym_key_name

    @property
    def key_ref(self) -> str:
        """Name written into envelope headers, ``"<mount>/<data key>"``."""
        return f"{self._mount}/{self._data_key_name}"

    # -- DataKeyProvider -------------------------------------------------

    def generate_data_key(self) -> tuple[bytes, str]:
        """Fresh 256-bit data key in plaintext and wrapped by the data key."""
        data = self._post(
            f"datakey/plaintext/{self._data_key_name}", {"bits": 256}, action="generate a data key"
        )
        key = _b64decode(data["plaintext"], what="data key")
        if len(key) != 32:
            raise VaultRequestError("Vault returned a data key of unexpected length")
        return key, str(data["ciphertext"])

    def unwrap_data_key(self, wrapped: str) -> bytes:
        """Plaintext of a wrapped data key; bad or retired versions raise DataKeyUnwrapError."""
        try:
            data = self._post(
                f"decrypt/{self._data_key_name}", {"ciphertext": wrapped}, action="unwrap a data key"
            )
        except VaultRequestError as exc:
            raise DataKeyUnwrapError(str(exc)) from None
        return _b64decode(data["plaintext"], what="data key")

    # -- small secrets ---------------------------------------------------

    def encrypt(self, plaintext: bytes, context: bytes | None = None) -> str:
        """Encrypt a small value (a few KB at most) under the data key.

        ``context`` is bound as AEAD associated data: decryption needs the same
        bytes. (Transit's own ``context`` parameter is silently ignored for
        non-derived keys, so it would give no binding at all.)
        """
        body: dict[str, Any] = {"plaintext": _b64encode(plaintext)}
        if context is not None:
            body["associated_data"] = _b64encode(context)
        data = self._post(f"encrypt/{self._data_key_name}", body, action="encrypt")
        return str(data["ciphertext"])

    def decrypt(self, token: str, context: bytes | None = None) -> bytes:
        """Decrypt a ``vault:vN:...`` value made by :meth:`encrypt`."""
        body: dict[str, Any] = {"ciphertext": token}
        if context is not None:
            body["associated_data"] = _b64encode(context)
        data = self._post(f"decrypt/{self._data_key_name}", body, action="decrypt")
        return _b64decode(data["plaintext"], what="plaintext")

    # -- pseudonyms ------------------------------------------------------

    def hmac_many(
        self, values: Sequence[str], *, key_version: int | None = None, key_name: str | None = None
    ) -> HmacDigests:
        """HMAC-SHA-256 of each UTF-8 value with the pseudonym key, as hex.

        All values of one call use one key version (the latest unless
        ``key_version`` is given), even if the key rotates mid-call, so one
        batch never mixes pseudonym generations. Input values never appear in
        error messages. ``key_name`` selects another HMAC key (the audit key).
        """
        digests: list[str] = []
        pinned = key_version
        path = f"hmac/{key_name or self._pseudonym_key_name}/{HMAC_ALGORITHM}"
        for start in range(0, len(values), self._hmac_batch_size):
            batch = values[start : start + self._hmac_batch_size]
            body: dict[str, Any] = {"batch_input": [{"input": _b64encode(v.encode("utf-8"))} for v in batch]}
            if pinned is not None:
                body["key_version"] = pinned
            data = self._post(path, body, action="compute HMAC pseudonyms")
            results = data.get("batch_results") or []
            if len(results) != len(batch):
                raise VaultRequestError("Vault returned a different number of HMACs than inputs")
            for offset, item in enumerate(results):
                if item.get("error"):
                    raise VaultRequestError(
                        f"Vault could not HMAC item {start + offset} of the batch: {self._redact(str(item['error']))}"
                    )
                version, digest = _split_vault_value(str(item["hmac"]))
                if pinned is None:
                    pinned = version
                elif version != pinned:
                    raise VaultRequestError("Vault answered with a different pseudonym key version than requested")
                digests.append(digest.hex())
        return HmacDigests(digests, key_version=pinned)

    # -- key lifecycle ---------------------------------------------------

    def key_info(self, name: str | None = None) -> KeyInfo:
        """Versions and flags of a key (the data key by default)."""
        name = name or self._data_key_name
        response = self._request("get", f"keys/{name}", None, action=f"read key {name!r}")
        return _key_info(response.get("data") or {})

    # -- signatures --------------------------------------------------------

    def sign(self, data: bytes, *, key_name: str = DEFAULT_TOKEN_KEY_NAME) -> tuple[bytes, int]:
        """Sign ``data`` with an asymmetric transit key; the private key never leaves Vault.

        Returns the raw signature (64 bytes for ed25519) and the key version that made it.
        """
        response = self._post(f"sign/{key_name}", {"input": _b64encode(data)}, action=f"sign with key {key_name!r}")
        version, signature = _split_vault_value(str(response.get("signature", "")), what="signature")
        return signature, version

    def public_keys(self, key_name: str = DEFAULT_TOKEN_KEY_NAME) -> dict[int, bytes]:
        """Version -> raw public key of an ed25519 transit key (what verifiers need; nothing secret)."""
        response = self._request("get", f"keys/{key_name}", None, action=f"read key {key_name!r}")
        data = response.get("data") or {}
        if str(data.get("type")) != SIGNING_KEY_TYPE:
            raise VaultRequestError(f"transit key {key_name!r} is not an {SIGNING_KEY_TYPE} signing key")
        keys: dict[int, bytes] = {}
        for version, entry in (data.get("keys") or {}).items():
            public = entry.get("public_key") if isinstance(entry, Mapping) else None
            if public:
                keys[int(version)] = _b64decode(str(public), what="public key")
        min_version = int(data.get("min_decryption_version") or 1)
        return {version: key for version, key in keys.items() if version >= min_version}

    def rotate_key(self, name: str | None = None) -> int:
        """Add a new key version; old versions still decrypt. Returns the new version."""
        name = name or self._data_key_name
        self._post(f"keys/{name}/rotate", {}, action=f"rotate key {name!r}")
        return self.key_info(name).latest_version

    def rewrap(self, wrapped: str, *, key_name: str | None = None) -> str:
        """Re-encrypt a wrapped value under the latest key version, in Vault."""
        data = self._post(
            f"rewrap/{key_name or self._data_key_name}", {"ciphertext": wrapped}, action="rewrap"
        )
        return str(data["ciphertext"])

    def set_min_decryption_version(self, version: int, *, key_name: str | None = None) -> KeyInfo:
        """Retire key versions below ``version`` once everything is rewrapped."""
        name = key_name or self._data_key_name
        self._post(
            f"keys/{name}/config", {"min_decryption_version": version}, action=f"configure key {name!r}"
        )
        return self.key_info(name)

    def default_keys(self) -> dict[str, str]:
        """The keys the project needs, name -> transit key type."""
        return {
            self._data_key_name: DATA_KEY_TYPE,
            self._pseudonym_key_name: PSEUDONYM_KEY_TYPE,
            DEFAULT_AUDIT_KEY_NAME: PSEUDONYM_KEY_TYPE,
            DEFAULT_EXPORT_KEY_NAME: DATA_KEY_TYPE,
        }

    def ensure_transit(self, keys: Mapping[str, str] | None = None) -> dict[str, KeyInfo]:
        """Mount transit if needed and create missing keys (idempotent).

        An existing key of another type is an error, not silently reused:
        transit's create endpoint would return the old key unchanged.
        """
        keys = dict(keys) if keys is not None else self.default_keys()
        mounts = self._request("get", "/v1/sys/mounts", None, action="list secrets engines", absolute=True)
        mounted = (mounts.get("data") or mounts).get(f"{self._mount}/")
        if mounted is None:
            self._request(
                "post",
                f"/v1/sys/mounts/{quote(self._mount)}",
                {"type": "transit", "description": "medllm-pipelines keys"},
                action=f"enable transit at {self._mount!r}",
                absolute=True,
            )
        elif mounted.get("type") != "transit":
            raise VaultRequestError(f"mount {self._mount!r} exists but is a {mounted.get('type')!r} engine")
        infos: dict[str, KeyInfo] = {}
        for name, key_type in keys.items():
            try:
                info = self.key_info(name)
            except VaultRequestError:
                body: dict[str, Any] = {"type": key_type, "exportable": False, "allow_plaintext_backup": False}
                if key_type == "hmac":
                    body["key_size"] = PSEUDONYM_KEY_SIZE
                self._post(f"keys/{name}", body, action=f"create key {name!r}")
                info = self.key_info(name)
            if info.key_type != key_type:
                raise VaultRequestError(f"transit key {name!r} exists with type {info.key_type!r}, expected {key_type!r}")
            infos[name] = info
        return infos

    def health(self) -> dict[str, Any]:
        """Seal and version status; raises VaultUnavailableError if unreachable.

        A sealed server is reported (``sealed: True``), not raised, so status
        commands can show it; every other call raises on a sealed server.
        """
        with self._translate_errors("read health"):
            data = self._client.sys.read_health_status(
                method="GET", standby_ok=True, sealed_code=200, uninit_code=200, active_code=200
            )
        if not isinstance(data, dict):
            raise VaultUnavailableError(f"Vault at {self._addr} answered the health check with HTTP {data.status_code}")
        return {
            "initialized": bool(data.get("initialized")),
            "sealed": bool(data.get("sealed")),
            "standby": bool(data.get("standby")),
            "version": data.get("version"),
        }

    # -- plumbing --------------------------------------------------------

    def _post(self, path: str, body: dict[str, Any], *, action: str) -> dict[str, Any]:
        response = self._request("post", path, body, action=action)
        return response.get("data") or {}

    def _request(
        self, method: str, path: str, body: dict[str, Any] | None, *, action: str, absolute: bool = False
    ) -> dict[str, Any]:
        url = path if absolute else f"/v1/{self._mount}/{path}"
        with self._translate_errors(action):
            if method == "get":
                response = self._client.adapter.get(url)
            else:
                response = self._client.adapter.post(url, json=body)
        return response if isinstance(response, dict) else {}

    @contextmanager
    def _translate_errors(self, action: str) -> Iterator[None]:
        where = f"Vault at {self._addr} (mount {self._mount!r})"
        try:
            yield
        except requests.exceptions.SSLError:
            raise VaultUnavailableError(
                f"TLS verification failed for {where} while trying to {action}; check ca_cert/tls_verify"
            ) from None
        except requests.exceptions.Timeout:
            raise VaultUnavailableError(f"{where} timed out while trying to {action}") from None
        except requests.exceptions.ConnectionError:
            raise VaultUnavailableError(
                f"cannot connect to {where} to {action}; is it running (`medllm services up`)?"
            ) from None
        except requests.exceptions.RequestException as exc:
            raise VaultUnavailableError(f"request to {where} failed ({type(exc).__name__}) while trying to {action}") from None
        except hvac_errors.VaultDown:
            raise VaultUnavailableError(f"{where} is sealed or in maintenance; cannot {action}") from None
        except (hvac_errors.Unauthorized, hvac_errors.Forbidden) as exc:
            raise VaultPermissionError(
                f"permission denied by {where} to {action}: {self._reason(exc)} "
                "(token invalid or expired, or its policy lacks this path)"
            ) from None
        except (
            hvac_errors.InternalServerError,
            hvac_errors.BadGateway,
            hvac_errors.VaultNotInitialized,
            hvac_errors.RateLimitExceeded,
        ) as exc:
            raise VaultUnavailableError(f"{where} could not {action}: {self._reason(exc)}") from None
        except (hvac_errors.InvalidRequest, hvac_errors.InvalidPath, hvac_errors.UnsupportedOperation) as exc:
            raise VaultRequestError(f"{where} refused to {action}: {self._reason(exc)}") from None
        except hvac_errors.VaultError as exc:
            raise VaultError(f"{where} failed to {action}: {self._reason(exc)}") from None

    def _reason(self, exc: hvac_errors.VaultError) -> str:
        errors = getattr(exc, "errors", None)
        text = "; ".join(str(e) for e in errors) if errors else type(exc).__name__
        return self._redact(text)

    def _redact(self, text: str) -> str:
        return text.replace(self._token_for_redaction, "<redacted>")


def _check_addr(addr: str, allow_insecure_http: bool) -> None:
    parts = urlsplit(addr)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"Vault address must be an http(s) URL, got {addr!r}")
    if parts.username or parts.password:
        raise ValueError("Vault address must not embed credentials")
    if parts.scheme == "http" and not allow_insecure_http and not _is_loopback(parts.hostname):
        raise ValueError(
            f"refusing to send a Vault token over plain HTTP to {parts.hostname}; use https "
            "or set allow_insecure_http for a private network you trust"
        )


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _key_info(data: Mapping[str, Any]) -> KeyInfo:
    return KeyInfo(
        name=str(data["name"]),
        key_type=str(data["type"]),
        latest_version=int(data["latest_version"]),
        min_decryption_version=int(data["min_decryption_version"]),
        min_encryption_version=int(data.get("min_encryption_version") or 0),
        exportable=bool(data.get("exportable")),
        allow_plaintext_backup=bool(data.get("allow_plaintext_backup")),
        deletion_allowed=bool(data.get("deletion_allowed")),
    )


def _split_vault_value(value: str, *, what: str = "HMAC") -> tuple[int, bytes]:
    """``vault:v3:BASE64`` -> (3, raw bytes)."""
    prefix, version, payload = (value.split(":", 2) + ["", ""])[:3]
    if prefix != "vault" or not version.startswith("v") or not version[1:].isdigit():
        raise VaultRequestError("Vault returned a value without the vault:vN: prefix")
    return int(version[1:]), _b64decode(payload, what=what)


def _b64encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _b64decode(data: str, *, what: str) -> bytes:
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError, TypeError):
        raise VaultRequestError(f"Vault returned a malformed {what}") from None
