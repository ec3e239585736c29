"""Exceptions of the security layer.

Every message here is written for an operator and must never carry a token, a
plaintext key or plaintext data: callers put them into Dagster logs and event
metadata, which are not access controlled like Vault is.
"""

from __future__ import annotations


class SecurityError(Exception):
    """Base of every error raised by ``medllm_pipelines.lib.security``."""


class VaultError(SecurityError):
    """Vault/OpenBao refused or could not serve a request."""


class VaultUnavailableError(VaultError):
    """Vault cannot be reached, timed out, is sealed or answered with a 5xx.

    Callers must fail closed on this: no fallback to unencrypted writes.
    """


class VaultPermissionError(VaultError):
    """The token is invalid, expired or its policy does not grant the path."""


class VaultRequestError(VaultError):
    """Vault understood the request and rejected it (unknown key, bad input)."""


class DataKeyUnwrapError(SecurityError):
    """The key service rejected a wrapped data key as invalid for its key.

    Raised by :class:`DataKeyProvider` implementations so that envelope code can
    tell "this header was tampered with or belongs to another key" apart from
    "the key service is down", which must stay a :class:`VaultUnavailableError`.
    """


class EnvelopeError(SecurityError):
    """Base of the errors of the envelope format."""


class EnvelopeIntegrityError(EnvelopeError):
    """The envelope is malformed, truncated, reordered, tampered with, or the
    associated data does not match. No plaintext of a failed chunk is returned."""


class EnvelopeKeyMismatchError(EnvelopeIntegrityError):
    """The header names a key other than the one the provider holds."""


class OpenBaoServerError(SecurityError):
    """The local development OpenBao server could not be started or found."""
