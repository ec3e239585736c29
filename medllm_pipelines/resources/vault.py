"""Dagster resource giving assets transit keys from Vault/OpenBao.

Production: ``VaultResource(addr=EnvVar("VAULT_ADDR"), token=EnvVar("VAULT_TOKEN"),
ca_cert=...)``, so the token lives in the run's environment and Dagster only
shows the variable's name. Embedded development: ``token_file`` points at the
``openbao.json`` that ``medllm services up`` writes, read at first use so that
loading definitions never needs a running server.

The resource is itself an envelope ``DataKeyProvider``: pass it to
``encrypt_stream``/``decrypt_stream`` directly.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from dagster import ConfigurableResource, EnvVar
from pydantic import Field, PrivateAttr

from medllm_pipelines.lib.security.vault_client import (
    DEFAULT_DATA_KEY_NAME,
    DEFAULT_PSEUDONYM_KEY_NAME,
    DEFAULT_TIMEOUT_S,
    DEFAULT_TRANSIT_MOUNT,
    HmacDigests,
    TransitKeyService,
)
from medllm_pipelines.lib.security.vault_connection import open_key_service

__all__ = ["VaultResource"]


class VaultResource(ConfigurableResource):
    """Transit keys for envelope encryption, secrets and pseudonym HMACs."""

    addr: str | None = Field(
        default=None,
        description="Vault/OpenBao URL. Optional with token_file, which records it.",
    )
    token: str | None = Field(
        default=None,
        repr=False,
        description="Vault token; configure as EnvVar('VAULT_TOKEN'), never a literal.",
    )
    token_file: str | None = Field(
        default=None,
        description="Path of the embedded dev server's openbao.json (used when token is unset).",
    )
    transit_mount: str = DEFAULT_TRANSIT_MOUNT
    data_key_name: str = DEFAULT_DATA_KEY_NAME
    pseudonym_key_name: str = DEFAULT_PSEUDONYM_KEY_NAME
    tls_verify: bool = True
    ca_cert: str | None = Field(default=None, description="CA bundle path used to verify Vault's TLS certificate.")
    timeout: float = DEFAULT_TIMEOUT_S
    allow_insecure_http: bool = Field(
        default=False,
        description="Allow http:// to a non-loopback host (a trusted private network only).",
    )

    _service: TransitKeyService | None = PrivateAttr(default=None)

    def __repr__(self) -> str:
        return (
            f"VaultResource(addr={self.addr!r}, token_file={self.token_file!r}, "
            f"transit_mount={self.transit_mount!r}, data_key_name={self.data_key_name!r}, "
            f"pseudonym_key_name={self.pseudonym_key_name!r}, token={'<set>' if self.token else None})"
        )

    def __str__(self) -> str:
        return repr(self)

    def key_service(self) -> TransitKeyService:
        """The shared client, created (and token_file read) on first use."""
        if self._service is None:
            self._service = open_key_service(
                _resolve(self.addr),
                _resolve(self.token),
                self.token_file,
                transit_mount=self.transit_mount,
                data_key_name=self.data_key_name,
                pseudonym_key_name=self.pseudonym_key_name,
                tls_verify=self.tls_verify,
                ca_cert=self.ca_cert,
                timeout=self.timeout,
                allow_insecure_http=self.allow_insecure_http,
            )
        return self._service

    @property
    def key_ref(self) -> str:
        """Envelope key reference; known without contacting Vault."""
        return f"{self.transit_mount.strip('/')}/{self.data_key_name}"

    def generate_data_key(self) -> tuple[bytes, str]:
        return self.key_service().generate_data_key()

    def unwrap_data_key(self, wrapped: str) -> bytes:
        return self.key_service().unwrap_data_key(wrapped)

    def encrypt(self, plaintext: bytes, context: bytes | None = None) -> str:
        return self.key_service().encrypt(plaintext, context)

    def decrypt(self, token: str, context: bytes | None = None) -> bytes:
        return self.key_service().decrypt(token, context)

    def hmac_many(self, values: Sequence[str], *, key_version: int | None = None) -> HmacDigests:
        return self.key_service().hmac_many(values, key_version=key_version)

    def health(self) -> dict[str, Any]:
        return self.key_service().health()

    def teardown_after_execution(self, context: Any) -> None:
        if self._service is not None:
            self._service.close()
            self._service = None


def _resolve(value: str | None) -> str | None:
    """Read an EnvVar when the resource is used outside a run (CLI, notebooks).

    Inside a run Dagster has already substituted the value; outside, the field
    still holds the ``EnvVar`` (a ``str`` whose text is the variable *name*).
    """
    if isinstance(value, EnvVar):
        return value.get_value()
    return value
